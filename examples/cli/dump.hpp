// examples/cli/dump.hpp — `fastvlm-cli dump`: the intermediate tensors of one forward pass, named as
// in the golden data (../shared/golden/README.md): image_features [1, N, C],
// image_features_projected [1, N, H], prefill_logits [1, L, V]; with --generate N greedy steps:
// generated_ids I64 [1, N] and step_logits [1, N, V] (row s = the logits whose argmax is id s).
#pragma once
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "args.hpp"
#include "embed.hpp"
#include "fastvlm/fastvlm.hpp"
#include "run.hpp"

namespace fastvlm::cli {

inline int run_dump(const Args& a) {
    const auto ids = text::parse_id_list(a.require("input-ids"));
    if (ids.empty()) fail("--input-ids is empty");
    const std::string out_path = a.require("out");
    const long steps = a.get_int("generate", 0, 0, 1 << 20);
    const bool has_image = std::count(ids.begin(), ids.end(), text::kImageTokenIndex) > 0;
    if (has_image && a.has("pixels") == a.has("image")) fail("the ids hold an image slot (-200): give --pixels FILE or --image FILE");
    if (!has_image && (a.has("pixels") || a.has("image"))) fail("an image was given but --input-ids has no -200 slot");
    auto model = load_model_cli(a);

    Tensor<float, 2> feats, tokens;
    if (has_image) {
        Tensor<float, 3> px;
        if (a.has("pixels")) {
            px = load_pixel_values(a.require("pixels"));
        } else {
            px = model->preprocess(io::load_image(a.require("image"), limits_of(a).image));
        }
        feats = model->encode_image(px);
        tokens = model->project(feats);
    }
    // f32 KV cache unless asked: dump exists to compare logits with references.
    auto session = model->new_session({.kv_type = text::parse_kv_type(a.get_or("kv-cache", "f32"))});
    std::optional<TensorView<const float, 2>> tv;
    if (has_image) tv = tokens.view();
    const Tensor<float, 2> logits = session->prefill(ids, tv, true);
    const Index L = logits.dim(0), V = logits.dim(1), valid = model->valid_vocab();

    std::vector<std::int64_t> gen;
    std::vector<float> step_logits;
    if (steps > 0) {
        step_logits.reserve(std::size_t(steps * V));
        std::vector<float> cur(logits.data() + (L - 1) * V, logits.data() + L * V);
        for (long s = 0; s < steps; ++s) {
            step_logits.insert(step_logits.end(), cur.begin(), cur.end());
            const std::int32_t id = text::argmax(cur.data(), std::size_t(valid));  // ids >= len(tokenizer) masked (§5.5)
            gen.push_back(id);
            if (s + 1 < steps) {
                const auto next = session->step(id);
                cur.assign(next.begin(), next.end());
            }
        }
    }
    std::vector<io::WriteTensor> out;
    if (has_image) {
        out.push_back({"image_features", io::DType::F32, {1, feats.dim(0), feats.dim(1)}, feats.data()});
        out.push_back({"image_features_projected", io::DType::F32, {1, tokens.dim(0), tokens.dim(1)}, tokens.data()});
    }
    out.push_back({"prefill_logits", io::DType::F32, {1, L, V}, logits.data()});
    if (steps > 0) {
        out.push_back({"generated_ids", io::DType::I64, {1, Index(gen.size())}, gen.data()});
        out.push_back({"step_logits", io::DType::F32, {1, Index(steps), V}, step_logits.data()});
    }
    io::write_safetensors(out_path, std::span<const io::WriteTensor>(out),
                          {{"generator", "fastvlm-cli dump"}, {"precision", model->precision()}});
    std::fprintf(stderr, "dump: %lld positions, vocab %lld, %ld greedy steps (%s) -> %s\n", (long long)L, (long long)V, steps,
                 model->precision(), out_path.c_str());
    return 0;
}

inline Command dump_command() {
    return {"dump",
            "Run ids (with -200 = the image slot) through the model and write image_features, image_features_projected, "
            "prefill_logits [1, L, V] and, with --generate N, generated_ids [1, N] and step_logits [1, N, V] (greedy).",
            "--model DIR --input-ids \"1,2,-200,3\" (--pixels FILE | --image FILE) --out FILE [--generate N] [options]",
            {{"model", "DIR", "model folder"},
             {"input-ids", "LIST", "comma-separated ids; -200 marks the image"},
             {"pixels", "FILE", "safetensors with pixel_values [1, 3, S, S] (preprocessed)"},
             {"image", "FILE", "an image file instead of --pixels (preprocessed as predict.py does)"},
             {"out", "FILE", "output .safetensors"},
             {"generate", "N", "greedy steps (default 0)"},
             {"threads", "N", "threads (default: all cores)"},
             limit_option(),
             {"kv-cache", "TYPE", "KV cache storage: f32 (default here: exact) or bf16"},
             image_size_option(),
             {"precision", "NAME", "fp32 (default), bf16, fp16, int8, int8_int4, int4"},
             {"context", "N", "KV-cache positions (default min(8192, max_position_embeddings))"}},
            run_dump};
}

}  // namespace fastvlm::cli
