// fastvlm/io/safetensors.hpp — memory-mapped safetensors reader, sharded model folders, writer.
//
// File layout (safetensors): u64 little-endian N | N bytes JSON header | data section.
// Header: {"__metadata__": {str: str}?, name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...};
// offsets are relative to the data section. Every field is validated before any data pointer is
// formed (docs/model-folder.md lists the rules); a bad file throws fastvlm::Error naming the file
// and the tensor. Gaps between tensors are allowed, overlaps are not.
//
// Alignment: TensorRef::data points into the mapping and may be unaligned for its dtype (files
// written by the official writer are aligned, hand-made ones need not be). Never dereference it as
// T*; use the TensorStore::load_* helpers or data_as<T>(), which copy when needed.
// A file truncated by another process while mapped raises SIGBUS on access (POSIX mmap semantics).
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/json.hpp"

namespace fastvlm::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; big-endian hosts are not supported");

// ---- dtypes -----------------------------------------------------------------------------------
enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

inline std::size_t dtype_size(DType d) {
    switch (d) {
        case DType::F64: case DType::I64: return 8;
        case DType::F32: case DType::I32: return 4;
        case DType::F16: case DType::BF16: case DType::I16: return 2;
        case DType::I8: case DType::U8: case DType::BOOL: return 1;
    }
    return 0;
}

inline const char* dtype_name(DType d) {
    switch (d) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::F64: return "F64";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::I16: return "I16";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::BOOL: return "BOOL";
    }
    return "?";
}

// The safetensors spelling ("F32", "BF16", ...); nullopt for anything else.
inline std::optional<DType> dtype_from_name(std::string_view s) {
    for (DType d : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64, DType::I32, DType::I16, DType::I8,
                    DType::U8, DType::BOOL})
        if (s == dtype_name(d)) return d;
    return std::nullopt;
}

inline bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64; }

// The dtype whose elements have C++ type T (float, bf16, f16, double, signed ints, uint8_t).
template <class T>
inline constexpr DType dtype_of = [] {
    if constexpr (std::is_same_v<T, float>) return DType::F32;
    else if constexpr (std::is_same_v<T, f16>) return DType::F16;
    else if constexpr (std::is_same_v<T, bf16>) return DType::BF16;
    else if constexpr (std::is_same_v<T, double>) return DType::F64;
    else if constexpr (std::is_same_v<T, std::int64_t>) return DType::I64;
    else if constexpr (std::is_same_v<T, std::int32_t>) return DType::I32;
    else if constexpr (std::is_same_v<T, std::int16_t>) return DType::I16;
    else if constexpr (std::is_same_v<T, std::int8_t>) return DType::I8;
    else if constexpr (std::is_same_v<T, std::uint8_t>) return DType::U8;
    else static_assert(sizeof(T) == 0, "no safetensors dtype for this element type (bool is read with load_i64)");
}();

inline std::string shape_to_string(std::span<const Index> s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

// ---- tensor view ------------------------------------------------------------------------------
struct TensorRef {
    std::string name;
    DType dtype = DType::F32;
    std::vector<Index> shape;
    const std::byte* data = nullptr;  // into the mapping; possibly unaligned (see top of file)
    std::size_t nbytes = 0;
    std::string file;  // path of the file it lives in, for error messages

    Index numel() const {
        Index n = 1;
        for (Index d : shape) n *= d;  // validated at open: no overflow
        return n;
    }
    std::string shape_str() const { return shape_to_string(shape); }
    // "file: tensor 'name'" — the prefix of every error about this tensor.
    std::string where() const { return ::fastvlm::detail::concat(file, ": tensor '", name, "'"); }
};

namespace detail {

// Read-only POSIX mapping of a whole regular file; empty files map to nothing.
class MappedFile {
public:
    MappedFile() = default;
    static MappedFile open(const std::filesystem::path& path) {
        const std::string p = path.string();
        struct stat st {};
        const int fd = open_regular_file(path, st);
        MappedFile m;
        m.size_ = static_cast<std::size_t>(st.st_size);
        if (m.size_ > 0) {
            void* a = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (a == MAP_FAILED) {
                const int e = errno;
                ::close(fd);
                fail(p, ": cannot mmap ", m.size_, " bytes: ", std::strerror(e));
            }
            m.data_ = static_cast<const std::byte*>(a);
        }
        ::close(fd);  // the mapping keeps the file alive
        return m;
    }
    MappedFile(MappedFile&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    MappedFile& operator=(MappedFile&& o) noexcept {
        if (this != &o) {
            reset();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile() { reset(); }

    const std::byte* data() const { return data_; }
    std::size_t size() const { return size_; }

private:
    void reset() noexcept {
        if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

// Element-wise copy of an unaligned source into typed storage: out[i] = Dst(load<Src>(src + i)).
template <class Src, class Dst>
void copy_elements(const std::byte* src, Dst* out, std::size_t n) {
    constexpr std::size_t kChunk = 1024;
    Src tmp[kChunk];
    for (std::size_t i = 0; i < n; i += kChunk) {
        const std::size_t m = std::min(kChunk, n - i);
        std::memcpy(tmp, src + i * sizeof(Src), m * sizeof(Src));
        for (std::size_t k = 0; k < m; ++k) {
            if constexpr (std::is_same_v<Src, bf16> || std::is_same_v<Src, f16>) out[i + k] = Dst(to_float(tmp[k]));
            else out[i + k] = Dst(tmp[k]);
        }
    }
}

// Converts a 16-bit float tensor to f32 with the bulk (SIMD) converters; copies through an aligned
// buffer when the source is not 2-byte aligned.
template <class H>
void convert_half(const std::byte* src, float* out, std::size_t n) {
    if (reinterpret_cast<std::uintptr_t>(src) % alignof(H) == 0) {
        convert(reinterpret_cast<const H*>(src), out, n);
        return;
    }
    constexpr std::size_t kChunk = 4096;
    H tmp[kChunk];
    for (std::size_t i = 0; i < n; i += kChunk) {
        const std::size_t m = std::min(kChunk, n - i);
        std::memcpy(tmp, src + i * sizeof(H), m * sizeof(H));
        convert(tmp, out + i, m);
    }
}

}  // namespace detail

// ---- one file -----------------------------------------------------------------------------------
class SafeTensorsFile {
public:
    SafeTensorsFile() = default;
    SafeTensorsFile(SafeTensorsFile&&) noexcept = default;
    SafeTensorsFile& operator=(SafeTensorsFile&&) noexcept = default;
    SafeTensorsFile(const SafeTensorsFile&) = delete;
    SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

    static SafeTensorsFile open(const std::filesystem::path& path, const LoadLimits& limits = {}) {
        SafeTensorsFile f;
        f.path_ = path.string();
        f.map_ = detail::MappedFile::open(path);
        f.parse(limits);
        return f;
    }

    const std::string& path() const { return path_; }
    std::size_t size() const { return tensors_.size(); }
    bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
    const TensorRef& at(std::string_view name) const {
        auto it = tensors_.find(name);
        if (it == tensors_.end()) fail(path_, ": tensor '", name, "' not found (the file has ", tensors_.size(), " tensors)");
        return it->second;
    }
    // Sorted.
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(tensors_.size());
        for (const auto& kv : tensors_) out.push_back(kv.first);
        return out;
    }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::map<std::string, TensorRef, std::less<>>& tensors() const { return tensors_; }
    // The whole mapped file (header included).
    std::span<const std::byte> bytes() const { return {map_.data(), map_.size()}; }
    // Offset of the data section inside bytes().
    std::size_t data_offset() const { return data_offset_; }

private:
    void parse(const LoadLimits& limits) {
        const std::size_t size = map_.size();
        const std::byte* base = map_.data();
        if (size < 8) fail(path_, ": not a safetensors file: ", size, " bytes, shorter than the 8-byte header length");
        std::uint64_t n = 0;
        std::memcpy(&n, base, 8);  // little-endian u64
        if (n > limits.max_header_bytes)
            fail(path_, ": safetensors header length ", n, " exceeds the ", limits.max_header_bytes,
                 "-byte limit (LoadLimits::max_header_bytes; corrupt file?)");
        if (n > size - 8) fail(path_, ": safetensors header length ", n, " runs past the end of the ", size, "-byte file");
        if (n < 2) fail(path_, ": safetensors header length ", n, " is too short for a JSON object");
        data_offset_ = 8 + std::size_t(n);
        const std::size_t data_len = size - data_offset_;
        const char* h = reinterpret_cast<const char*>(base + 8);
        const nlohmann::json header =
            parse_json(std::string_view(h, std::size_t(n)), path_ + ": safetensors header", {.max_depth = limits.max_json_depth});
        if (!header.is_object()) fail(path_, ": safetensors header is a JSON ", header.type_name(), ", expected an object");
        if (header.size() > limits.max_tensors + 1)  // + __metadata__
            fail(path_, ": safetensors header lists ", header.size(), " entries, more than the ", limits.max_tensors,
                 "-tensor limit (LoadLimits::max_tensors)");

        struct Range { std::uint64_t begin, end; const std::string* name; };
        std::vector<Range> ranges;
        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__") {
                if (!entry.is_object()) fail(path_, ": __metadata__ is a JSON ", entry.type_name(), ", expected an object of strings");
                for (const auto& [k, v] : entry.items()) {
                    if (!v.is_string()) fail(path_, ": __metadata__ key '", detail::JsonDomBuilder::brief(k), "' holds a JSON ", v.type_name(), ", expected a string");
                    metadata_[k] = v.get<std::string>();
                }
                continue;
            }
            const std::string where = path_ + ": tensor '" + detail::JsonDomBuilder::brief(name) + "'";
            if (!entry.is_object()) fail(where, ": header entry is a JSON ", entry.type_name(), ", expected an object");
            TensorRef t;
            t.name = name;
            t.file = path_;
            // dtype
            auto dt = entry.find("dtype");
            if (dt == entry.end()) fail(where, ": header entry has no 'dtype'");
            if (!dt->is_string()) fail(where, ": 'dtype' is a JSON ", dt->type_name(), ", expected a string");
            const auto dtype = dtype_from_name(dt->get_ref<const std::string&>());
            if (!dtype) fail(where, ": unsupported dtype '", dt->get_ref<const std::string&>(), "'");
            t.dtype = *dtype;
            // shape
            auto sh = entry.find("shape");
            if (sh == entry.end()) fail(where, ": header entry has no 'shape'");
            if (!sh->is_array()) fail(where, ": 'shape' is a JSON ", sh->type_name(), ", expected an array");
            std::uint64_t numel = 1;
            for (const auto& d : *sh) {
                if (!d.is_number_integer()) fail(where, ": shape entry ", brief_json(d), " is not an integer");
                if (!d.is_number_unsigned()) fail(where, ": shape entry ", brief_json(d), " is negative");
                const std::uint64_t v = d.get<std::uint64_t>();
                if (v > std::uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, v, &numel) || numel > std::uint64_t(INT64_MAX))
                    fail(where, ": shape ", brief_json(*sh), " overflows the element count");
                t.shape.push_back(Index(v));
            }
            std::uint64_t nbytes = 0;
            if (__builtin_mul_overflow(numel, std::uint64_t(dtype_size(t.dtype)), &nbytes))
                fail(where, ": shape ", brief_json(*sh), " x ", dtype_name(t.dtype), " overflows the byte count");
            // data_offsets
            auto off = entry.find("data_offsets");
            if (off == entry.end()) fail(where, ": header entry has no 'data_offsets'");
            if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
                fail(where, ": 'data_offsets' ", brief_json(*off), " is not a pair of non-negative integers");
            const std::uint64_t b = (*off)[0].get<std::uint64_t>(), e = (*off)[1].get<std::uint64_t>();
            if (b > e) fail(where, ": data_offsets [", b, ", ", e, "] are reversed");
            if (e > data_len)
                fail(where, ": data_offsets [", b, ", ", e, "] run past the end of the data section (", data_len, " bytes)");
            if (e - b != nbytes)
                fail(where, ": shape ", t.shape_str(), " of ", dtype_name(t.dtype), " needs ", nbytes, " bytes but data_offsets [", b,
                     ", ", e, "] hold ", e - b);
            t.data = base + data_offset_ + b;
            t.nbytes = std::size_t(nbytes);
            auto it = tensors_.emplace(name, std::move(t)).first;  // names are unique: parse_json
            if (nbytes > 0) ranges.push_back({b, e, &it->first});
        }
        // Overlaps: sorted by start, each range must begin at or after the previous end.
        std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
        for (std::size_t i = 1; i < ranges.size(); ++i)
            if (ranges[i].begin < ranges[i - 1].end)
                fail(path_, ": tensor '", *ranges[i].name, "' (bytes [", ranges[i].begin, ", ", ranges[i].end, ")) overlaps tensor '",
                     *ranges[i - 1].name, "' (bytes [", ranges[i - 1].begin, ", ", ranges[i - 1].end, "))");
    }

    std::string path_;
    detail::MappedFile map_;
    std::size_t data_offset_ = 0;
    std::map<std::string, TensorRef, std::less<>> tensors_;  // node-based: TensorRef addresses survive moves
    std::map<std::string, std::string> metadata_;
};

// ---- a model folder -------------------------------------------------------------------------------
class TensorStore {
public:
    TensorStore() = default;
    TensorStore(TensorStore&&) noexcept = default;
    TensorStore& operator=(TensorStore&&) noexcept = default;

    // A folder (model.safetensors, else model.safetensors.index.json + shards), a *.index.json
    // file, or one .safetensors file.
    static TensorStore open(const std::filesystem::path& dir_or_file, const LoadLimits& limits = {}) {
        namespace fs = std::filesystem;
        std::error_code ec;
        const auto st = fs::status(dir_or_file, ec);
        if (ec && ec != std::errc::no_such_file_or_directory) fail(dir_or_file.string(), ": ", ec == std::errc::too_many_symbolic_link_levels ? "a symlink loop" : ec.message());
        if (ec || !fs::exists(st)) fail(dir_or_file.string(), ": no such model folder or file");
        TensorStore s;
        s.source_ = dir_or_file.string();
        s.limits_ = limits;
        if (fs::is_directory(st)) {
            const fs::path single = dir_or_file / "model.safetensors";
            const fs::path index = dir_or_file / "model.safetensors.index.json";
            // symlink_status: a dangling or looping link is opened, and its error names it.
            if (fs::exists(fs::symlink_status(single, ec))) s.add_file(single);
            else if (fs::exists(fs::symlink_status(index, ec))) s.open_index(index);
            else {
                std::string found;
                for (const auto& e : fs::directory_iterator(dir_or_file, ec))
                    if (e.path().extension() == ".safetensors") found += (found.empty() ? "" : ", ") + e.path().filename().string();
                fail(dir_or_file.string(), ": model folder has neither model.safetensors nor model.safetensors.index.json",
                     found.empty() ? std::string() : " (found: " + found + ")");
            }
        } else {
            const std::string fname = dir_or_file.filename().string();
            if (fname.size() > 11 && fname.ends_with(".index.json")) s.open_index(dir_or_file);
            else s.add_file(dir_or_file);
        }
        return s;
    }

    const std::string& source() const { return source_; }
    std::size_t size() const { return index_.size(); }
    std::vector<std::string> files() const {
        std::vector<std::string> out;
        for (const auto& f : files_) out.push_back(f.path());
        return out;
    }
    const std::vector<SafeTensorsFile>& shards() const { return files_; }

    bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }
    const TensorRef& at(std::string_view name) const {
        auto it = index_.find(name);
        if (it != index_.end()) return *it->second;
        // Suggest the stored name sharing the longest prefix.
        std::string best;
        std::size_t best_len = 0;
        for (const auto& kv : index_) {
            const auto m = std::mismatch(name.begin(), name.end(), kv.first.begin(), kv.first.end());
            const std::size_t len = std::size_t(m.first - name.begin());
            if (len > best_len) best_len = len, best = kv.first;
        }
        fail(source_, ": tensor '", name, "' not found (", index_.size(), " tensors in ", files_.size(), " file(s)",
             best_len >= 8 ? "; closest: '" + best + "'" : std::string(), ")");
    }
    // Sorted.
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(index_.size());
        for (const auto& kv : index_) out.push_back(kv.first);
        return out;
    }

    // Throws unless `name` exists with exactly this shape.
    const TensorRef& checked(std::string_view name, std::span<const Index> expected_shape) const {
        const TensorRef& t = at(name);
        if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end()))
            fail(t.where(), ": expected shape ", shape_to_string(expected_shape), ", file has ", t.shape_str(), " (",
                 dtype_name(t.dtype), ")");
        return t;
    }

    // Any float dtype (F32/F16/BF16/F64) converted to f32 into `out` (numel elements).
    void load_f32_into(std::string_view name, std::span<const Index> expected_shape, std::span<float> out) const {
        const TensorRef& t = checked(name, expected_shape);
        const std::size_t n = std::size_t(t.numel());
        FASTVLM_CHECK(out.size() == n, t.where(), ": output buffer holds ", out.size(), " floats, tensor has ", n);
        switch (t.dtype) {
            case DType::F32: if (n) std::memcpy(out.data(), t.data, n * 4); break;
            case DType::BF16: detail::convert_half<bf16>(t.data, out.data(), n); break;
            case DType::F16: detail::convert_half<f16>(t.data, out.data(), n); break;
            case DType::F64: detail::copy_elements<double>(t.data, out.data(), n); break;
            default: fail(t.where(), ": dtype ", dtype_name(t.dtype), " is not a floating-point type");
        }
    }
    std::vector<float> load_f32(std::string_view name, std::span<const Index> expected_shape) const {
        const TensorRef& t = checked(name, expected_shape);
        std::vector<float> out(std::size_t(t.numel()));
        load_f32_into(name, expected_shape, out);
        return out;
    }
    std::vector<float> load_f32(std::string_view name, std::initializer_list<Index> expected_shape) const {
        return load_f32(name, std::span<const Index>(expected_shape.begin(), expected_shape.size()));
    }
    template <std::size_t R>
    Tensor<float, R> load_tensor(std::string_view name, const Shape<R>& expected) const {
        checked(name, std::span<const Index>(expected.data(), R));
        Tensor<float, R> out(expected);
        load_f32_into(name, std::span<const Index>(expected.data(), R), out.span());
        return out;
    }

    // Zero-copy typed view when the stored dtype is exactly dtype_of<T> (after checking the shape),
    // else nullopt. An unaligned tensor (hand-made files only) is copied once into an aligned buffer
    // owned by the store; the span stays valid as long as the store.
    template <class T>
    std::optional<std::span<const T>> data_as(std::string_view name, std::span<const Index> expected_shape) const {
        const TensorRef& t = checked(name, expected_shape);
        if (t.dtype != dtype_of<T>) return std::nullopt;
        const std::size_t n = std::size_t(t.numel());
        if (reinterpret_cast<std::uintptr_t>(t.data) % alignof(T) == 0)
            return std::span<const T>(reinterpret_cast<const T*>(t.data), n);
        return std::span<const T>(reinterpret_cast<const T*>(aligned_copy(t)), n);
    }
    // Raw bf16 weights (for load-time packing); nullopt when the stored dtype is not BF16.
    std::optional<std::span<const bf16>> bf16_data(std::string_view name, std::span<const Index> expected_shape) const {
        return data_as<bf16>(name, expected_shape);
    }

    // Tells the kernel the tensor's bytes are no longer needed (after they were converted and
    // repacked): the whole pages inside it leave the resident set (the mapping is read-only and
    // file-backed, so a later read faults them in again from the file; nothing is lost). Keeps
    // the peak RSS of a load near the packed weights instead of packed + checkpoint. Unknown
    // names are ignored.
    void release(std::string_view name) const noexcept {
        auto it = index_.find(name);
        if (it == index_.end() || it->second->nbytes == 0) return;
        const TensorRef& t = *it->second;
        const std::uintptr_t page = 4096;
        const std::uintptr_t b = (reinterpret_cast<std::uintptr_t>(t.data) + page - 1) / page * page;
        const std::uintptr_t e = (reinterpret_cast<std::uintptr_t>(t.data) + t.nbytes) / page * page;
        if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
    }

    // Integer tensors (I64/I32/I16/I8/U8/BOOL) of any shape, widened to int64.
    std::vector<std::int64_t> load_i64(std::string_view name) const {
        const TensorRef& t = at(name);
        std::vector<std::int64_t> out(std::size_t(t.numel()));
        const std::size_t n = out.size();
        switch (t.dtype) {
            case DType::I64: if (n) std::memcpy(out.data(), t.data, n * 8); break;
            case DType::I32: detail::copy_elements<std::int32_t>(t.data, out.data(), n); break;
            case DType::I16: detail::copy_elements<std::int16_t>(t.data, out.data(), n); break;
            case DType::I8: detail::copy_elements<std::int8_t>(t.data, out.data(), n); break;
            case DType::U8: case DType::BOOL: detail::copy_elements<std::uint8_t>(t.data, out.data(), n); break;
            default: fail(t.where(), ": dtype ", dtype_name(t.dtype), " is not an integer type");
        }
        return out;
    }
    std::vector<std::int64_t> load_i64(std::string_view name, std::span<const Index> expected_shape) const {
        checked(name, expected_shape);
        return load_i64(name);
    }

private:
    struct Copies {
        std::mutex mu;
        std::map<std::string, AlignedBuffer<std::byte>, std::less<>> bufs;
    };

    const std::byte* aligned_copy(const TensorRef& t) const {
        std::lock_guard<std::mutex> lock(copies_->mu);
        auto it = copies_->bufs.find(t.name);
        if (it == copies_->bufs.end()) {
            AlignedBuffer<std::byte> b(std::max<std::size_t>(t.nbytes, 1));
            if (t.nbytes) std::memcpy(b.data(), t.data, t.nbytes);
            it = copies_->bufs.emplace(t.name, std::move(b)).first;
        }
        return it->second.data();
    }

    void add_file(const std::filesystem::path& p) {
        files_.push_back(SafeTensorsFile::open(p, limits_));
        const SafeTensorsFile& f = files_.back();
        if (index_.size() + f.size() > limits_.max_tensors)
            fail(f.path(), ": the model's files hold more than the ", limits_.max_tensors, "-tensor limit (LoadLimits::max_tensors)");
        for (const auto& [name, ref] : f.tensors()) {
            auto [it, inserted] = index_.emplace(name, &ref);
            if (!inserted) fail("tensor '", name, "' is stored twice: in ", it->second->file, " and in ", f.path());
        }
    }

    // {"metadata": {...}?, "weight_map": {tensor: shard file name}}
    void open_index(const std::filesystem::path& index_path) {
        namespace fs = std::filesystem;
        const std::string ip = index_path.string();
        const std::string text = read_file(index_path, limits_.max_json_file_bytes);
        const nlohmann::json j = parse_json(text, ip, {.max_depth = limits_.max_json_depth});
        if (!j.is_object()) fail(ip, ": expected a JSON object, got ", j.type_name());
        if (auto m = j.find("metadata"); m != j.end() && !m->is_object() && !m->is_null())
            fail(ip, ": 'metadata' is a JSON ", m->type_name(), ", expected an object");
        auto wm = j.find("weight_map");
        if (wm == j.end()) fail(ip, ": no 'weight_map'");
        if (!wm->is_object()) fail(ip, ": 'weight_map' is a JSON ", wm->type_name(), ", expected an object");
        if (wm->empty()) fail(ip, ": 'weight_map' is empty");
        if (wm->size() > limits_.max_tensors)
            fail(ip, ": 'weight_map' lists ", wm->size(), " tensors, more than the ", limits_.max_tensors, "-tensor limit (LoadLimits::max_tensors)");
        std::vector<std::string> shard_order;
        std::map<std::string, std::size_t> shard_id;
        for (const auto& [name, v] : wm->items()) {
            if (!v.is_string()) fail(ip, ": weight_map entry for tensor '", name, "' is a JSON ", v.type_name(), ", expected a file name");
            const std::string& shard = v.get_ref<const std::string&>();
            const fs::path sp(shard);
            bool bad = shard.empty() || sp.is_absolute();
            for (const auto& part : sp) bad = bad || part == "..";
            if (bad) fail(ip, ": weight_map entry for tensor '", name, "' names shard '", shard, "', which is not a file inside the folder");
            if (shard_id.emplace(shard, shard_order.size()).second) shard_order.push_back(shard);
        }
        const fs::path dir = index_path.parent_path();
        files_.reserve(shard_order.size());
        for (const auto& shard : shard_order) {
            const fs::path sp = dir / shard;
            std::error_code ec;
            if (!fs::exists(sp, ec)) fail(ip, ": shard '", shard, "' listed in weight_map is missing (", sp.string(), ")");
            add_file(sp);
        }
        for (const auto& [name, v] : wm->items()) {
            const std::string& shard = v.get_ref<const std::string&>();
            const SafeTensorsFile& f = files_[shard_id.at(shard)];
            if (!f.contains(name)) fail(ip, ": weight_map puts tensor '", name, "' in ", f.path(), ", which has no such tensor");
        }
    }

    std::string source_;
    LoadLimits limits_;
    std::vector<SafeTensorsFile> files_;
    std::map<std::string, const TensorRef*, std::less<>> index_;  // into files_' node-based maps
    std::unique_ptr<Copies> copies_ = std::make_unique<Copies>();
};

// ---- writer ---------------------------------------------------------------------------------------
struct WriteTensor {
    std::string name;
    DType dtype = DType::F32;
    std::vector<Index> shape;
    const void* data = nullptr;  // numel * dtype_size bytes
};

// Writes a safetensors file readable by the official implementation: header padded with spaces to a
// multiple of 8, tensors contiguous in the data section, placed by decreasing element size so that
// every tensor is aligned to its element size. Written to a temporary name, then renamed.
inline void write_safetensors(const std::filesystem::path& path, std::span<const WriteTensor> tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
    const std::string p = path.string();
    std::vector<std::uint64_t> nbytes(tensors.size());
    std::set<std::string_view> seen;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        const WriteTensor& t = tensors[i];
        if (t.name == "__metadata__") fail(p, ": '__metadata__' cannot be a tensor name");
        if (!seen.insert(t.name).second) fail(p, ": tensor '", t.name, "' given twice");
        std::uint64_t n = dtype_size(t.dtype);
        for (Index d : t.shape) {
            if (d < 0) fail(p, ": tensor '", t.name, "': negative extent in shape ", shape_to_string(t.shape));
            if (__builtin_mul_overflow(n, std::uint64_t(d), &n)) fail(p, ": tensor '", t.name, "': shape ", shape_to_string(t.shape), " overflows");
        }
        if (n > 0 && t.data == nullptr) fail(p, ": tensor '", t.name, "' has no data");
        nbytes[i] = n;
    }
    std::vector<std::size_t> order(tensors.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return dtype_size(tensors[a].dtype) > dtype_size(tensors[b].dtype); });
    std::vector<std::uint64_t> begin(tensors.size());
    std::uint64_t off = 0;
    for (std::size_t i : order) begin[i] = off, off += nbytes[i];

    std::string header;
    try {
        nlohmann::ordered_json h = nlohmann::ordered_json::object();
        if (!metadata.empty()) h["__metadata__"] = metadata;
        for (std::size_t i = 0; i < tensors.size(); ++i)
            h[tensors[i].name] = {{"dtype", dtype_name(tensors[i].dtype)},
                                  {"shape", tensors[i].shape},
                                  {"data_offsets", {begin[i], begin[i] + nbytes[i]}}};
        header = h.dump();
    } catch (const nlohmann::json::exception& e) {
        fail(p, ": cannot encode the safetensors header: ", e.what());  // e.g. a name that is not UTF-8
    }
    header.append((8 - header.size() % 8) % 8, ' ');

    const std::filesystem::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(p, ": cannot create ", tmp.string(), ": ", std::strerror(errno));
        const std::uint64_t n = header.size();
        out.write(reinterpret_cast<const char*>(&n), 8);
        out.write(header.data(), std::streamsize(header.size()));
        for (std::size_t i : order)
            if (nbytes[i]) out.write(static_cast<const char*>(tensors[i].data), std::streamsize(nbytes[i]));
        out.flush();
        if (!out) {
            std::error_code ec;
            std::filesystem::remove(tmp, ec);
            fail(p, ": write failed (disk full?)");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        fail(p, ": cannot rename the temporary file into place: ", ec.message());
    }
}

inline void write_safetensors(const std::filesystem::path& path, std::initializer_list<WriteTensor> tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
    write_safetensors(path, std::span<const WriteTensor>(tensors.begin(), tensors.size()), metadata);
}

}  // namespace fastvlm::io
