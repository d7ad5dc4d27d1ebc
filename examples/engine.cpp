// engine — many requests at once on one loaded model: every image given is submitted at once and the
// engine batches them (continuous batching, one KV pool); answers print in the order given.
//   engine MODEL_DIR IMAGE... [--prompt "question"]
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fastvlm/fastvlm.hpp"

int main(int argc, char** argv) {
    std::vector<std::string> images;
    std::string prompt = "Describe the image.";
    for (int i = 2; i < argc; ++i) {
        if (std::strcmp(argv[i], "--prompt") == 0 && i + 1 < argc) prompt = argv[++i];
        else images.emplace_back(argv[i]);
    }
    if (argc < 3 || images.empty()) {
        std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE... [--prompt \"question\"]\n", argv[0]);
        return 2;
    }
    try {
        const auto model = fastvlm::Model<fastvlm::policy::int8>::load(argv[1]);  // or policy::fp32, bf16, ...
        fastvlm::EngineOptions opt;
        opt.max_running = 8;  // sequences decoded together in each step
        fastvlm::Engine engine(model, opt);

        std::vector<fastvlm::RequestHandle> handles;
        for (const auto& image : images) {
            fastvlm::Request rq;
            rq.images.push_back(fastvlm::ImageInput::file(image));
            rq.prompt = prompt;  // "<image>\n" is put in front of it
            rq.max_new_tokens = 64;
            handles.push_back(engine.submit(std::move(rq)));  // thread-safe; returns at once
        }
        int failed = 0;
        for (std::size_t i = 0; i < handles.size(); ++i) {
            const fastvlm::Result r = handles[i].wait();
            if (!r.ok()) {
                std::fprintf(stderr, "%s: error: %s\n", images[i].c_str(), r.error.c_str());
                ++failed;
                continue;
            }
            std::printf("%s: %s\n  [%zu tokens, queue %.0f ms, TTFT %.0f ms, total %.0f ms]\n", images[i].c_str(), r.text.c_str(),
                        r.ids.size(), r.timings.queue_ms, r.timings.ttft_ms, r.timings.total_ms);
        }
        return failed ? 1 : 0;
    } catch (const fastvlm::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
