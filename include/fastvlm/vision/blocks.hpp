// fastvlm/vision/blocks.hpp — the FastViTHD building blocks (spec §1.4–§1.9). Each block owns
//   load(r, …)              its weights, from the fused or the unfused checkpoint form (vision/reparam.hpp);
//   need(h, w, ws)          the workspace its forward uses at an h×w input;
//   forward(x, spare, …)    its pass: reads x, returns the buffer holding the result (x or spare);
//   for_each_tensor(f)      a visitor over its weights (byte counts, matrix layers: kernels/visit.hpp).
//
// Activations are fp32, channels-last ([H][W][C] rows of C floats), so every 1×1 conv is one matmul
// (pixels × channels) through a Linear (Conv: the policy's vision_conv pair; Attn: vision_attention);
// depthwise convs, norms and squeeze-excite stay fp32.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/attention.hpp"
#include "fastvlm/kernels/conv2d.hpp"
#include "fastvlm/kernels/matmul.hpp"
#include "fastvlm/kernels/norm.hpp"
#include "fastvlm/vision/reparam.hpp"

namespace fastvlm::vision {

// Buffers and row-chunking rules of one forward pass. The tower merges its blocks' need() at the
// input size, then allocates once.
struct Workspace {
    // Floats, as maxima over the blocks of a pass.
    struct Need {
        std::size_t act = 0;     // one activation map: x, spare and y are each this large
        std::size_t hidden = 0;  // the hidden map of a ConvFFN that runs whole
        std::size_t qkv = 0;     // q, k, v of an attention block
        std::size_t chunk = 0;   // row-chunk scratch per thread (fused ConvFFN, stem)
        void merge(const Need& o) {
            act = std::max(act, o.act), hidden = std::max(hidden, o.hidden);
            qkv = std::max(qkv, o.qkv), chunk = std::max(chunk, o.chunk);
        }
    };

    // A ConvFFN whose hidden map exceeds ffn_fuse_min_bytes runs in chunks of ≈chunk_pixels pixels.
    Workspace(std::size_t ffn_fuse_min_bytes_, Index chunk_pixels_, ThreadPool* pool_)
        : ffn_fuse_min_bytes(ffn_fuse_min_bytes_), chunk_pixels(chunk_pixels_), pool(pool_) {}
    std::size_t ffn_fuse_min_bytes;
    Index chunk_pixels;
    ThreadPool* pool;

    AlignedBuffer<float> x, spare, y, hidden, qkv, chunks;
    std::size_t chunk_stride = 0;  // floats of `chunks` per thread, 64-byte aligned

    Index chunk_rows(Index w) const { return std::max<Index>(1, chunk_pixels / std::max<Index>(1, w)); }
    bool fuse_ffn(Index n, Index hidden_channels) const {
        return std::size_t(n * hidden_channels) * sizeof(float) > ffn_fuse_min_bytes;
    }
    void allocate(const Need& n) {
        x = AlignedBuffer<float>(n.act), spare = AlignedBuffer<float>(n.act), y = AlignedBuffer<float>(n.act);
        hidden = AlignedBuffer<float>(n.hidden), qkv = AlignedBuffer<float>(n.qkv);
        chunk_stride = (n.chunk + 15) / 16 * 16;
        chunks = AlignedBuffer<float>(chunk_stride * pool_size(pool));
    }
    float* chunk(unsigned thread) { return chunks.data() + std::size_t(thread) * chunk_stride; }
    // fn(task, thread) for task < n: on the pool, or serially as thread 0.
    template <class F>
    void run_tasks(std::size_t n, F&& fn) const {
        if (pool) pool->run(n, fn);
        else
            for (std::size_t i = 0; i < n; ++i) fn(i, 0u);
    }
};

// spec §1.4: patch_embed.0 (3×3 s2, 3 → C0, fp32: the input layer) → patch_embed.1 (depthwise 3×3 s2) →
// patch_embed.2 (1×1), each MobileOne + GELU. Runs fused in row chunks, so the 2× larger first map never
// leaves the cache, and reads the pixels planar ([3][H][W], as preprocessing gives them).
template <class Conv>
struct Stem {
    Conv2d<fmt::F32, fmt::F32> conv0;
    DepthwiseConv2d conv1;
    Conv conv2;

    static Stem load(const WeightReader& r, Index c0) {
        const auto s0 = r.mobileone("patch_embed.0.", 3, c0, 3, 1), s1 = r.mobileone("patch_embed.1.", c0, c0, 3, c0),
                   s2 = r.mobileone("patch_embed.2.", c0, c0, 1, 1);
        return {Conv2d<fmt::F32, fmt::F32>(s0.w.data(), s0.b.data(), 3, c0, 3, 2), s1.depthwise(c0, c0, 3, 2),
                Conv(s2.w.data(), c0, c0, s2.b.data())};
    }
    Index out_size(Index n) const { return conv1.out_size(conv0.out_size(n)); }
    Index out_channels() const { return conv2.out_features(); }
    Workspace::Need need(Index ih, Index iw, const Workspace& ws) const {
        const Index w1 = conv0.out_size(iw), h = out_size(ih), w = out_size(iw), c0 = out_channels(), rows = ws.chunk_rows(w);
        return {.act = std::size_t(h * w * c0), .chunk = std::size_t((2 * rows + 1) * w1 * c0 + rows * w * c0)};
    }
    // pixels [3][ih][iw] → out [ih/4][iw/4][C0].
    void forward(TensorView<const float, 3> px, float* out, Workspace& ws) const {
        const Index ih = px.dim(1), iw = px.dim(2), c0 = out_channels();
        const Index h1 = conv0.out_size(ih), w1 = conv0.out_size(iw), h = conv1.out_size(h1), w = conv1.out_size(w1);
        const Index rows = ws.chunk_rows(w), chunks = (h + rows - 1) / rows;
        ws.run_tasks(std::size_t(chunks), [&](std::size_t ch, unsigned thread) {
            const Index y0 = Index(ch) * rows, y1 = std::min(h, y0 + rows);
            const Index r0 = std::max<Index>(0, 2 * y0 - 1), r1 = std::min(h1, 2 * y1);  // conv0 rows read by conv1
            float* b0 = ws.chunk(thread);
            float* b1 = b0 + (2 * rows + 1) * w1 * c0;
            conv0.forward_rows(px.data(), ih, iw, b0, r0, r1, Act::gelu, Conv2dInput::planar);
            conv1.forward_rows(b0, r0, h1, w1, b1, y0, y1, Act::gelu);
            conv2.forward(b1, (y1 - y0) * w, c0, out + y0 * w * c0, c0, nullptr, Epilogue{Act::gelu});
        });
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(conv0), f(conv1), f(conv2);
    }
};

// spec §1.8 RepCPE: depthwise k×k with the identity folded in.
struct RepCPE {
    DepthwiseConv2d conv;

    static RepCPE load(const WeightReader& r, const std::string& p, Index c, Index k) {
        return {r.repcpe(p, c, k).depthwise(c, c, k, 1)};
    }
    Workspace::Need need(Index h, Index w, const Workspace&) const { return {.act = std::size_t(h * w * conv.out_channels())}; }
    float* forward(float* x, float* spare, Index h, Index w, Workspace& ws) const {
        conv.forward(x, h, w, spare, ws.pool);
        return spare;
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(conv);
    }
};

// spec §1.7: x += ls ⊙ fc2(GELU(fc1(BN(dw k×k(x))))), the BatchNorm folded into the depthwise conv.
template <class Conv>
struct ConvFFN {
    DepthwiseConv2d conv;
    Conv fc1, fc2;
    std::vector<float> layer_scale;

    static ConvFFN load(const WeightReader& r, const std::string& p, Index c, Index hidden, Index k, const std::string& ls_name) {
        auto w = r.get(p + "convffn.conv.conv.weight", {c, 1, k, k});
        const auto [s, t] = r.batch_norm(p + "convffn.conv.bn", c);
        std::vector<float> b(static_cast<std::size_t>(c));
        for (Index o = 0; o < c; ++o) {
            for (Index i = 0; i < k * k; ++i) w[std::size_t(o * k * k + i)] = float(double(w[std::size_t(o * k * k + i)]) * s[std::size_t(o)]);
            b[std::size_t(o)] = float(t[std::size_t(o)]);
        }
        return {DepthwiseConv2d(w.data(), b.data(), c, c, k, 1),
                r.linear<Conv>(p + "convffn.fc1.weight", p + "convffn.fc1.bias", hidden, c, true),
                r.linear<Conv>(p + "convffn.fc2.weight", p + "convffn.fc2.bias", c, hidden, true), r.get(p + ls_name, {c, 1, 1})};
    }
    Index channels() const { return fc2.out_features(); }
    Index hidden_channels() const { return fc1.out_features(); }
    Workspace::Need need(Index h, Index w, const Workspace& ws) const {
        const Index n = h * w, c = channels(), hid = hidden_channels();
        Workspace::Need r{.act = std::size_t(n * c)};
        if (ws.fuse_ffn(n, hid)) r.chunk = std::size_t(ws.chunk_rows(w) * w * (c + hid));
        else r.hidden = std::size_t(n * hid);
        return r;
    }
    // Whole: in place in x. In row chunks (a large hidden map): conv rows → fc1 → spare rows = x rows,
    // spare += ls ⊙ fc2; x is only read.
    float* forward(float* x, float* spare, Index h, Index w, Workspace& ws) const {
        const Index n = h * w, c = channels(), hid = hidden_channels();
        const Epilogue ep2{Act::none, layer_scale.data(), true};
        if (!ws.fuse_ffn(n, hid)) {
            conv.forward(x, h, w, ws.y.data(), ws.pool);
            mlp(ws.y.data(), n, ws.hidden.data(), x, ws.pool, ep2);
            return x;
        }
        const Index rows = ws.chunk_rows(w), chunks = (h + rows - 1) / rows;
        ws.run_tasks(std::size_t(chunks), [&](std::size_t ch, unsigned thread) {
            const Index y0 = Index(ch) * rows, y1 = std::min(h, y0 + rows), m = (y1 - y0) * w;
            float* yc = ws.chunk(thread);
            float* hc = yc + rows * w * c;
            conv.forward_rows(x, 0, h, w, yc, y0, y1);
            std::memcpy(spare + y0 * w * c, x + y0 * w * c, std::size_t(m * c) * sizeof(float));
            mlp(yc, m, hc, spare + y0 * w * c, nullptr, ep2);
        });
        return spare;
    }
    // out (m × C, epilogue ep2) = fc2(GELU(fc1(in))), the hidden map in hid_buf (m × hidden). With Q8 compute
    // fc1 hands its output to fc2 already quantized (Linear::forward_quantized_for, the same codes bit for
    // bit), and hid_buf is not used.
    void mlp(const float* in, Index m, float* hid_buf, float* out, ThreadPool* pool, const Epilogue& ep2) const {
        const Index c = channels(), hid = hidden_channels();
        if constexpr (std::is_same_v<typename Conv::compute_format, fmt::Q8>) {
            Q8Handoff hq;
            if (fc1.forward_quantized_for(fc2, in, m, c, hq, pool, Epilogue{Act::gelu})) return fc2.forward(hq, out, c, pool, ep2);
        }
        fc1.forward(in, m, c, hid_buf, hid, pool, Epilogue{Act::gelu});
        fc2.forward(hid_buf, m, hid, out, c, pool, ep2);
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(conv), f(fc1), f(fc2), f(layer_scale);
    }
};

// spec §1.6: x = reparam_conv(x) (the residual folded in); x += ls ⊙ ConvFFN(x).
template <class Conv>
struct RepMixerBlock {
    DepthwiseConv2d token_mixer;
    ConvFFN<Conv> convffn;

    static RepMixerBlock load(const WeightReader& r, const std::string& p, Index c, Index hidden, Index k) {
        return {r.repmixer(p + "token_mixer.", c, k).depthwise(c, c, k, 1), ConvFFN<Conv>::load(r, p, c, hidden, 7, "layer_scale")};
    }
    Workspace::Need need(Index h, Index w, const Workspace& ws) const { return convffn.need(h, w, ws); }
    float* forward(float* x, float* spare, Index h, Index w, Workspace& ws) const {
        token_mixer.forward(x, h, w, spare, ws.pool);
        return convffn.forward(spare, x, h, w, ws);
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(token_mixer), convffn.for_each_tensor(f);
    }
};

// spec §1.8: x += ls1 ⊙ proj(MHSA(qkv(LayerNormChannel(x)))); x += ls2 ⊙ ConvFFN(x).
template <class Attn, class Conv>
struct AttentionBlock {
    std::vector<float> norm_w, norm_b;
    Attn qkv, proj;
    std::vector<float> layer_scale_1;
    ConvFFN<Conv> convffn;
    float norm_eps = 1e-5f;
    Index head_dim = 32;

    static AttentionBlock load(const WeightReader& r, const std::string& p, Index c, Index hidden, float eps, Index head_dim) {
        return {r.get(p + "norm.weight", {c}),
                r.get(p + "norm.bias", {c}),
                r.linear<Attn>(p + "token_mixer.qkv.weight", "", 3 * c, c),
                r.linear<Attn>(p + "token_mixer.proj.weight", p + "token_mixer.proj.bias", c, c),
                r.get(p + "layer_scale_1", {c, 1, 1}),
                ConvFFN<Conv>::load(r, p, c, hidden, 7, "layer_scale_2"),
                eps,
                head_dim};
    }
    Workspace::Need need(Index h, Index w, const Workspace& ws) const {
        Workspace::Need r = convffn.need(h, w, ws);
        r.qkv = std::size_t(h * w * qkv.out_features());
        return r;
    }
    float* forward(float* x, float* spare, Index h, Index w, Workspace& ws) const {
        const Index n = h * w, c = proj.out_features();
        layer_norm(x, ws.y.data(), n, c, norm_w.data(), norm_b.data(), norm_eps, ws.pool);
        qkv.forward(ws.y.data(), n, c, ws.qkv.data(), 3 * c, ws.pool);
        mhsa(ws.qkv.data(), n, c, head_dim, ws.y.data(), ws.pool);
        proj.forward(ws.y.data(), n, c, x, c, ws.pool, Epilogue{Act::none, layer_scale_1.data(), true});
        return convffn.forward(x, spare, h, w, ws);
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(norm_w), f(norm_b), f(qkv), f(proj), f(layer_scale_1), convffn.for_each_tensor(f);
    }
};

// spec §1.5 PatchEmbed (to the next stage): GELU(depthwise k×k stride s, multiplier Cout/Cin) → GELU(1×1).
// The result is in x, at out_size(h) × out_size(w).
template <class Conv>
struct PatchEmbed {
    DepthwiseConv2d lkb;
    Conv proj1;

    static PatchEmbed load(const WeightReader& r, const std::string& p, Index c, Index cn, Index k, Index stride) {
        const auto p1 = r.mobileone(p + "1.", cn, cn, 1, 1);
        return {r.large_kernel(p + "0.", c, cn, k, c).depthwise(c, cn, k, stride), Conv(p1.w.data(), cn, cn, p1.b.data())};
    }
    Index out_size(Index n) const { return lkb.out_size(n); }
    Index out_channels() const { return proj1.out_features(); }
    Workspace::Need need(Index h, Index w, const Workspace&) const {
        return {.act = std::size_t(out_size(h) * out_size(w) * out_channels())};
    }
    float* forward(float* x, float*, Index h, Index w, Workspace& ws) const {
        const Index cn = out_channels();
        lkb.forward(x, h, w, ws.y.data(), ws.pool, Act::gelu);
        proj1.forward(ws.y.data(), out_size(h) * out_size(w), cn, x, cn, ws.pool, Epilogue{Act::gelu});
        return x;
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(lkb), f(proj1);
    }
};

// spec §1.9 squeeze-excite: s = σ(expand(ReLU(reduce(mean over pixels of y)))), in double.
struct SqueezeExcite {
    std::vector<float> reduce_w, reduce_b, expand_w, expand_b;  // [se][c], [se], [c][se], [c]

    static SqueezeExcite load(const WeightReader& r, const std::string& p, Index c, Index se) {
        return {r.get(p + "reduce.weight", {se, c, 1, 1}), r.get(p + "reduce.bias", {se}), r.get(p + "expand.weight", {c, se, 1, 1}),
                r.get(p + "expand.bias", {c})};
    }
    // y [n][c] → the per-channel scale [c].
    std::vector<float> scale(const float* y, Index n, Index c) const {
        const Index se = Index(reduce_b.size());
        std::vector<double> mean(static_cast<std::size_t>(c), 0.0), r(static_cast<std::size_t>(se));
        for (Index t = 0; t < n; ++t)
            for (Index ch = 0; ch < c; ++ch) mean[std::size_t(ch)] += y[t * c + ch];
        for (auto& v : mean) v /= double(n);
        for (Index k = 0; k < se; ++k) r[std::size_t(k)] = std::max(affine(reduce_w, reduce_b, k, mean), 0.0);
        std::vector<float> s(static_cast<std::size_t>(c));
        for (Index ch = 0; ch < c; ++ch) s[std::size_t(ch)] = float(1.0 / (1.0 + std::exp(-affine(expand_w, expand_b, ch, r))));
        return s;
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(reduce_w), f(reduce_b), f(expand_w), f(expand_b);
    }

private:
    // b[o] + Σ_i w[o][i]·v[i], in double.
    static double affine(const std::vector<float>& w, const std::vector<float>& b, Index o, const std::vector<double>& v) {
        double s = b[std::size_t(o)];
        const std::size_t k = v.size();
        for (std::size_t i = 0; i < k; ++i) s += double(w[std::size_t(o) * k + i]) * v[i];
        return s;
    }
};

// spec §1.9 conv_exp: y = grouped 3×3 conv (groups = C4, multiplier cls_ratio) of x; out = GELU(y ⊙ SE(y)).
struct ConvExp {
    DepthwiseConv2d conv;
    SqueezeExcite se;

    static ConvExp load(const WeightReader& r, Index c4, Index co, Index se_channels) {
        return {r.mobileone("conv_exp.", c4, co, 3, c4).depthwise(c4, co, 3, 1), SqueezeExcite::load(r, "conv_exp.se.", co, se_channels)};
    }
    Index out_channels() const { return conv.out_channels(); }
    Workspace::Need need(Index h, Index w, const Workspace&) const { return {.act = std::size_t(h * w * out_channels())}; }
    // x [h][w][C4] → tokens [h·w][C_out].
    Tensor<float, 2> forward(const float* x, Index h, Index w, Workspace& ws) const {
        const Index co = out_channels(), n = h * w;
        conv.forward(x, h, w, ws.y.data(), ws.pool);
        const float* y = ws.y.data();
        const std::vector<float> scale = se.scale(y, n, co);
        Tensor<float, 2> out({n, co});
        parallel_for(ws.pool, std::size_t(n), 8, [&](std::size_t t0, std::size_t t1) {
            for (Index t = Index(t0); t < Index(t1); ++t) {
                float* o = out.data() + t * co;
                for (Index c = 0; c < co; ++c) o[c] = y[t * co + c] * scale[std::size_t(c)];
                apply_act(Act::gelu, o, std::size_t(co));
            }
        });
        return out;
    }
    template <class F>
    void for_each_tensor(F&& f) const {
        f(conv), se.for_each_tensor(f);
    }
};

}  // namespace fastvlm::vision
