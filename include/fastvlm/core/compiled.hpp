// fastvlm/core/compiled.hpp — header-only mode (the default) or compiled mode (FASTVLM_COMPILED_LIB),
// as spdlog and fmt offer them (docs/api.md, "Build time").
//
// Header-only: every file that uses a preset compiles its whole model, and every file that decodes an
// image compiles the decoders. Compiled: define FASTVLM_COMPILED_LIB in every file of the program and
// link libfastvlm_presets (CMake target fastvlm::presets), which holds, compiled once:
//   - the six presets' templates: Model<P>, Session<P>, the engine of Engine(Model<P>),
//     vision::FastViTHD<P>, text::Qwen2<P>, text::Projector<P> and load_model()'s part for P (extern
//     templates in their headers; FASTVLM_INSTANTIATE_PRESET(name) in any_model.hpp defines them);
//   - the heavy functions that are not templates (image decoding and preprocessing), marked
//     FASTVLM_INLINE and defined under FASTVLM_DEFINE_INLINES.
// A custom policy still compiles in the user's own file. FASTVLM_EXTERN_PRESETS is an older name.
#pragma once

#if defined(FASTVLM_EXTERN_PRESETS) && !defined(FASTVLM_COMPILED_LIB)
#define FASTVLM_COMPILED_LIB
#endif

#if defined(FASTVLM_COMPILED_LIB)
#define FASTVLM_INLINE
// The one file of libfastvlm_presets that defines the FASTVLM_INLINE functions defines this first.
#if defined(FASTVLM_COMPILED_LIB_SOURCE)
#define FASTVLM_DEFINE_INLINES 1
#else
#define FASTVLM_DEFINE_INLINES 0
#endif
#else
#define FASTVLM_INLINE inline
#define FASTVLM_DEFINE_INLINES 1
#endif
