// fastvlm/kernels/matmul/common.hpp — shared pieces of the matrix kernels: aligned storage,
// kernel paths, the panel width of the packed weight layouts, per-thread scratch and the
// tile epilogue (bias, activation, scale, accumulate).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "fastvlm/core/diagnostics.hpp"
#include "fastvlm/core/cpu.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/matmul/amx.hpp"

FASTVLM_SIMD_WARNINGS_OFF  // core/diagnostics.hpp

namespace fastvlm {

// Which loop nest computes the rows of one call.
enum class RowKernel : std::uint8_t {
    automatic,  // m = 1: GEMV; m > 1: the blocked GEMM
    gemv,       // every row through the GEMV path, the weights streamed once for all rows: each row's
                // result is bit-identical to an m = 1 call, whatever else is in the batch (decode rows)
    gemm,       // every row through the blocked GEMM, m = 1 included (prefill rows)
};

// y = act(x·wᵀ + bias); if scale: y *= scale[n]; then Y = y, or Y += y when accumulate.
struct Epilogue {
    Act act = Act::none;
    const float* scale = nullptr;
    bool accumulate = false;
    RowKernel rows = RowKernel::automatic;
};
// True when the rows of a call of m rows go through the GEMV path.
inline bool use_gemv(Index m, const Epilogue& ep) {
    return ep.rows == RowKernel::gemv || (ep.rows == RowKernel::automatic && m == 1);
}

namespace detail::mm {

// Every packed layout stores the weights in panels of kPanel output columns (rows of W),
// interleaved along k, so one zmm holds the kPanel columns of one k (or k-pair / k-quad).
inline constexpr Index kPanel = 16;
inline constexpr Index kStreamPrefetch = 4096;  // software prefetch distance (bytes) of a GEMV weight stream

inline Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }
inline Index round_up(Index a, Index b) { return ceil_div(a, b) * b; }

// Whether large buffers ask for transparent huge pages: yes unless FASTVLM_HUGE_PAGES=0 (read once).
inline bool huge_pages_wanted() {
    static const bool on = [] {
        const char* e = std::getenv("FASTVLM_HUGE_PAGES");
        return !(e && e[0] == '0' && e[1] == 0);
    }();
    return on;
}

// std::allocator with 64-byte alignment (scratch, temporaries).
template <class T>
struct AlignedAlloc {
    using value_type = T;
    AlignedAlloc() = default;
    template <class U>
    AlignedAlloc(const AlignedAlloc<U>&) {}
    T* allocate(std::size_t n) {
        const std::size_t bytes = (n * sizeof(T) + kAlignment - 1) / kAlignment * kAlignment;
        void* p = std::aligned_alloc(kAlignment, std::max<std::size_t>(bytes, kAlignment));
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, std::size_t) noexcept { std::free(p); }
    template <class U>
    bool operator==(const AlignedAlloc<U>&) const { return true; }
};
template <class T>
using avec = std::vector<T, AlignedAlloc<T>>;

// The bytes in free blocks of 2 MiB and larger that a /proc/buddyinfo text lists, summed over every zone
// ("Node 0, zone   Normal   6   3   3 ...": counts of free blocks of order 0, 1, … of `page`-byte pages).
inline long long huge_bytes_in_buddyinfo(const char* text, long long page) {
    int huge_order = 0;  // 9 with 4 KiB pages
    while ((page << huge_order) < (2ll << 20)) ++huge_order;
    long long total = 0;
    for (const char* line = text; line && *line;) {
        const char* eol = std::strchr(line, '\n');
        const char* p = std::strstr(line, "zone");
        if (p && (!eol || p < eol)) {
            p += 4;
            while (*p == ' ' || *p == '\t') ++p;
            while (*p && *p != ' ' && *p != '\t' && *p != '\n') ++p;  // the zone's name
            for (int order = 0; order < 40; ++order) {
                while (*p == ' ' || *p == '\t') ++p;  // strtoll would skip the newline too
                char* end = nullptr;
                const long long n = std::strtoll(p, &end, 10);
                if (end == p) break;
                if (order >= huge_order && n > 0) total += n * (page << order);
                p = end;
            }
        }
        line = eol ? eol + 1 : nullptr;
    }
    return total;
}
// Bytes the kernel can hand out as 2 MiB pages at once, without compacting memory. −1 when it cannot tell.
inline long long free_huge_page_bytes() {
#if defined(__linux__)
    std::FILE* f = std::fopen("/proc/buddyinfo", "r");
    if (!f) return -1;
    std::string text;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
    const long page = ::sysconf(_SC_PAGESIZE);
    return huge_bytes_in_buddyinfo(text.c_str(), page > 0 ? page : 4096);
#else
    return -1;
#endif
}

// Slabs of memory on transparent huge pages (2 MiB-aligned, madvise(MADV_HUGEPAGE)), out of which the
// packed 8- and 16-bit weights are carved in order: a decode step streams every byte of them once, and
// with 4 KiB pages each 4 KiB of that stream needs its own TLB entry (a page walk, nested under a
// hypervisor). One buffer per matrix on huge pages of its own left the tail of every matrix and all
// matrices under 2 MiB (a 0.5B model's q/k/v, o and down projections) on 4 KiB pages; from slabs, all of
// them share huge pages. A slab is returned when its last buffer is freed. Advice only: without THP the
// slabs are ordinary pages. Not used under AddressSanitizer (its red zones between buffers would be lost).
//
// A slab is advised when it is made only if the kernel has free 2 MiB blocks for all of it (plus a reserve):
// otherwise each first touch of a 2 MiB range would compact memory on the spot (THP `defrag` = `madvise`,
// Debian's default), which made a 0.5B bf16 load take 1.5–3.2 s instead of 1 s when the page cache filled
// the memory. Such a slab is advised later, once its buffers are handed out and written (the next slab,
// or advise_deferred() at the end of a load): its 4 KiB pages are then collapsed into huge pages by the
// kernel's khugepaged thread in the background, not by the thread loading the model.
class HugeSlabs {
public:
    static constexpr std::size_t kHuge = std::size_t(2) << 20, kSlab = std::size_t(32) << 20;
    static constexpr long long kReserve = 64ll << 20;  // free 2 MiB blocks left over after a slab is advised
    using Probe = long long (*)();                     // free_huge_page_bytes or a test's stand-in
    static HugeSlabs& instance() {  // the one the weights use
        static HugeSlabs* s = new HugeSlabs;  // never destroyed: buffers of static objects may outlive it
        return *s;
    }
    explicit HugeSlabs(Probe probe = free_huge_page_bytes) : probe_(probe) {}
    HugeSlabs(const HugeSlabs&) = delete;
    HugeSlabs& operator=(const HugeSlabs&) = delete;
    ~HugeSlabs() {
        for (auto& sl : slabs_) std::free(sl.base);
    }
    std::size_t slab_count() {
        std::lock_guard lk(mu_);
        return slabs_.size();
    }
    // Slabs made without advice that have not been advised since.
    std::size_t deferred_count() {
        std::lock_guard lk(mu_);
        return std::size_t(std::count_if(slabs_.begin(), slabs_.end(), [](const Slab& s) { return !s.advised; }));
    }
    // Advises every slab whose advice was put off (call when the buffers carved so far have been written).
    void advise_deferred() {
        std::lock_guard lk(mu_);
        for (auto& sl : slabs_) advise(sl);
    }
    void* allocate(std::size_t bytes) {
        bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
        std::lock_guard lk(mu_);
        for (auto& sl : slabs_)  // the buffers of other slabs were value-initialised when they were allocated
            if (&sl != current_) advise(sl);
        if (bytes > kSlab / 2) return new_slab((bytes + kHuge - 1) / kHuge * kHuge, bytes).base;  // a slab of its own
        if (current_ == nullptr || current_->size - current_->used < bytes) current_ = &new_slab(kSlab, 0);
        void* p = current_->base + current_->used;
        current_->used += bytes;
        ++current_->live;
        return p;
    }
    // False when p is not in a slab.
    bool deallocate(void* p) noexcept {
        std::lock_guard lk(mu_);
        auto* b = static_cast<std::byte*>(p);
        for (auto it = slabs_.begin(); it != slabs_.end(); ++it) {
            if (b < it->base || b >= it->base + it->size) continue;
            if (--it->live == 0) {
                if (current_ == &*it) current_ = nullptr;
                std::free(it->base);
                slabs_.erase(it);
            }
            return true;
        }
        return false;
    }

private:
    struct Slab {
        std::byte* base;
        std::size_t size, used, live;
        bool advised;
    };
    static void advise(Slab& sl) {
        if (sl.advised) return;
        sl.advised = true;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        ::madvise(sl.base, sl.size, MADV_HUGEPAGE);
#endif
    }
    Slab& new_slab(std::size_t size, std::size_t used) {
        void* p = std::aligned_alloc(kHuge, size);
        if (!p) throw std::bad_alloc();
        Slab& sl = slabs_.emplace_back(Slab{static_cast<std::byte*>(p), size, used, used ? 1u : 0u, false});
        const long long free_huge = probe_();
        if (free_huge < 0 || free_huge >= static_cast<long long>(size) + kReserve) advise(sl);
        return sl;
    }
    Probe probe_;
    std::mutex mu_;
    std::list<Slab> slabs_;  // stable addresses: current_ points into it
    Slab* current_ = nullptr;
};

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitizedHeap = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kSanitizedHeap = true;
#else
inline constexpr bool kSanitizedHeap = false;
#endif
#else
inline constexpr bool kSanitizedHeap = false;
#endif

// The allocator of packed weights: 8- and 16-bit buffers of ≥ 64 KiB come from HugeSlabs (unless
// FASTVLM_HUGE_PAGES=0), everything else is AlignedAlloc. f32 weights are left out: their decode did not
// gain, and at load the kernel may compact memory to find 2 MiB pages (the fp32 preset's load went from
// 1.3 to 2.9 s on a machine with a full page cache; docs/kernels.md "Huge pages").
template <class T>
struct WeightAlloc {
    using value_type = T;
    WeightAlloc() = default;
    template <class U>
    WeightAlloc(const WeightAlloc<U>&) {}
    static bool slab(std::size_t n) {
        return !kSanitizedHeap && sizeof(T) <= 2 && n * sizeof(T) >= (std::size_t(64) << 10) && huge_pages_wanted();
    }
    T* allocate(std::size_t n) {
        if (slab(n)) return static_cast<T*>(HugeSlabs::instance().allocate(n * sizeof(T)));
        return AlignedAlloc<T>{}.allocate(n);
    }
    void deallocate(T* p, std::size_t n) noexcept {
        if (slab(n) && HugeSlabs::instance().deallocate(p)) return;
        std::free(p);
    }
    template <class U>
    bool operator==(const WeightAlloc<U>&) const { return true; }
};
template <class T>
using wvec = std::vector<T, WeightAlloc<T>>;

// Per-thread scratch that only grows (the pool's threads live as long as the pool), one buffer per slot
// and element type. Slots are roles: a thread runs one matrix product at a time, so the kernels of
// different formats share a role's buffer, and buffers alive at the same time take different slots.
enum class Scratch {
    a_pack,       // X block packed into micro-panels (f32, and bf16 widened)
    b_widen,      // weight panels widened to f32 (or Q8/Q4 dequantized to bf16) for one GEMM block
    gemv_chunk,   // a chunk of one weight panel widened for a GEMV
    a_pairs,      // X block packed as bf16 k-pairs (vdpbf16ps)
    a_pairs_row,  // one X row rounded to bf16 pairs
    q8_codes,     // activations quantized to int8
    q8_scales,    // their per-block scales
    q8_corr,      // their per-block corrections −c·Σq for the unsigned weight bytes
    q8_next,      // a layer's output quantized for the next layer (Linear::forward_quantized_for): codes,
    q8_next_d,    // scales
    q8_next_c,    // corrections
    a_tiles,      // X block packed as AMX bf16 tiles
};
template <class T, Scratch Slot>
T* scratch(std::size_t n) {
    thread_local avec<T> buf;
    if (buf.size() < n) {
        buf.clear();
        buf.shrink_to_fit();
        buf.resize(n);
    }
    return buf.data();
}

// Which implementation runs. Every path reads the same packed layout.
enum class Path {
    scalar,       // plain C++ loops: compiles and runs anywhere
    simd,         // xsimd, best architecture compiled in (float FMA)
    avx512_bf16,  // vdpbf16ps (BF16 x BF16)
    avx512_vnni,  // vpdpbusd (Q8/Q4 x Q8)
    avx2_int8,    // vpmaddubsw + vpmaddwd (Q8/Q4 x Q8) where there is no AVX-512 VNNI
    widen_f32,    // BF16 x BF16 layer computed as BF16 x F32: weights widened to f32, activations not rounded
    amx_bf16,     // AMX TDPBF16PS, GEMM only (BF16 weights; Q8/Q4 weights dequantized to bf16 per K block)
};
inline constexpr Path kAllPaths[] = {Path::scalar,    Path::simd,      Path::avx512_bf16, Path::avx512_vnni,
                                     Path::avx2_int8, Path::widen_f32, Path::amx_bf16};
// Paths that run only the blocked GEMM (m ≥ 2, prefill and vision). A call of the GEMV class through one of
// them (m = 1, decode rows) runs the format's vector path instead, and kernel choice never picks them for GEMV.
inline bool gemm_only(Path p) { return p == Path::amx_bf16; }
inline const char* path_name(Path p) {
    switch (p) {
        case Path::scalar: return "scalar";
        case Path::simd: return "simd";
        case Path::avx512_bf16: return "avx512_bf16";
        case Path::avx512_vnni: return "avx512_vnni";
        case Path::avx2_int8: return "avx2_int8";
        case Path::widen_f32: return "widen_f32";
        case Path::amx_bf16: return "amx_bf16";
    }
    return "?";
}

inline bool have_avx512_bf16() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    return cpu().avx512f && cpu().avx512bf16;
#else
    return false;
#endif
}
inline bool have_avx2_int8() {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    return cpu().avx2 && cpu().fma && cpu().f16c;
#else
    return false;
#endif
}
inline bool have_avx512_vnni() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return cpu().avx512bw && cpu().avx512vnni;
#else
    return false;
#endif
}

// ---- tile epilogue -------------------------------------------------------------------------------
// A micro-kernel leaves its mr×nr result in a tile (row stride ldt); this writes it to C:
//   v = tile (+ bias) (+ C if partial);  v = act(v);  v *= scale;  (v += C if add);  C = v.
// Pointers bias/scale are already offset to the tile's first column (null = absent).
struct TileOps {
    const float* bias = nullptr;
    const float* scale = nullptr;
    Act act = Act::none;
    bool load_partial = false;  // C holds a partial sum of the same dot products (K blocking)
    bool add = false;           // Y += result (Epilogue::accumulate)
};

template <Act A>
inline void store_tile_impl(const float* t, Index ldt, Index mr, Index nr, float* c, Index ldc, const TileOps& o) {
    using B = simd::batch;
    constexpr Index S = Index(B::size);
    for (Index r = 0; r < mr; ++r) {
        const float* tr = t + r * ldt;
        float* cr = c + r * ldc;
        Index j = 0;
        for (; j + S <= nr; j += S) {
            B v = B::load_unaligned(tr + j);
            if (o.bias) v += B::load_unaligned(o.bias + j);
            if (o.load_partial) v += B::load_unaligned(cr + j);
            v = simd::act<A>(v);
            if (o.scale) v *= B::load_unaligned(o.scale + j);
            if (o.add) v += B::load_unaligned(cr + j);
            v.store_unaligned(cr + j);
        }
        for (; j < nr; ++j) {
            float v = tr[j];
            if (o.bias) v += o.bias[j];
            if (o.load_partial) v += cr[j];
            v = act_ref(A, v);
            if (o.scale) v *= o.scale[j];
            if (o.add) v += cr[j];
            cr[j] = v;
        }
    }
}

inline void store_tile(const float* t, Index ldt, Index mr, Index nr, float* c, Index ldc, const TileOps& o) {
    switch (o.act) {
        case Act::none: store_tile_impl<Act::none>(t, ldt, mr, nr, c, ldc, o); break;
        case Act::gelu: store_tile_impl<Act::gelu>(t, ldt, mr, nr, c, ldc, o); break;
        case Act::silu: store_tile_impl<Act::silu>(t, ldt, mr, nr, c, ldc, o); break;
        case Act::relu: store_tile_impl<Act::relu>(t, ldt, mr, nr, c, ldc, o); break;
        case Act::sigmoid: store_tile_impl<Act::sigmoid>(t, ldt, mr, nr, c, ldc, o); break;
    }
}

// ---- A packing: rows of X → [k][MR] micro-panels -----------------------------------------------------
#if defined(__AVX512F__)
// In-register transpose of a 16×16 block of 32-bit values: r[i][j] → r[j][i].
inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    __m512 u[16];  // u[4g + j], 128-bit lane L = rows 4g..4g+3 of column 4L + j
    for (int g = 0; g < 4; ++g) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int j = 0; j < 4; ++j) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44), v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
        const __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44), v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        r[8 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}
#endif

// d[p·MR + r] = src(r)[p] for r < rows (zero for rows ≤ r < MR), p < len; 32-bit elements.
// src(r) returns a pointer to row r's first element.
template <int MR, class T, class Src>
inline void pack_rows_t(Src&& src, Index rows, Index len, T* d) {
    static_assert(sizeof(T) == 4 && MR <= 16);
#if defined(__AVX512F__)
    const __mmask16 keep = __mmask16((1u << MR) - 1u);
    for (Index p = 0; p < len; p += 16) {
        const Index w = std::min<Index>(16, len - p);
        const __mmask16 lm = w == 16 ? __mmask16(0xffff) : __mmask16((1u << w) - 1u);
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(lm, reinterpret_cast<const float*>(src(i)) + p) : _mm512_setzero_ps();
        transpose16(r);
        for (Index c = 0; c < w; ++c) _mm512_mask_storeu_ps(reinterpret_cast<float*>(d) + (p + c) * MR, keep, r[c]);
    }
#else
    for (Index r = 0; r < MR; ++r) {
        if (r < rows) {
            const T* s = src(r);
            for (Index q = 0; q < len; ++q) d[q * MR + r] = s[q];
        } else {
            for (Index q = 0; q < len; ++q) d[q * MR + r] = T{};
        }
    }
#endif
}

// Calls f(std::integral_constant<int, v>) for a run-time v in [1, N] (micro-kernel widths).
template <int N, class F>
inline void with_width(int v, F&& f) {
    if constexpr (N >= 1) {
        if (v == N) return f(std::integral_constant<int, N>{});
        if constexpr (N > 1) with_width<N - 1>(v, std::forward<F>(f));
    }
}

// What every Impl… class (matmul.hpp ImplFloat, bf16.hpp ImplBF16, q8.hpp ImplQ) forwards to its packed
// weights: packing from f32 rows, one row back to f32, sizes.
template <class Packed>
struct PackedImpl {
    Packed P;
    template <class Rows>
    void pack(Index n, Index k, Rows&& rows) { P.pack(n, k, std::forward<Rows>(rows)); }
    void row(Index r, float* out) const { P.row(r, out); }
    std::size_t bytes() const { return P.bytes(); }
    Index npanels() const { return P.npanels; }
};

}  // namespace detail::mm
}  // namespace fastvlm

FASTVLM_SIMD_WARNINGS_ON
