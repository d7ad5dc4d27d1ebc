// fastvlm/vision/reparam.hpp — reads FastViTHD conv weights in either checkpoint form and returns the
// fused (inference) kernel: OIHW weight [cout][cin/groups][k][k] + bias [cout], computed in double.
//   fused form   (real checkpoints): `reparam_conv`, `lkb_reparam` tensors are used as stored
//   unfused form (training time)   : branches are folded with the formulas of spec §1.4–1.8
#pragma once
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/io/weights.hpp"
#include "fastvlm/kernels/conv2d.hpp"

namespace fastvlm::vision {

struct ConvWeights {
    std::vector<float> w;  // OIHW
    std::vector<float> b;  // [cout]
    // As a depthwise/grouped conv (one input channel per group, multiplier cout/cin).
    DepthwiseConv2d depthwise(Index cin, Index cout, Index k, Index stride) const {
        return DepthwiseConv2d(w.data(), b.data(), cin, cout, k, stride);
    }
};

// Names are relative to the FastViT module; `prefix` is prepended (e.g. "model.vision_tower.vision_tower.model.").
class WeightReader {
public:
    WeightReader(const io::TensorStore& store, std::string prefix, bool unfused, double bn_eps)
        : store_(store), prefix_(std::move(prefix)), unfused_(unfused), eps_(bn_eps) {}

    bool unfused() const { return unfused_; }
    bool has(const std::string& n) const { return store_.contains(prefix_ + n); }
    std::vector<float> get(const std::string& n, std::initializer_list<Index> shape) const {
        return store_.load_f32(prefix_ + n, shape);
    }
    std::vector<float> get(const std::string& n, const std::vector<Index>& shape) const {
        return store_.load_f32(prefix_ + n, std::span<const Index>(shape));
    }
    const io::TensorRef& ref(const std::string& n) const { return store_.at(prefix_ + n); }
    // A matrix layer (weight [rows, k], or [rows, k, 1, 1] when conv1x1; bias [rows] unless b is empty)
    // packed into a Lin through io::load_linear, as the decoder's: bf16 packed from the file, pages released.
    template <class Lin>
    Lin linear(const std::string& w, const std::string& b, Index rows, Index k, bool conv1x1 = false) const {
        return io::load_linear<Lin>(store_, io::LinearPart{prefix_ + w, b.empty() ? std::string() : prefix_ + b, rows, conv1x1}, k);
    }

    // Eval-mode BatchNorm as y = s·x + t: s = γ/√(var + eps), t = β − μ·s (spec §1.4, §1.7).
    std::pair<std::vector<double>, std::vector<double>> batch_norm(const std::string& bn, Index c) const {
        const auto g = get(bn + ".weight", {c}), be = get(bn + ".bias", {c});
        const auto mu = get(bn + ".running_mean", {c}), var = get(bn + ".running_var", {c});
        std::vector<double> s(static_cast<std::size_t>(c)), t(static_cast<std::size_t>(c));
        for (std::size_t i = 0; i < std::size_t(c); ++i) {
            FASTVLM_CHECK(var[i] + eps_ > 0, ref(bn + ".running_var").where(), ": running_var[", i, "] = ", var[i],
                          " gives a non-positive variance");
            s[i] = double(g[i]) / std::sqrt(double(var[i]) + eps_);
            t[i] = double(be[i]) - double(mu[i]) * s[i];
        }
        return {std::move(s), std::move(t)};
    }

    // MobileOneBlock (spec §1.4): `reparam_conv`, or Σ rbr_conv.j (conv+BN) + rbr_scale (1×1 conv+BN,
    // zero-padded to k×k) + rbr_skip (BN on the identity kernel 1 at [i, i mod cin/groups, k/2, k/2]).
    ConvWeights mobileone(const std::string& p, Index cin, Index cout, Index k, Index groups) const {
        const Index per = cin / groups;
        if (!unfused_) return fused(p + "reparam_conv", cout, per, k);
        Acc a(cout, per, k);
        bool any = false;
        for (int j = 0; has(p + "rbr_conv." + std::to_string(j) + ".conv.weight"); ++j, any = true)
            a.add_conv_bn(*this, p + "rbr_conv." + std::to_string(j), k);
        if (has(p + "rbr_scale.conv.weight")) {
            a.add_conv_bn(*this, p + "rbr_scale", 1);
            any = true;
        }
        if (has(p + "rbr_skip.weight")) {
            FASTVLM_CHECK(cin == cout, ref(p + "rbr_skip.weight").where(), ": identity branch needs in == out channels (",
                          cin, " vs ", cout, ")");
            const auto [s, t] = batch_norm(p + "rbr_skip", cin);
            for (Index i = 0; i < cin; ++i) {
                a.w[std::size_t(((i * per + i % per) * k + k / 2) * k + k / 2)] += s[std::size_t(i)];
                a.b[std::size_t(i)] += t[std::size_t(i)];
            }
            any = true;
        }
        FASTVLM_CHECK(any, store_name(), ": MobileOne block '", prefix_, p, "' has neither reparam_conv nor rbr_* branches");
        return a.done();
    }

    // ReparamLargeKernelConv (spec §1.5): `lkb_reparam`, or lkb_origin (k×k conv+BN) + small_conv (conv+BN, padded).
    ConvWeights large_kernel(const std::string& p, Index cin, Index cout, Index k, Index groups) const {
        const Index per = cin / groups;
        if (!unfused_) return fused(p + "lkb_reparam", cout, per, k);
        Acc a(cout, per, k);
        a.add_conv_bn(*this, p + "lkb_origin", k);
        if (has(p + "small_conv.conv.weight")) {
            const auto& sh = ref(p + "small_conv.conv.weight").shape;
            FASTVLM_CHECK(sh.size() == 4 && sh[2] == sh[3] && sh[2] % 2 == 1 && sh[2] <= k,
                          ref(p + "small_conv.conv.weight").where(), ": expected an odd square kernel of at most ", k);
            a.add_conv_bn(*this, p + "small_conv", sh[2]);
        }
        return a.done();
    }

    // RepMixer token mixer (spec §1.6): `reparam_conv`, or W = I + ls⊙(W_mixer − W_norm), b = ls⊙(b_mixer − b_norm).
    ConvWeights repmixer(const std::string& p, Index c, Index k) const {
        if (!unfused_) return fused(p + "reparam_conv", c, 1, k);
        const ConvWeights m = mobileone(p + "mixer.", c, c, k, c), n = mobileone(p + "norm.", c, c, k, c);
        const auto ls = get(p + "layer_scale", {c, 1, 1});
        ConvWeights r{std::vector<float>(m.w.size()), std::vector<float>(std::size_t(c))};
        for (Index o = 0; o < c; ++o) {
            for (Index t = 0; t < k * k; ++t) {
                const std::size_t i = std::size_t(o * k * k + t);
                r.w[i] = float((t == (k * k) / 2 ? 1.0 : 0.0) + double(ls[std::size_t(o)]) * (double(m.w[i]) - double(n.w[i])));
            }
            r.b[std::size_t(o)] = float(double(ls[std::size_t(o)]) * (double(m.b[std::size_t(o)]) - double(n.b[std::size_t(o)])));
        }
        return r;
    }

    // RepCPE (spec §1.8): `reparam_conv`, or W = I + W_pe, b = b_pe.
    ConvWeights repcpe(const std::string& p, Index c, Index k) const {
        if (!unfused_) return fused(p + "reparam_conv", c, 1, k);
        ConvWeights r{get(p + "pe.weight", {c, 1, k, k}), get(p + "pe.bias", {c})};
        for (Index o = 0; o < c; ++o) r.w[std::size_t(o * k * k + (k * k) / 2)] += 1.f;
        return r;
    }

    std::string store_name() const {
        std::string s;
        for (const auto& f : store_.files()) s += (s.empty() ? "" : ", ") + f;
        return s.empty() ? "tensor store" : s;
    }

private:
    ConvWeights fused(const std::string& p, Index cout, Index per, Index k) const {
        return {get(p + ".weight", {cout, per, k, k}), get(p + ".bias", {cout})};
    }

    // Double accumulator of fused branches.
    struct Acc {
        Index cout, per, k;
        std::vector<double> w, b;
        Acc(Index co, Index pe, Index kk)
            : cout(co), per(pe), k(kk), w(std::size_t(co * pe * kk * kk), 0.0), b(std::size_t(co), 0.0) {}
        // conv (kernel kc ≤ k, centred) followed by BN: W += W_c·s, b += t.
        void add_conv_bn(const WeightReader& r, const std::string& p, Index kc) {
            const auto wc = r.get(p + ".conv.weight", {cout, per, kc, kc});
            const auto [s, t] = r.batch_norm(p + ".bn", cout);
            const Index off = (k - kc) / 2;
            for (Index o = 0; o < cout; ++o) {
                for (Index i = 0; i < per; ++i)
                    for (Index y = 0; y < kc; ++y)
                        for (Index x = 0; x < kc; ++x)
                            w[std::size_t(((o * per + i) * k + y + off) * k + x + off)] +=
                                double(wc[std::size_t(((o * per + i) * kc + y) * kc + x)]) * s[std::size_t(o)];
                b[std::size_t(o)] += t[std::size_t(o)];
            }
        }
        ConvWeights done() const {
            ConvWeights r{std::vector<float>(w.size()), std::vector<float>(b.size())};
            for (std::size_t i = 0; i < w.size(); ++i) r.w[i] = float(w[i]);
            for (std::size_t i = 0; i < b.size(); ++i) r.b[i] = float(b[i]);
            return r;
        }
    };

    const io::TensorStore& store_;
    std::string prefix_;
    bool unfused_;
    double eps_;
};

}  // namespace fastvlm::vision
