// fastvlm/kernels/matmul/driver.hpp — the blocked GEMM loop nest (BLIS-style) shared by every
// weight format, and the GEMV (m = 1) split. The format-specific parts come from a kernel type:
//
//   struct Kern {
//     static constexpr int MR, NV;        // micro-tile: MR rows of X × NV panels (NV·16 columns)
//     Index n, npanels; const float* bias;
//     Index units() const;               // length of K in kernel units (1, 2 or 32 floats each)
//     Index kc_units() const;            // K block (L1 blocking of the weight micro-panel)
//     Index mc_max() const;              // M block (L2 blocking of the packed X block)
//     APack pack_a(x, ldx, m0, mc, u0, uc) const;     // X[m0:m0+mc, units u0:u0+uc] packed
//     BPack pack_b(g, nv, u0, uc) const;              // weight micro-panel of panel group g
//     void ukr(int nv, const APack&, Index ir, const BPack&, Index uc, float* tile) const;
//   };
//
// Loop nest per task (a task = one M block × one range of panel groups):
//   for each K block:  pack X block (L2)  →  for each panel group: weights (L1)  →  for each MR rows: ukr
// The tile goes through store_tile (bias / act / scale / accumulate) after every K block.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "fastvlm/core/diagnostics.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/matmul/common.hpp"

FASTVLM_SIMD_WARNINGS_OFF  // core/diagnostics.hpp

namespace fastvlm::detail::mm {

// sink: null, or a callable sink(tile, ldt, mr, nr, row0, c0, ops) that takes each finished tile (rows row0 ..
// row0 + mr − 1, columns c0 .. c0 + nr − 1) instead of store_tile writing it to Y (one K block only).
template <class Kern, class Sink = std::nullptr_t>
void gemm_blocked(const Kern& kern, const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool,
                  const Epilogue& ep, const Sink& sink = nullptr) {
    constexpr int MR = Kern::MR, NV = Kern::NV;
    constexpr Index NR = Index(NV) * kPanel;
    constexpr bool to_sink = !std::is_same_v<Sink, std::nullptr_t>;
    const Index n = kern.n, nu = kern.units();
    if (m <= 0 || n <= 0) return;
    const Index nkb = std::max<Index>(1, ceil_div(nu, kern.kc_units()));
    const Index kcu = nkb == 1 ? nu : ceil_div(nu, nkb);
    if constexpr (to_sink) FASTVLM_CHECK(nkb == 1 && !ep.accumulate, "gemm_blocked: a tile sink needs one K block and no accumulate");

    if (ep.accumulate && ep.act != Act::none && nkb > 1) {
        // Y += act(XWᵀ + b)·s cannot be formed from partial sums in Y: go through a buffer.
        std::vector<float> tmp(std::size_t(m) * std::size_t(n));
        gemm_blocked(kern, x, m, ldx, tmp.data(), n, pool, Epilogue{});
        TileOps o{nullptr, ep.scale, ep.act, false, true};
        parallel_for(pool, std::size_t(m), 16, [&](std::size_t r0, std::size_t r1) {
            store_tile(tmp.data() + r0 * std::size_t(n), n, Index(r1 - r0), n, y + Index(r0) * ldy, ldy, o);
        });
        return;
    }

    // Tasks: I blocks of rows × J ranges of panel groups. Splitting N makes every thread pack the
    // same X block, so it is done only when each thread gets ≥ 256 columns or M is too short.
    const Index ngroups = ceil_div(kern.npanels, NV);
    const Index T = pool_size(pool);
    const Index I = ceil_div(m, kern.mc_max());
    const Index mc = round_up(ceil_div(m, I), MR);
    const Index J = (T > 1 && (ngroups * NR >= 256 * T || I < 2 * T)) ? std::min<Index>(T, ngroups) : 1;
    const Index gchunk = ceil_div(ngroups, J);
    const Index tasks = I * J;

    auto task = [&](std::size_t t, unsigned) {
        const Index i = Index(t) / J, j = Index(t) % J;
        const Index m0 = i * mc, mcur = std::min(mc, m - m0);
        const Index g0 = j * gchunk, g1 = std::min(ngroups, g0 + gchunk);
        if (mcur <= 0 || g0 >= g1) return;
        alignas(64) float tile[MR * NR];
        for (Index kb = 0; kb < nkb; ++kb) {
            const Index u0 = kb * kcu, uc = std::min(kcu, nu - u0);
            const bool first = kb == 0, last = kb == nkb - 1;
            TileOps ops;
            if (ep.accumulate) {  // each K block adds its (scaled) share to Y
                ops = TileOps{first ? kern.bias : nullptr, ep.scale, ep.act, false, true};
            } else {  // Y holds the partial sum between K blocks
                ops = TileOps{first ? kern.bias : nullptr, last ? ep.scale : nullptr, last ? ep.act : Act::none, !first, false};
            }
            const auto a = kern.pack_a(x, ldx, m0, mcur, u0, uc);
            for (Index g = g0; g < g1; ++g) {
                const int nv = int(std::min<Index>(NV, kern.npanels - g * NV));
                const Index c0 = g * NR, nr = std::min(NR, n - c0);
                const auto b = kern.pack_b(g, nv, u0, uc);
                TileOps o = ops;
                if (o.bias) o.bias += c0;
                if (o.scale) o.scale += c0;
                for (Index ir = 0; ir * MR < mcur; ++ir) {
                    const Index mr = std::min<Index>(MR, mcur - ir * MR);
                    if constexpr (to_sink) {
                        kern.ukr(nv, a, ir, b, uc, tile);
                        sink(static_cast<const float*>(tile), NR, mr, nr, m0 + ir * MR, c0, o);
                        continue;
                    }
                    float* c = y + (m0 + ir * MR) * ldy + c0;
                    for (Index r = 0; r < mr; ++r)  // the tile of C is read after the micro-kernel: fetch it now
                        for (Index j = 0; j < nr; j += 16) __builtin_prefetch(c + r * ldy + j, 1, 3);
                    kern.ukr(nv, a, ir, b, uc, tile);
                    store_tile(tile, NR, mr, nr, c, ldy, o);
                }
            }
        }
    };
    if (pool && tasks > 1) pool->run(std::size_t(tasks), task);
    else for (Index t = 0; t < tasks; ++t) task(std::size_t(t), 0);
}

// GEMV rows: panels split over the threads in contiguous ranges, each thread streaming its share
// of the weights once for all m rows. kern.gemv_panels(ax(r), p0, p1, out) writes
// out[0 .. 16·(p1−p0)) for row r's activation as prepared by the kernel (float, bf16 pairs or Q8
// blocks); a kernel with kGemvRows instead offers gemv_panels_rows(xs, rows, p0, p1, out, ldo),
// rows ≤ kGemvRows rows at once from one load of each weight vector. A chunk of panels small enough
// for L1 is run for every row before the next chunk, and each row's arithmetic is exactly that of an
// m = 1 call (no dependence on the batch).
inline constexpr Index kGemvChunk = 64;  // most panels per epilogue pass

template <class Kern>
constexpr int gemv_rows_at_once() {
    if constexpr (requires { Kern::kGemvRows; }) return Kern::kGemvRows;
    else return 1;
}

// Shares with stealing: [0, n) cut into one contiguous share per thread. A thread streams its own share
// from the front, in chunks that shrink as the share runs out (a quarter of what is left, at least
// `min_chunk`); when it is done it takes chunks of `min_chunk` from the back of the shares still running.
// Two equal streams do not end together — one thread starts later (the hand-over), the memory system
// serves them unevenly, a hypervisor steals a core — and the one done first used to wait: 8–10 % of each
// thread's decode time on a 2-vCPU Ice Lake Xeon (0.5B int4, perf). fn(begin, end) is called once for
// every index, in ranges; which thread runs an index does not change any result.
class StealingShares {
public:
    StealingShares(Index n, unsigned shares) : n_(std::max(1u, shares)) {
        if (n_ > kInline) heap_.reset(new Cursor[n_]);  // decode runs ~120 products a token: no allocation up to 8
        cur_ = heap_ ? heap_.get() : inline_;
        for (unsigned s = 0; s < n_; ++s)
            cur_[s].fb.store(pack(n * Index(s) / Index(n_), n * Index(s + 1) / Index(n_)), std::memory_order_relaxed);
    }
    unsigned shares() const { return n_; }
    template <class F>
    void run_share(unsigned s, Index min_chunk, F&& fn) {
        min_chunk = std::max<Index>(min_chunk, 1);
        for (Index a, b; take(cur_[s], min_chunk, true, a, b);) fn(a, b);
        for (unsigned o = 1; o < n_; ++o)
            for (Index a, b; take(cur_[(s + o) % n_], min_chunk, false, a, b);) fn(a, b);
    }

private:
    struct alignas(64) Cursor {
        std::atomic<std::uint64_t> fb{0};  // front (low 32 bits) | back (high 32 bits)
    };
    static std::uint64_t pack(Index f, Index b) { return std::uint64_t(std::uint32_t(f)) | std::uint64_t(b) << 32; }
    static bool take(Cursor& c, Index min_chunk, bool front, Index& a, Index& b) {
        std::uint64_t v = c.fb.load(std::memory_order_relaxed);
        for (;;) {
            const Index f = Index(v & 0xffffffffu), e = Index(v >> 32);
            if (f >= e) return false;
            const Index left = e - f, take = std::min(left, front ? std::max(min_chunk, left / 4) : min_chunk);
            const std::uint64_t nv = front ? pack(f + take, e) : pack(f, e - take);
            if (c.fb.compare_exchange_weak(v, nv, std::memory_order_relaxed)) {
                a = front ? f : e - take;
                b = a + take;
                return true;
            }
        }
    }
    static constexpr unsigned kInline = 8;
    unsigned n_;
    Cursor inline_[kInline];
    std::unique_ptr<Cursor[]> heap_;
    Cursor* cur_ = nullptr;
};

template <class Kern, class AX>
void gemv_rows(const Kern& kern, AX&& ax, Index m, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep, Index k) {
    constexpr int RG = gemv_rows_at_once<Kern>();
    const Index n = kern.n, np = kern.npanels;
    if (n <= 0 || m <= 0) return;
    const Index bytes_per_panel = std::max<Index>(1, Index(kern.P->bytes()) / std::max<Index>(np, 1));
    // m > RG: ≈ 24 KiB of weights per chunk (≥ 1 panel), re-read from L1 by every group of rows.
    const Index chunk = m <= RG ? kGemvChunk : std::clamp<Index>((24 << 10) / bytes_per_panel, 1, kGemvChunk);
    constexpr Index ldb = kGemvChunk * kPanel;
    auto panels = [&](Index p0, Index p1) {
        alignas(64) float buf[RG * ldb];
        for (Index p = Index(p0); p < Index(p1); p += chunk) {
            const Index pe = std::min<Index>(Index(p1), p + chunk);
            const Index c0 = p * kPanel, nr = std::min(n - c0, (pe - p) * kPanel);
            const TileOps o{kern.bias ? kern.bias + c0 : nullptr, ep.scale ? ep.scale + c0 : nullptr, ep.act, false, ep.accumulate};
            for (Index r = 0; r < m; r += RG) {
                const int rows = int(std::min<Index>(RG, m - r));
                if constexpr (requires { Kern::kGemvRows; }) {
                    std::remove_cvref_t<decltype(ax(r))> xs[RG];
                    for (int i = 0; i < rows; ++i) xs[i] = ax(r + i);
                    kern.gemv_panels_rows(xs, rows, p, pe, buf, ldb);
                } else {
                    kern.gemv_panels(ax(r), p, pe, buf);
                }
                for (int i = 0; i < rows; ++i) store_tile(buf + i * ldb, nr, 1, nr, y + (r + i) * ldy + c0, nr, o);
            }
        }
    };
    const unsigned T = pool_size(pool);
    const Index grain = std::max<Index>(1, ceil_div(1 << 16, kPanel * std::max<Index>(k, 1)));  // ≈ 64 KiB of f32 weights
    if (m <= RG && T > 1 && np >= 2 * grain) {
        // The rows fit one group (decode): one share per thread, streamed once, with stealing at the end.
        // Stolen chunks ≈ 16 KiB of weights: the tail is evened out to a few µs of streaming.
        StealingShares sh(np, unsigned(std::min<Index>(T, np)));
        const Index steal = std::clamp<Index>((16 << 10) / bytes_per_panel, 1, kGemvChunk);
        pool->run(sh.shares(), [&](std::size_t s, unsigned) { sh.run_share(unsigned(s), steal, panels); });
        return;
    }
    parallel_for(pool, std::size_t(np), std::size_t(grain), [&](std::size_t p0, std::size_t p1) { panels(Index(p0), Index(p1)); });
}

}  // namespace detail::mm

FASTVLM_SIMD_WARNINGS_ON
