// fastvlm/fastvlm.hpp — the umbrella header (docs/api.md):
//   image → FastViTHD → mlp2x_gelu projector → spliced into the ChatML prompt → Qwen2 → text.
//
//   auto model = fastvlm::Model<>::load("FastVLM-0.5B");          // fp32 policy; one per process
//   fastvlm::Session session(model);                              // one per thread (KV cache)
//   auto r = session.describe("cat.jpg", "Describe the image.", {.on_token = print});
//
//   fastvlm::Engine engine(model, {.max_running = 8});            // many requests at once
//   auto h = engine.submit({.images = {fastvlm::ImageInput::file("cat.jpg")}, .prompt = "What is it?"});
//   auto r2 = h.wait();
//
// model.hpp (Model, options, results), session.hpp (Session), engine.hpp (Engine: continuous
// batching, paged KV cache, image-feature cache, metrics), stream.hpp (FrameStream: a live frame
// stream, latest frame wins), any_model.hpp (preset chosen at run time), batch_jsonl.hpp (the batch
// line format), io/frames.hpp (splitting concatenated JPEG/PNG), io/limits.hpp (every input limit by name).
#pragma once
#include "fastvlm/adaptive.hpp"
#include "fastvlm/any_model.hpp"
#include "fastvlm/engine.hpp"
#include "fastvlm/io/limits.hpp"
#include "fastvlm/model.hpp"
#include "fastvlm/session.hpp"
#include "fastvlm/stream.hpp"
