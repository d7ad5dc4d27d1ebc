// fastvlm/vision/fastvithd.hpp — the FastViTHD vision tower (spec §1), templated on a precision policy.
//
//   pixels [3][S][S] → stem (3 MobileOne blocks) → network.0 … network.k (stages, PatchEmbeds, RepCPEs)
//   → conv_exp (+SE) → tokens [(S/64)², cls_ratio·C4], token t = h·W + w.
//
// Activations are fp32, channels-last ([H][W][C] rows of C floats), so every 1×1 conv is one matmul
// (pixels × channels) through Linear<P::vision_conv…> and the MHSA projections through
// Linear<P::vision_attention…>; depthwise convs, norms and SE stay fp32. Blocks are named after
// the checkpoint modules. Weights load from the fused (checkpoint) form or the unfused training form
// (vision/reparam.hpp); ConvFFN BatchNorms are folded into their 7×7 depthwise convs at load.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/io/config.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/attention.hpp"
#include "fastvlm/kernels/conv2d.hpp"
#include "fastvlm/kernels/matmul.hpp"
#include "fastvlm/kernels/norm.hpp"
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
    std::size_t weight_bytes() const;
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
    // Calls f(const Linear<W, A>&) for every matrix layer of the tower (1×1 convs, MHSA projections).
    template <class F>
    void for_each_linear(F&& f) const {
        f(stem2_);
        for (const auto& st : stages_) {
            for (const auto& b : st.mixers) f(b.convffn.fc1), f(b.convffn.fc2);
            for (const auto& b : st.attns) f(b.qkv), f(b.proj), f(b.convffn.fc1), f(b.convffn.fc2);
            if (st.has_patch_embed) f(st.down.proj1);
        }
    }
    void set_options(const Options& o) { opt_ = o; }
    const Options& options() const { return opt_; }

private:
    // convffn: depthwise k×k with the BN folded in (spec §1.7) → fc1 → GELU → fc2; x += ls ⊙ ffn(x).
    struct ConvFFN {
        DepthwiseConv2d conv;
        ConvLinear fc1, fc2;
        std::vector<float> layer_scale;
    };
    // spec §1.6: x = reparam_conv(x) (residual folded in); x += ls ⊙ ConvFFN(x).
    struct RepMixerBlock {
        DepthwiseConv2d token_mixer;
        ConvFFN convffn;
    };
    // spec §1.8: x += ls1 ⊙ MHSA(LayerNormChannel(x)); x += ls2 ⊙ ConvFFN(x).
    struct AttentionBlock {
        std::vector<float> norm_w, norm_b;
        AttnLinear qkv, proj;
        std::vector<float> layer_scale_1;
        ConvFFN convffn;
    };
    // spec §1.5: GELU(depthwise k×k stride s, multiplier Cout/Cin) → GELU(1×1).
    struct PatchEmbed {
        DepthwiseConv2d lkb;
        ConvLinear proj1;
    };
    struct Stage {
        int cpe_index = -1, blocks_index = 0, patch_embed_index = -1;  // network.{j}
        bool has_cpe = false, attention = false;
        DepthwiseConv2d cpe;  // RepCPE (spec §1.8), identity folded in
        std::vector<RepMixerBlock> mixers;
        std::vector<AttentionBlock> attns;
        bool has_patch_embed = false;
        PatchEmbed down;  // to the next stage
    };

    static ConvFFN load_convffn(const WeightReader& r, const std::string& p, Index c, Index hidden, Index k,
                                const std::string& ls_name);

    // Run-time buffers for one forward pass (sized for the largest stage).
    struct Workspace {
        AlignedBuffer<float> x, b, y, hidden, qkv, chunks;
        std::size_t chunk_stride = 0;  // floats of `chunks` per thread
    };
    Index chunk_rows(Index w) const { return std::max<Index>(1, opt_.chunk_pixels / std::max<Index>(1, w)); }
    bool fuse_ffn(Index n, Index hidden) const { return std::size_t(n * hidden) * sizeof(float) > opt_.ffn_fuse_min_bytes; }
    float* run_ffn(const ConvFFN& f, float* in, float* out, Index h, Index w, Workspace& ws, ThreadPool* pool) const;
    void run_stem(TensorView<const float, 3> px, float* out, Workspace& ws, ThreadPool* pool) const;

    template <class F>
    static void run_tasks(ThreadPool* pool, std::size_t n, F&& fn) {
        if (pool) pool->run(n, fn);
        else
            for (std::size_t i = 0; i < n; ++i) fn(i, 0u);
    }

    io::VisionConfig cfg_;
    Options opt_;
    bool unfused_ = false;
    Conv2d<fmt::F32, fmt::F32> stem0_;  // patch_embed.0: 3×3 s2, 3 → C0 (fp32: the input layer)
    DepthwiseConv2d stem1_;              // patch_embed.1: depthwise 3×3 s2
    ConvLinear stem2_;                   // patch_embed.2: 1×1
    std::vector<Stage> stages_;
    DepthwiseConv2d conv_exp_;  // grouped 3×3, multiplier cls_ratio
    std::vector<float> se_reduce_w_, se_reduce_b_, se_expand_w_, se_expand_b_;
    Index se_channels_ = 0;
};

// ---- loading -------------------------------------------------------------------------------------------
template <class P>
typename FastViTHD<P>::ConvFFN FastViTHD<P>::load_convffn(const WeightReader& r, const std::string& p, Index c,
                                                          Index hidden, Index k, const std::string& ls_name) {
    ConvFFN f;
    auto w = r.get(p + "convffn.conv.conv.weight", {c, 1, k, k});
    const auto [s, t] = r.batch_norm(p + "convffn.conv.bn", c);
    std::vector<float> b(static_cast<std::size_t>(c));
    for (Index o = 0; o < c; ++o) {
        for (Index i = 0; i < k * k; ++i) w[std::size_t(o * k * k + i)] = float(double(w[std::size_t(o * k * k + i)]) * s[std::size_t(o)]);
        b[std::size_t(o)] = float(t[std::size_t(o)]);
    }
    f.conv = DepthwiseConv2d(w.data(), b.data(), c, c, k, 1);
    f.fc1 = r.linear<ConvLinear>(p + "convffn.fc1.weight", p + "convffn.fc1.bias", hidden, c, true);
    f.fc2 = r.linear<ConvLinear>(p + "convffn.fc2.weight", p + "convffn.fc2.bias", c, hidden, true);
    f.layer_scale = r.get(p + ls_name, {c, 1, 1});
    return f;
}

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
    const Index c0 = dims[0];

    // stem (spec §1.4)
    {
        const auto s0 = r.mobileone("patch_embed.0.", 3, c0, 3, 1);
        m.stem0_ = Conv2d<fmt::F32, fmt::F32>(s0.w.data(), s0.b.data(), 3, c0, 3, 2);
        const auto s1 = r.mobileone("patch_embed.1.", c0, c0, 3, c0);
        m.stem1_ = DepthwiseConv2d(s1.w.data(), s1.b.data(), c0, c0, 3, 2);
        const auto s2 = r.mobileone("patch_embed.2.", c0, c0, 1, 1);
        m.stem2_ = ConvLinear(s2.w.data(), c0, c0, s2.b.data());
    }

    // network.{j} (spec §1.3): [RepCPE] blocks [PatchEmbed] per stage
    int j = 0;
    const int n_stages = io::VisionConfig::kStages;
    m.stages_.resize(std::size_t(n_stages));
    for (int i = 0; i < n_stages; ++i) {
        Stage& st = m.stages_[std::size_t(i)];
        const Index c = dims[std::size_t(i)], hidden = cfg.mlp_hidden(i);
        if (const int kpe = cfg.pos_emb_kernel_sizes[std::size_t(i)]; kpe > 0) {
            const auto cw = r.repcpe("network." + std::to_string(j) + ".", c, kpe);
            st.cpe = DepthwiseConv2d(cw.w.data(), cw.b.data(), c, c, kpe, 1);
            st.has_cpe = true;
            st.cpe_index = j++;
        }
        st.attention = cfg.is_attention(i);
        st.blocks_index = j;
        for (int b = 0; b < cfg.layers[std::size_t(i)]; ++b) {
            const std::string p = "network." + std::to_string(j) + "." + std::to_string(b) + ".";
            if (!st.attention) {
                RepMixerBlock blk;
                const Index k = cfg.repmixer_kernel_size;
                const auto tm = r.repmixer(p + "token_mixer.", c, k);
                blk.token_mixer = DepthwiseConv2d(tm.w.data(), tm.b.data(), c, c, k, 1);
                blk.convffn = load_convffn(r, p, c, hidden, 7, "layer_scale");
                st.mixers.push_back(std::move(blk));
            } else {
                AttentionBlock blk;
                blk.norm_w = r.get(p + "norm.weight", {c});
                blk.norm_b = r.get(p + "norm.bias", {c});
                blk.qkv = r.linear<AttnLinear>(p + "token_mixer.qkv.weight", "", 3 * c, c);
                blk.proj = r.linear<AttnLinear>(p + "token_mixer.proj.weight", p + "token_mixer.proj.bias", c, c);
                blk.layer_scale_1 = r.get(p + "layer_scale_1", {c, 1, 1});
                blk.convffn = load_convffn(r, p, c, hidden, 7, "layer_scale_2");
                st.attns.push_back(std::move(blk));
            }
        }
        ++j;
        if (i + 1 < n_stages) {
            const Index cn = dims[std::size_t(i + 1)];
            const std::string p = "network." + std::to_string(j) + ".proj.";
            const auto lk = r.large_kernel(p + "0.", c, cn, cfg.down_patch_size, c);
            st.down.lkb = DepthwiseConv2d(lk.w.data(), lk.b.data(), c, cn, cfg.down_patch_size, cfg.down_stride);
            const auto p1 = r.mobileone(p + "1.", cn, cn, 1, 1);
            st.down.proj1 = ConvLinear(p1.w.data(), cn, cn, p1.b.data());
            st.has_patch_embed = true;
            st.patch_embed_index = j++;
        }
    }

    // conv_exp (spec §1.9): grouped 3×3 (groups = C4) + SE + GELU
    {
        const Index c4 = dims[4], co = cfg.out_channels(), se = cfg.se_channels();
        const auto ce = r.mobileone("conv_exp.", c4, co, 3, c4);
        m.conv_exp_ = DepthwiseConv2d(ce.w.data(), ce.b.data(), c4, co, 3, 1);
        m.se_channels_ = se;
        m.se_reduce_w_ = r.get("conv_exp.se.reduce.weight", {se, co, 1, 1});
        m.se_reduce_b_ = r.get("conv_exp.se.reduce.bias", {se});
        m.se_expand_w_ = r.get("conv_exp.se.expand.weight", {co, se, 1, 1});
        m.se_expand_b_ = r.get("conv_exp.se.expand.bias", {co});
    }
    return m;
}

template <class P>
std::size_t FastViTHD<P>::weight_bytes() const {
    std::size_t n = stem0_.weight_bytes() + stem1_.weight_bytes() + stem2_.weight_bytes() + conv_exp_.weight_bytes();
    n += (se_reduce_w_.size() + se_reduce_b_.size() + se_expand_w_.size() + se_expand_b_.size()) * sizeof(float);
    auto ffn = [](const ConvFFN& f) {
        return f.conv.weight_bytes() + f.fc1.weight_bytes() + f.fc2.weight_bytes() + f.layer_scale.size() * sizeof(float);
    };
    for (const auto& st : stages_) {
        if (st.has_cpe) n += st.cpe.weight_bytes();
        for (const auto& b : st.mixers) n += b.token_mixer.weight_bytes() + ffn(b.convffn);
        for (const auto& b : st.attns)
            n += (b.norm_w.size() + b.norm_b.size() + b.layer_scale_1.size()) * sizeof(float) + b.qkv.weight_bytes() +
                 b.proj.weight_bytes() + ffn(b.convffn);
        if (st.has_patch_embed) n += st.down.lkb.weight_bytes() + st.down.proj1.weight_bytes();
    }
    return n;
}

// ---- forward ------------------------------------------------------------------------------------------------
// Returns the buffer holding in + ls ⊙ fc2(GELU(fc1(conv(in)))): `in` (updated in place) or `out`.
template <class P>
float* FastViTHD<P>::run_ffn(const ConvFFN& f, float* in, float* out, Index h, Index w, Workspace& ws, ThreadPool* pool) const {
    const Index n = h * w, c = f.fc2.out_features(), hidden = f.fc1.out_features();
    const Epilogue ep2{Act::none, f.layer_scale.data(), true};
    if (!fuse_ffn(n, hidden)) {
        f.conv.forward(in, h, w, ws.y.data(), pool);
        f.fc1.forward(ws.y.data(), n, c, ws.hidden.data(), hidden, pool, Epilogue{Act::gelu});
        f.fc2.forward(ws.hidden.data(), n, hidden, in, c, pool, ep2);
        return in;
    }
    // Row chunks: conv rows → yc, fc1 → hc, out rows = in rows, out += ls ⊙ fc2(hc). `in` is only read.
    const Index rows = chunk_rows(w), chunks = (h + rows - 1) / rows;
    run_tasks(pool, std::size_t(chunks), [&](std::size_t ch, unsigned thread) {
        const Index y0 = Index(ch) * rows, y1 = std::min(h, y0 + rows), m = (y1 - y0) * w;
        float* yc = ws.chunks.data() + std::size_t(thread) * ws.chunk_stride;
        float* hc = yc + rows * w * c;
        f.conv.forward_rows(in, 0, h, w, yc, y0, y1);
        f.fc1.forward(yc, m, c, hc, hidden, nullptr, Epilogue{Act::gelu});
        std::memcpy(out + y0 * w * c, in + y0 * w * c, std::size_t(m * c) * sizeof(float));
        f.fc2.forward(hc, m, hidden, out + y0 * w * c, c, nullptr, ep2);
    });
    return out;
}

// spec §1.4, fused in row chunks: 3×3 s2 (3 → C0) → dw 3×3 s2 → 1×1, each + GELU; the 2× larger
// first map never leaves the cache. out: [H/4][W/4][C0].
template <class P>
void FastViTHD<P>::run_stem(TensorView<const float, 3> px, float* out, Workspace& ws, ThreadPool* pool) const {
    const Index ih = px.dim(1), iw = px.dim(2), c0 = cfg_.embed_dims[0];
    const Index h1 = stem0_.out_size(ih), w1 = stem0_.out_size(iw), h = stem1_.out_size(h1), w = stem1_.out_size(w1);
    float* in = ws.hidden.data();  // pixels as HWC [ih][iw][3]
    parallel_for(pool, std::size_t(ih), 16, [&](std::size_t y0, std::size_t y1) {
        for (Index y = Index(y0); y < Index(y1); ++y)
            for (Index xx = 0; xx < iw; ++xx)
                for (Index c = 0; c < 3; ++c) in[(y * iw + xx) * 3 + c] = px(c, y, xx);
    });
    const Index rows = chunk_rows(w), chunks = (h + rows - 1) / rows;
    run_tasks(pool, std::size_t(chunks), [&](std::size_t ch, unsigned thread) {
        const Index y0 = Index(ch) * rows, y1 = std::min(h, y0 + rows);
        const Index r0 = std::max<Index>(0, 2 * y0 - 1), r1 = std::min(h1, 2 * y1);  // stem0 rows read by stem1
        float* b0 = ws.chunks.data() + std::size_t(thread) * ws.chunk_stride;
        float* b1 = b0 + (2 * rows + 1) * w1 * c0;
        stem0_.forward_rows(in, ih, iw, b0, r0, r1, Act::gelu);
        stem1_.forward_rows(b0, r0, h1, w1, b1, y0, y1, Act::gelu);
        stem2_.forward(b1, (y1 - y0) * w, c0, out + y0 * w * c0, c0, nullptr, Epilogue{Act::gelu});
    });
}

template <class P>
Tensor<float, 2> FastViTHD<P>::forward(TensorView<const float, 3> px, ThreadPool* pool, const StageCallback& on_stage) const {
    FASTVLM_CHECK(px.dim(0) == 3 && px.dim(1) > 0 && px.dim(2) > 0, "FastViTHD::forward: expected pixels [3, H, W], got ",
                  shape_str(px.shape()));
    const auto& dims = cfg_.embed_dims;
    const Index c0 = dims[0];

    // Geometry and buffer sizes.
    const Index h1 = conv_out_size(px.dim(1), 3, 2), w1 = conv_out_size(px.dim(2), 3, 2);
    Index h = conv_out_size(h1, 3, 2), w = conv_out_size(w1, 3, 2);
    std::size_t max_act = std::size_t(h * w * c0), max_qkv = 0;
    std::size_t max_hidden = std::size_t(px.dim(1) * px.dim(2) * 3);  // the stem's HWC copy of the pixels
    std::size_t chunk_stride = std::size_t((2 * chunk_rows(w) + 1) * w1 * c0 + chunk_rows(w) * w * c0);  // stem
    {
        Index hh = h, ww = w;
        for (int i = 0; i < io::VisionConfig::kStages; ++i) {
            const Index c = dims[std::size_t(i)], hid = cfg_.mlp_hidden(i);
            max_act = std::max(max_act, std::size_t(hh * ww * c));
            if (fuse_ffn(hh * ww, hid)) chunk_stride = std::max(chunk_stride, std::size_t(chunk_rows(ww) * ww * (c + hid)));
            else max_hidden = std::max(max_hidden, std::size_t(hh * ww * hid));
            if (cfg_.is_attention(i)) max_qkv = std::max(max_qkv, std::size_t(hh * ww * 3 * c));
            if (i + 1 < io::VisionConfig::kStages) {
                hh = conv_out_size(hh, cfg_.down_patch_size, cfg_.down_stride);
                ww = conv_out_size(ww, cfg_.down_patch_size, cfg_.down_stride);
                max_act = std::max(max_act, std::size_t(hh * ww * dims[std::size_t(i + 1)]));
            }
        }
        max_act = std::max(max_act, std::size_t(hh * ww * cfg_.out_channels()));
    }
    chunk_stride = (chunk_stride + 15) / 16 * 16;  // 64-byte aligned per thread
    Workspace ws{AlignedBuffer<float>(max_act), AlignedBuffer<float>(max_act), AlignedBuffer<float>(max_act),
                 AlignedBuffer<float>(max_hidden), AlignedBuffer<float>(max_qkv),
                 AlignedBuffer<float>(chunk_stride * pool_size(pool)), chunk_stride};
    float* x = ws.x.data();
    float* b = ws.b.data();
    auto emit = [&](const std::string& name, const float* data, Index hh, Index ww, Index c) {
        if (on_stage) on_stage(name, TensorView<const float, 3>(data, {hh, ww, c}));
    };

    run_stem(px, x, ws, pool);
    emit("stem", x, h, w, c0);

    for (int i = 0; i < io::VisionConfig::kStages; ++i) {
        const Stage& st = stages_[std::size_t(i)];
        const Index c = dims[std::size_t(i)], n = h * w;
        if (st.has_cpe) {
            st.cpe.forward(x, h, w, b, pool);
            std::swap(x, b);
            emit("network" + std::to_string(st.cpe_index), x, h, w, c);
        }
        const std::string sname = "stage" + std::to_string(i);
        if (!st.attention) {
            for (std::size_t k = 0; k < st.mixers.size(); ++k) {
                const RepMixerBlock& blk = st.mixers[k];
                blk.token_mixer.forward(x, h, w, b, pool);
                if (run_ffn(blk.convffn, b, x, h, w, ws, pool) == b) std::swap(x, b);
                emit(sname + ".block" + std::to_string(k), x, h, w, c);
            }
        } else {
            for (std::size_t k = 0; k < st.attns.size(); ++k) {
                const AttentionBlock& blk = st.attns[k];
                layer_norm(x, ws.y.data(), n, c, blk.norm_w.data(), blk.norm_b.data(), float(cfg_.layer_norm_eps), pool);
                blk.qkv.forward(ws.y.data(), n, c, ws.qkv.data(), 3 * c, pool);
                mhsa(ws.qkv.data(), n, c, cfg_.head_dim, ws.y.data(), pool);
                blk.proj.forward(ws.y.data(), n, c, x, c, pool, Epilogue{Act::none, blk.layer_scale_1.data(), true});
                if (run_ffn(blk.convffn, x, b, h, w, ws, pool) == b) std::swap(x, b);
                emit(sname + ".block" + std::to_string(k), x, h, w, c);
            }
        }
        emit("network" + std::to_string(st.blocks_index), x, h, w, c);
        emit(sname, x, h, w, c);
        if (st.has_patch_embed) {
            const Index cn = dims[std::size_t(i + 1)];
            const Index hn = st.down.lkb.out_size(h), wn = st.down.lkb.out_size(w);
            st.down.lkb.forward(x, h, w, ws.y.data(), pool, Act::gelu);
            st.down.proj1.forward(ws.y.data(), hn * wn, cn, x, cn, pool, Epilogue{Act::gelu});
            h = hn, w = wn;
            emit("network" + std::to_string(st.patch_embed_index), x, h, w, cn);
        }
    }

    // conv_exp (spec §1.9): y = conv(x) + b; s = σ(expand(relu(reduce(mean_hw(y))))); out = GELU(y ⊙ s).
    const Index co = cfg_.out_channels(), n = h * w, se = se_channels_;
    conv_exp_.forward(x, h, w, ws.y.data(), pool);
    const float* y = ws.y.data();
    std::vector<double> mean(static_cast<std::size_t>(co), 0.0);
    for (Index t = 0; t < n; ++t)
        for (Index c = 0; c < co; ++c) mean[std::size_t(c)] += y[t * co + c];
    for (auto& v : mean) v /= double(n);
    std::vector<double> r(static_cast<std::size_t>(se));
    for (Index k = 0; k < se; ++k) {
        double s = se_reduce_b_[std::size_t(k)];
        for (Index c = 0; c < co; ++c) s += double(se_reduce_w_[std::size_t(k * co + c)]) * mean[std::size_t(c)];
        r[std::size_t(k)] = std::max(s, 0.0);
    }
    std::vector<float> scale(static_cast<std::size_t>(co));
    for (Index c = 0; c < co; ++c) {
        double s = se_expand_b_[std::size_t(c)];
        for (Index k = 0; k < se; ++k) s += double(se_expand_w_[std::size_t(c * se + k)]) * r[std::size_t(k)];
        scale[std::size_t(c)] = float(1.0 / (1.0 + std::exp(-s)));
    }
    Tensor<float, 2> out({n, co});
    parallel_for(pool, std::size_t(n), 8, [&](std::size_t t0, std::size_t t1) {
        for (Index t = Index(t0); t < Index(t1); ++t) {
            float* o = out.data() + t * co;
            for (Index c = 0; c < co; ++c) o[c] = y[t * co + c] * scale[std::size_t(c)];
            apply_act(Act::gelu, o, std::size_t(co));
        }
    });
    emit("conv_exp", out.data(), h, w, co);
    return out;
}

#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) extern template class FastViTHD<policy::name>;
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif

}  // namespace fastvlm::vision
