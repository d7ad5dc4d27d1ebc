// fastvlm/core/cpu.hpp — what the running CPU (and OS) can do, read once with CPUID/XGETBV,
// and the AMX permission request (Linux arch_prctl). Kernels compiled for an extension check
// these flags before taking that path, so a binary built with -march=native on one machine
// falls back cleanly where a feature (AMX above all) is absent or not granted.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace fastvlm {

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
    bool avx512bf16 = false, avx512fp16 = false;
    bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
};

namespace detail {
inline CpuFeatures detect_cpu() {
    CpuFeatures f;
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return f;
    const bool osxsave = (c >> 27) & 1;
    f.fma = (c >> 12) & 1;
    f.f16c = (c >> 29) & 1;
    std::uint64_t xcr0 = 0;
    if (osxsave) {
        std::uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (std::uint64_t(hi) << 32) | lo;
    }
    const bool os_avx = (xcr0 & 0x6) == 0x6;
    const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;
    const bool os_amx = (xcr0 & (3ull << 17)) == (3ull << 17);
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    f.avx2 = os_avx && ((b >> 5) & 1);
    f.fma = f.fma && os_avx;
    f.f16c = f.f16c && os_avx;
    f.avx512f = os_avx512 && ((b >> 16) & 1);
    f.avx512bw = f.avx512f && ((b >> 30) & 1);
    f.avx512vl = f.avx512f && ((b >> 31) & 1);
    f.avx512vnni = f.avx512f && ((c >> 11) & 1);
    f.avx512fp16 = f.avx512f && ((d >> 23) & 1);
    f.amx_bf16 = os_amx && ((d >> 22) & 1);
    f.amx_tile = os_amx && ((d >> 24) & 1);
    f.amx_int8 = os_amx && ((d >> 25) & 1);
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = f.avx512f && ((a >> 5) & 1);
#endif
    return f;
}
}  // namespace detail

// The features of this CPU (computed once; immutable afterwards).
inline const CpuFeatures& cpu() {
    static const CpuFeatures f = detail::detect_cpu();
    return f;
}

// The CPU's brand string (CPUID 0x80000002..4), e.g. "AMD EPYC 7B13 64-Core Processor"; "" if absent.
inline const std::string& cpu_brand() {
    static const std::string brand = [] {
        std::string s;
#if defined(__x86_64__)
        unsigned r[4];
        if (__get_cpuid(0x80000000u, &r[0], &r[1], &r[2], &r[3]) && r[0] >= 0x80000004u)
            for (unsigned leaf = 0x80000002u; leaf <= 0x80000004u; ++leaf) {
                __get_cpuid(leaf, &r[0], &r[1], &r[2], &r[3]);
                s.append(reinterpret_cast<const char*>(r), sizeof(r));
            }
#endif
        s.resize(s.find('\0') == std::string::npos ? s.size() : s.find('\0'));
        while (!s.empty() && s.back() == ' ') s.pop_back();
        while (!s.empty() && s.front() == ' ') s.erase(s.begin());
        return s;
    }();
    return brand;
}

// Asks the Linux kernel for permission to use the AMX tile state (once per process). Returns
// false where AMX is absent or refused; callers then take their non-AMX path.
inline bool amx_available() {
#if defined(__x86_64__) && defined(__linux__)
    static const bool ok = [] {
        if (!cpu().amx_tile) return false;
        constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
        return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }();
    return ok;
#else
    return false;
#endif
}

}  // namespace fastvlm
