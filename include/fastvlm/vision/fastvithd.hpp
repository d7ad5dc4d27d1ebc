// fastvlm/vision/fastvithd.hpp — the FastViTHD vision tower (spec §1), templated on a precision policy.
//
//   pixels [3][S][S] → stem (3 MobileOne blocks) → network.0 … network.k (stages, PatchEmbeds, RepCPEs)
//   → conv_exp (+SE) → tokens [(S/64)², cls_ratio·C4], token t = h·W + w.
//
// The blocks (vision/blocks.hpp) own their loading, forward pass, workspace needs and weights; this
// file strings them together: the tower's load and forward read top to bottom in network order.
// Activations are fp32 channels-last ([H][W][C]); 1×1 convs run through Linear<P::vision_conv…>, the
// MHSA projections through Linear<P::vision_attention…>. Weights load from the fused (checkpoint) form
// or the unfused training form (vision/reparam.hpp).
#pragma once
#include <algorithm>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/io/config.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/kernels/matmul.hpp"
#include "fastvlm/kernels/visit.hpp"
#include "fastvlm/vision/blocks.hpp"
#include "fastvlm/vision/reparam.hpp"

namespace fastvlm::vision {

// Prefix of the vision tower inside a FastVLM checkpoint (spec §7.2).
inline constexpr const char* kCheckpointPrefix = "model.vision_tower.vision_tower.model.";

// Called with an intermediate activation in HWC layout [H][W][C]; names follow the golden data:
// "stem", "stage{i}.block{k}", "network{j}", "stage{i}", "conv_exp".
using StageCallback = std::function<void(const std::string& name, TensorView<const float, 3> hwc)>;

// [H][W][C] → [C][H][W].
inline Tensor<float, 3> hwc_to_chw(TensorView<const float, 3> hwc) {
    const Index h = hwc.dim(0), w = hwc.dim(1), c = hwc.dim(2);
    Tensor<float, 3> out({c, h, w});
    for (Index y = 0; y < h; ++y)
        for (Index x = 0; x < w; ++x)
            for (Index ch = 0; ch < c; ++ch) out(ch, y, x) = hwc(y, x, ch);
    return out;
}

// "" or kCheckpointPrefix, whichever holds the stem's weights (fused or unfused form).
inline std::string detect_prefix(const io::TensorStore& store) {
    for (std::string p : {std::string(kCheckpointPrefix), std::string()})
        if (store.contains(p + "patch_embed.0.reparam_conv.weight") || store.contains(p + "patch_embed.0.rbr_conv.0.conv.weight"))
            return p;
    std::string files;
    for (const auto& f : store.files()) files += (files.empty() ? "" : ", ") + f;
    fail(files, ": no FastViTHD weights found (looked for '", kCheckpointPrefix,
         "patch_embed.0.reparam_conv.weight' and 'patch_embed.0.reparam_conv.weight', also in the unfused rbr_conv form)");
}

// A vision config from a JSON file: a model folder's config.json (FastVLM schema), or a file that only
// holds a `vision_config` object (e.g. the golden fastvithd_small_config.json).
inline io::VisionConfig load_vision_config(const std::filesystem::path& path, const io::LoadLimits& limits = {}) {
    std::error_code ec;
    const std::filesystem::path file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
    const std::string src = file.string();
    const std::string text = io::read_file(file, limits.max_json_file_bytes);
    const nlohmann::json j = io::parse_json(text, src, {.max_depth = limits.max_json_depth});
    if (!j.is_object()) fail(src, ": expected a JSON object");
    io::VisionConfig v;
    if (j.contains("mm_vision_tower")) {
        v = io::ModelConfig::from_json(j, src).vision;
    } else {
        const auto it = j.find("vision_config");
        if (it == j.end() || !it->is_object()) fail(src, ": neither a FastVLM config.json (mm_vision_tower) nor a 'vision_config' object");
        v = io::VisionConfig::from_json(*it, src);
    }
    io::check_image_size(v, src, limits);
    return v;
}

template <class Policy>
class FastViTHD {
    static_assert(PrecisionPolicy<Policy>, "FastViTHD<Policy>: Policy must satisfy fastvlm::PrecisionPolicy");

public:
    using ConvLinear = Linear<typename Policy::vision_conv::weight, typename Policy::vision_conv::compute>;
    using AttnLinear = Linear<typename Policy::vision_attention::weight, typename Policy::vision_attention::compute>;

    // The fused checkpoint form or the unfused training form (detected from the stem's key names).
    // prefix: e.g. kCheckpointPrefix for a FastVLM model folder, "" for a bare FastViT state dict.
    static FastViTHD load(const io::TensorStore& store, const io::VisionConfig& cfg, const std::string& prefix,
                          ThreadPool* pool = nullptr);

    // pixels [3][H][W] (CHW, RGB in [0, 1]) → tokens [Ho·Wo][C_out], Ho = Wo = S/64 at the configured size.
    Tensor<float, 2> forward(TensorView<const float, 3> pixels_chw, ThreadPool* pool, const StageCallback& on_stage = {}) const;

    const io::VisionConfig& config() const { return cfg_; }
    std::size_t weight_bytes() const { return weight_bytes_of(*this); }
    bool loaded_unfused() const { return unfused_; }

    static constexpr std::size_t kDefaultFuseBytes =
        (std::is_same_v<typename Policy::vision_conv::compute, fmt::F32> ? std::size_t(32) : std::size_t(8)) << 20;
    // Execution tuning (results are identical up to float summation order).
    struct Options {
        // A ConvFFN whose hidden activation (pixels × hidden × 4 B) exceeds this runs in row chunks
        // (dw conv → fc1 → fc2 per ≈chunk_pixels pixels, per thread) so that it stays in cache.
        // Default 32 MiB for f32 compute, 8 MiB for BF16/Q8 compute, whose faster products make the
        // DRAM round trip of the hidden activation relatively dearer (measured at 1024², 2 threads:
        // int8 0.680 → 0.634 s, bf16 0.840 → 0.799 s; f32 is 3 % slower at 8 MiB).
        std::size_t ffn_fuse_min_bytes = kDefaultFuseBytes;
        Index chunk_pixels = 512;
    };
    void set_options(const Options& o) { opt_ = o; }
    const Options& options() const { return opt_; }

    // Calls f with every weight of the tower (kernels/visit.hpp), in forward order.
    template <class F>
    void for_each_tensor(F&& f) const {
        stem_.for_each_tensor(f);
        for (const Stage& st : stages_) {
            if (st.cpe) st.cpe->for_each_tensor(f);
            std::visit([&](const auto& blocks) {
                for (const auto& b : blocks) b.for_each_tensor(f);
            }, st.blocks);
            if (st.down) st.down->for_each_tensor(f);
        }
        conv_exp_.for_each_tensor(f);
    }
    // Calls f(const Linear<W, A>&) for every matrix layer of the tower (1×1 convs, MHSA projections).
    template <class F>
    void for_each_linear(F&& f) const {
        for_each_linear_of(*this, f);
    }

private:
    // network.{j} (spec §1.3): [RepCPE] blocks [PatchEmbed to the next stage]; j numbers the three parts.
    struct Stage {
        Index channels = 0;
        int cpe_index = -1, blocks_index = 0, patch_embed_index = -1;
        std::optional<RepCPE> cpe;
        std::variant<std::vector<RepMixerBlock<ConvLinear>>, std::vector<AttentionBlock<AttnLinear, ConvLinear>>> blocks;
        std::optional<PatchEmbed<ConvLinear>> down;
    };

    // The workspace of one pass at an ih×iw input: the blocks' needs along the tower's geometry.
    Workspace make_workspace(Index ih, Index iw, ThreadPool* pool) const;

    io::VisionConfig cfg_;
    Options opt_;
    bool unfused_ = false;
    Stem<ConvLinear> stem_;
    std::vector<Stage> stages_;
    ConvExp conv_exp_;
};

template <class P>
FastViTHD<P> FastViTHD<P>::load(const io::TensorStore& store, const io::VisionConfig& cfg, const std::string& prefix,
                                ThreadPool* pool) {
    (void)pool;  // loading is serial (≈1 s at full size, dominated by reading and packing the weights)
    cfg.validate();
    FastViTHD m;
    m.cfg_ = cfg;
    const bool fused = store.contains(prefix + "patch_embed.0.reparam_conv.weight");
    const bool unfused = store.contains(prefix + "patch_embed.0.rbr_conv.0.conv.weight");
    if (!fused && !unfused) {
        WeightReader probe(store, prefix, false, cfg.batch_norm_eps);
        fail(probe.store_name(), ": no FastViTHD stem under prefix '", prefix, "' (neither '", prefix,
             "patch_embed.0.reparam_conv.weight' nor the unfused '", prefix, "patch_embed.0.rbr_conv.0.conv.weight')");
    }
    m.unfused_ = !fused;
    const WeightReader r(store, prefix, m.unfused_, cfg.batch_norm_eps);
    const auto& dims = cfg.embed_dims;
    m.stem_ = Stem<ConvLinear>::load(r, dims[0]);
    int j = 0;
    for (int i = 0; i < io::VisionConfig::kStages; ++i) {
        Stage st;
        const Index c = st.channels = dims[std::size_t(i)], hidden = cfg.mlp_hidden(i);
        if (const int kpe = cfg.pos_emb_kernel_sizes[std::size_t(i)]; kpe > 0) {
            st.cpe = RepCPE::load(r, "network." + std::to_string(j) + ".", c, kpe);
            st.cpe_index = j++;
        }
        st.blocks_index = j;
        auto block_prefix = [&](int b) { return "network." + std::to_string(j) + "." + std::to_string(b) + "."; };
        if (cfg.is_attention(i)) {
            std::vector<AttentionBlock<AttnLinear, ConvLinear>> blocks;
            for (int b = 0; b < cfg.layers[std::size_t(i)]; ++b)
                blocks.push_back(AttentionBlock<AttnLinear, ConvLinear>::load(r, block_prefix(b), c, hidden,
                                                                              float(cfg.layer_norm_eps), cfg.head_dim));
            st.blocks = std::move(blocks);
        } else {
            std::vector<RepMixerBlock<ConvLinear>> blocks;
            for (int b = 0; b < cfg.layers[std::size_t(i)]; ++b)
                blocks.push_back(RepMixerBlock<ConvLinear>::load(r, block_prefix(b), c, hidden, cfg.repmixer_kernel_size));
            st.blocks = std::move(blocks);
        }
        ++j;
        if (i + 1 < io::VisionConfig::kStages) {
            st.down = PatchEmbed<ConvLinear>::load(r, "network." + std::to_string(j) + ".proj.", c, dims[std::size_t(i + 1)],
                                                   cfg.down_patch_size, cfg.down_stride);
            st.patch_embed_index = j++;
        }
        m.stages_.push_back(std::move(st));
    }
    m.conv_exp_ = ConvExp::load(r, dims[4], cfg.out_channels(), cfg.se_channels());
    return m;
}

template <class P>
Workspace FastViTHD<P>::make_workspace(Index ih, Index iw, ThreadPool* pool) const {
    Workspace ws(opt_.ffn_fuse_min_bytes, opt_.chunk_pixels, pool);
    Workspace::Need need = stem_.need(ih, iw, ws);
    Index h = stem_.out_size(ih), w = stem_.out_size(iw);
    for (const Stage& st : stages_) {
        if (st.cpe) need.merge(st.cpe->need(h, w, ws));
        std::visit([&](const auto& blocks) {
            for (const auto& b : blocks) need.merge(b.need(h, w, ws));
        }, st.blocks);
        if (st.down) {
            need.merge(st.down->need(h, w, ws));
            h = st.down->out_size(h), w = st.down->out_size(w);
        }
    }
    need.merge(conv_exp_.need(h, w, ws));
    ws.allocate(need);
    return ws;
}

template <class P>
Tensor<float, 2> FastViTHD<P>::forward(TensorView<const float, 3> px, ThreadPool* pool, const StageCallback& on_stage) const {
    FASTVLM_CHECK(px.dim(0) == 3 && px.dim(1) > 0 && px.dim(2) > 0, "FastViTHD::forward: expected pixels [3, H, W], got ",
                  shape_str(px.shape()));
    Workspace ws = make_workspace(px.dim(1), px.dim(2), pool);
    float* x = ws.x.data();
    float* spare = ws.spare.data();
    Index h = stem_.out_size(px.dim(1)), w = stem_.out_size(px.dim(2)), c = stem_.out_channels();
    auto emit = [&](const std::string& name) {
        if (on_stage) on_stage(name, TensorView<const float, 3>(x, {h, w, c}));
    };
    auto run = [&](const auto& block) {
        if (block.forward(x, spare, h, w, ws) == spare) std::swap(x, spare);
    };

    stem_.forward(px, x, ws);
    emit("stem");
    for (std::size_t i = 0; i < stages_.size(); ++i) {
        const Stage& st = stages_[i];
        const std::string stage = "stage" + std::to_string(i);
        c = st.channels;
        if (st.cpe) {
            run(*st.cpe);
            emit("network" + std::to_string(st.cpe_index));
        }
        std::visit([&](const auto& blocks) {
            for (std::size_t k = 0; k < blocks.size(); ++k) {
                run(blocks[k]);
                emit(stage + ".block" + std::to_string(k));
            }
        }, st.blocks);
        emit("network" + std::to_string(st.blocks_index));
        emit(stage);
        if (st.down) {
            run(*st.down);
            h = st.down->out_size(h), w = st.down->out_size(w), c = st.down->out_channels();
            emit("network" + std::to_string(st.patch_embed_index));
        }
    }
    Tensor<float, 2> out = conv_exp_.forward(x, h, w, ws);
    if (on_stage) on_stage("conv_exp", TensorView<const float, 3>(out.data(), {h, w, conv_exp_.out_channels()}));
    return out;
}

#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) extern template class FastViTHD<policy::name>;
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif

}  // namespace fastvlm::vision
