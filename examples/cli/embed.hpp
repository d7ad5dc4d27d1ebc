// examples/cli/embed.hpp — `fastvlm-cli embed`: image → FastViTHD image features (spec §1.9).
#pragma once
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "args.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/io/config.hpp"
#include "fastvlm/io/image.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/vision/fastvithd.hpp"

namespace fastvlm::cli {

// `pixel_values` [1, 3, H, W] of a safetensors file (--pixels of embed and dump) as [3, H, W]. H and W are
// bounded like config.json's image_size (LoadLimits::max_image_size) before anything is converted.
inline Tensor<float, 3> load_pixel_values(const std::string& file) {
    const auto st = io::TensorStore::open(file);
    const auto& ref = st.at("pixel_values");
    FASTVLM_CHECK(ref.shape.size() == 4 && ref.shape[0] == 1 && ref.shape[1] == 3, ref.where(),
                  ": expected shape [1, 3, H, W], file has ", ref.shape_str());
    const Index h = ref.shape[2], w = ref.shape[3], max = io::LoadLimits{}.max_image_size;
    FASTVLM_CHECK(h >= 1 && w >= 1 && h <= max && w <= max, ref.where(), ": ", h, "x", w, " pixels is outside 1..", max,
                  " per side (LoadLimits::max_image_size)");
    return std::move(st.load_tensor<4>("pixel_values", {1, 3, h, w})).template reshaped<3>({3, h, w});
}

inline int run_embed(const Args& a) {
    namespace fs = std::filesystem;
    if (a.has("model") == a.has("weights")) fail("give exactly one of --model DIR or --weights FILE");
    if (a.has("weights") && !a.has("config")) fail("--weights needs --config FILE (a config.json or a file with 'vision_config')");
    if (a.has("image") == a.has("pixels")) fail("give exactly one of --image FILE or --pixels FILE.safetensors");
    const std::string out_path = a.require("out");
    const unsigned threads = unsigned(a.get_int("threads", long(std::max(1u, std::thread::hardware_concurrency())), 1, 1024));
    const std::string precision = a.get_or("precision", "fp32");
    const bool dump = a.flag("dump-stages");

    Stopwatch sw;
    ThreadPool pool(threads);
    const io::Limits lim = limits_of(a);
    const io::TensorStore store = io::TensorStore::open(a.has("model") ? a.require("model") : a.require("weights"), lim.load);
    io::VisionConfig cfg = a.has("model") ? io::ModelConfig::load(a.require("model"), lim.load).vision
                                          : vision::load_vision_config(a.require("config"), lim.load);
    if (const int s = image_size_of(a)) io::set_image_size(cfg, s, lim.load, "--image-size");
    const std::string prefix = a.has("prefix") ? a.require("prefix") : vision::detect_prefix(store);
    const double t_open = sw.ms();

    return with_preset(precision, [&]<class P>() -> int {
        Stopwatch t;
        const auto model = vision::FastViTHD<P>::load(store, cfg, prefix, &pool);
        const double t_load = t_open + t.ms();

        t.reset();
        const Index s = cfg.image_size;
        Tensor<float, 3> pixels;
        if (a.has("image")) {
            pixels = io::preprocess_image(io::load_image(a.require("image"), lim.image), int(s), lim.image);
        } else {
            pixels = load_pixel_values(a.require("pixels"));
        }
        const double t_pre = t.ms();

        std::map<std::string, Tensor<float, 3>> stages;
        vision::StageCallback cb;
        if (dump) cb = [&](const std::string& name, TensorView<const float, 3> hwc) { stages[name] = vision::hwc_to_chw(hwc); };
        t.reset();
        const Tensor<float, 2> feats = model.forward(pixels.view(), &pool, cb);
        const double t_vis = t.ms();

        std::vector<io::WriteTensor> out;
        out.push_back({"image_features", io::DType::F32, {1, feats.dim(0), feats.dim(1)}, feats.data()});
        for (const auto& [name, tns] : stages)
            out.push_back({name, io::DType::F32, {1, tns.dim(0), tns.dim(1), tns.dim(2)}, tns.data()});
        io::write_safetensors(out_path, std::span<const io::WriteTensor>(out),
                              {{"generator", "fastvlm-cli embed"}, {"precision", P::name}});
        std::printf("embed: %lld tokens x %lld channels (%s, %u threads, %s weights) -> %s\n", (long long)feats.dim(0),
                    (long long)feats.dim(1), P::name, threads, model.loaded_unfused() ? "unfused" : "fused", out_path.c_str());
        std::printf("time: load %.1f ms, preprocess %.1f ms, vision %.1f ms\n", t_load, t_pre, t_vis);
        return 0;
    });
}

inline Command embed_command() {
    return {"embed",
            "Run the FastViTHD vision tower on one image and write image_features [1, N, C] (F32) to a safetensors file.",
            "(--model DIR | --weights FILE --config FILE) (--image FILE | --pixels FILE) --out FILE [options]",
            {{"model", "DIR", "model folder: config.json + model.safetensors (prefix model.vision_tower.vision_tower.model.)"},
             {"weights", "FILE", "bare FastViT weights (.safetensors, fused or unfused form, no prefix)"},
             {"config", "FILE", "with --weights: config.json or a JSON file with a 'vision_config' object"},
             {"prefix", "STR", "tensor name prefix (default: detected)"},
             {"image", "FILE", "image (JPEG/PNG/BMP/TGA/GIF/PNM), preprocessed as predict.py does"},
             {"pixels", "FILE", "safetensors with pixel_values [1, 3, S, S] (already preprocessed)"},
             {"out", "FILE", "output .safetensors"},
             {"dump-stages", "", "also write stem, network0.., stage{i}, stage{i}.block{k}, conv_exp as (1, C, H, W)"},
             {"threads", "N", "threads (default: all cores)"},
             image_size_option(),
             limit_option(),
             {"precision", "NAME", "fp32 (default), bf16, fp16, int8, int8_int4, int4"}},
            run_embed};
}

}  // namespace fastvlm::cli
