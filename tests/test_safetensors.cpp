// Tests for fastvlm/io/safetensors.hpp: round trips, every header-validation rule, sharded folders,
// the golden tiny-vlm folder, and a mutation fuzz loop (must stay ASan/UBSan clean).
#include "fastvlm/io/safetensors.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace fastvlm;
using namespace fastvlm::io;

namespace {

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
    fs::path path;
    TempDir() {
        static int counter = 0;
        path = fs::temp_directory_path() /
               ("fastvlm_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
                std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
};

void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    ASSERT_TRUE(bool(out)) << p;
}

// Rewrites a file in place (no O_TRUNC: truncating on open is ~100x slower on this filesystem).
void overwrite_bytes(const fs::path& p, const std::string& bytes) {
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << p;
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), 0), ssize_t(bytes.size()));
    ASSERT_EQ(::ftruncate(fd, off_t(bytes.size())), 0);
    ::close(fd);
}

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string u64le(std::uint64_t n) {
    std::string s(8, '\0');
    std::memcpy(s.data(), &n, 8);
    return s;
}

// A safetensors file from a literal header and a data section.
std::string raw_file(const std::string& header, const std::string& data) { return u64le(header.size()) + header + data; }

// Runs f and requires a fastvlm::Error whose message contains every needle.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
    try {
        f();
        ADD_FAILURE() << "no exception; expected one mentioning '" << *needles.begin() << "'";
    } catch (const fastvlm::Error& e) {
        const std::string msg = e.what();
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message lacks '" << n << "': " << msg;
    }
}

// Writes raw bytes to `name` in `dir` and expects opening it to fail with the needles (plus the path).
void expect_open_error(const TempDir& dir, const std::string& bytes, std::initializer_list<std::string> needles) {
    const fs::path p = dir / "bad.safetensors";
    write_bytes(p, bytes);
    expect_error([&] { SafeTensorsFile::open(p); }, needles);
    expect_error([&] { SafeTensorsFile::open(p); }, {p.string()});
}

std::string f32_bytes(std::initializer_list<float> v) {
    std::string s(v.size() * 4, '\0');
    std::memcpy(s.data(), v.begin(), s.size());
    return s;
}

// A valid two-tensor file: "a" F32 [2,3] at [0,24), "b" I64 [2] at [24,40).
std::string good_file() {
    const std::string h =
        R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
        R"("b":{"dtype":"I64","shape":[2],"data_offsets":[24,40]}})";
    std::string data = f32_bytes({1, 2, 3, 4, 5, 6});
    const std::int64_t ints[2] = {-200, 7};
    data.append(reinterpret_cast<const char*>(ints), 16);
    return raw_file(h, data);
}

}  // namespace

// ---- writer -> reader ------------------------------------------------------------------------------
TEST(SafeTensors, RoundTripAllDtypes) {
    TempDir dir;
    const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
    const std::vector<std::uint16_t> bf = {0x3f80, 0xc000, 0x4049, 0x0000, 0x7f80};  // 1, -2, 3.140625, 0, inf
    const std::vector<std::uint16_t> h16 = {0x3c00, 0xc000, 0x3555};                 // 1, -2, 0.333251953125
    const std::vector<double> f64 = {0.1, -1e10};
    const std::vector<std::int64_t> i64 = {-200, 0, 151645, INT64_MIN};
    const std::vector<std::int32_t> i32 = {-5, 6};
    const std::vector<std::uint8_t> u8 = {0, 255, 7};
    const std::vector<WriteTensor> ts = {
        {"u8", DType::U8, {3}, u8.data()},           // 1-byte first: the writer must still align the rest
        {"w.f32", DType::F32, {2, 3}, f32.data()},
        {"w.bf16", DType::BF16, {5}, bf.data()},
        {"w.f16", DType::F16, {1, 3}, h16.data()},
        {"w.f64", DType::F64, {2}, f64.data()},
        {"ids", DType::I64, {1, 4}, i64.data()},
        {"i32", DType::I32, {2}, i32.data()},
        {"empty", DType::F32, {0, 3}, nullptr},
        {"scalar", DType::F32, {}, f32.data()},
    };
    const fs::path p = dir / "rt.safetensors";
    write_safetensors(p, ts, {{"format", "pt"}, {"note", "x"}});

    const SafeTensorsFile f = SafeTensorsFile::open(p);
    EXPECT_EQ(f.size(), ts.size());
    EXPECT_EQ(f.metadata().at("format"), "pt");
    EXPECT_EQ(f.metadata().at("note"), "x");
    EXPECT_EQ(f.data_offset() % 8, 0u) << "header is padded to a multiple of 8";
    for (const auto& t : ts) {
        const TensorRef& r = f.at(t.name);
        EXPECT_EQ(r.dtype, t.dtype) << t.name;
        EXPECT_EQ(r.shape, t.shape) << t.name;
        EXPECT_EQ(r.file, p.string());
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(r.data) % dtype_size(r.dtype), 0u) << t.name << " is unaligned";
        if (r.nbytes) {
            EXPECT_EQ(std::memcmp(r.data, t.data, r.nbytes), 0) << t.name;
        }
    }
    EXPECT_EQ(f.at("scalar").numel(), 1);
    EXPECT_EQ(f.at("empty").numel(), 0);

    const TensorStore s = TensorStore::open(p);
    EXPECT_EQ(s.load_f32("w.f32", {2, 3}), f32);  // exact
    const auto b = s.load_f32("w.bf16", {5});
    EXPECT_EQ(b[0], 1.0f);
    EXPECT_EQ(b[1], -2.0f);
    EXPECT_EQ(b[2], 3.140625f);
    EXPECT_EQ(b[3], 0.0f);
    EXPECT_TRUE(std::isinf(b[4]));
    EXPECT_EQ(s.load_f32("w.f16", {1, 3}), (std::vector<float>{1.0f, -2.0f, 0.333251953125f}));
    EXPECT_EQ(s.load_f32("w.f64", {2}), (std::vector<float>{0.1f, -1e10f}));
    EXPECT_EQ(s.load_i64("ids"), i64);
    EXPECT_EQ(s.load_i64("i32"), (std::vector<std::int64_t>{-5, 6}));
    EXPECT_EQ(s.load_i64("u8"), (std::vector<std::int64_t>{0, 255, 7}));
    EXPECT_TRUE(s.load_f32("empty", {0, 3}).empty());
    EXPECT_EQ(s.load_f32("scalar", std::span<const Index>{}), std::vector<float>{1.5f});

    auto raw = s.bf16_data("w.bf16", std::vector<Index>{5});
    ASSERT_TRUE(raw.has_value());
    ASSERT_EQ(raw->size(), 5u);
    for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ((*raw)[i].bits, bf[i]);
    EXPECT_FALSE(s.bf16_data("w.f32", std::vector<Index>{2, 3}).has_value()) << "F32 is not BF16";
    auto fv = s.data_as<float>("w.f32", std::vector<Index>{2, 3});
    ASSERT_TRUE(fv.has_value());
    EXPECT_EQ((*fv)[1], -2.25f);

    const Tensor<float, 2> t = s.load_tensor("w.f32", Shape<2>{2, 3});
    EXPECT_EQ(t(1, 2), 1e-30f);
}

TEST(SafeTensors, WriterIsReadableByPythonJsonAndContiguous) {
    // The official reader requires the tensors to tile the data section without gaps.
    TempDir dir;
    const std::vector<std::uint8_t> a(3, 1);
    const std::vector<float> b(5, 2.0f);
    const std::vector<std::uint16_t> c(3, 0x3f80);
    const fs::path p = dir / "x.safetensors";
    write_safetensors(p, {{"a", DType::U8, {3}, a.data()}, {"b", DType::F32, {5}, b.data()}, {"c", DType::BF16, {3}, c.data()}});
    const SafeTensorsFile f = SafeTensorsFile::open(p);
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    for (const auto& [n, r] : f.tensors()) {
        const std::size_t begin = std::size_t(r.data - f.bytes().data()) - f.data_offset();
        ranges.push_back({begin, begin + r.nbytes});
    }
    std::sort(ranges.begin(), ranges.end());
    std::size_t pos = 0;
    for (auto [b0, e0] : ranges) {
        EXPECT_EQ(b0, pos);
        pos = e0;
    }
    EXPECT_EQ(pos + f.data_offset(), f.bytes().size()) << "no trailing bytes";
}

TEST(SafeTensors, WriterRejectsBadInput) {
    TempDir dir;
    const float x = 1;
    expect_error([&] { write_safetensors(dir / "a.safetensors", {{"t", DType::F32, {1}, &x}, {"t", DType::F32, {1}, &x}}); },
                 {"'t' given twice"});
    expect_error([&] { write_safetensors(dir / "a.safetensors", {{"__metadata__", DType::F32, {1}, &x}}); }, {"__metadata__"});
    expect_error([&] { write_safetensors(dir / "a.safetensors", {{"neg", DType::F32, {-1}, &x}}); }, {"neg", "negative"});
    expect_error([&] { write_safetensors(dir / "a.safetensors", {{"null", DType::F32, {4}, nullptr}}); }, {"null", "no data"});
    expect_error([&] { write_safetensors(dir / "no/such/dir/a.safetensors", {{"t", DType::F32, {1}, &x}}); }, {"no/such/dir"});
    expect_error([&] { write_safetensors(dir / "a.safetensors", {{std::string("\xff\xfe"), DType::F32, {1}, &x}}); }, {"header"});
    EXPECT_FALSE(fs::exists(dir / "a.safetensors"));
}

// ---- truncated / lying files --------------------------------------------------------------------------
TEST(SafeTensors, TruncatedFiles) {
    TempDir dir;
    expect_open_error(dir, "", {"0 bytes", "8-byte"});
    expect_open_error(dir, "abcd", {"4 bytes"});
    expect_open_error(dir, u64le(1000) + "{}", {"header length 1000", "past the end"});
    expect_open_error(dir, u64le(std::uint64_t(1) << 40) + "{}", {"limit"});
    expect_open_error(dir, u64le(~std::uint64_t(0)) + "{}", {"limit"});
    expect_open_error(dir, u64le(0), {"too short"});
    // A valid file cut inside the data section: the tensor whose range no longer fits is named.
    const std::string g = good_file();
    expect_open_error(dir, g.substr(0, g.size() - 4), {"tensor 'b'", "past the end of the data section"});
    // Cut inside the header.
    expect_open_error(dir, g.substr(0, 20), {"past the end"});
}

TEST(SafeTensors, BadJson) {
    TempDir dir;
    expect_open_error(dir, raw_file("{\"a\": ", ""), {"not valid JSON"});
    expect_open_error(dir, raw_file("[1, 2, 3]", ""), {"expected an object"});
    expect_open_error(dir, raw_file("\"str\"", ""), {"expected an object"});
    expect_open_error(dir, raw_file("{\"\xff\": 1}", ""), {"not valid JSON"});
    expect_open_error(dir, raw_file("{} trailing", ""), {"not valid JSON"});
    expect_open_error(dir,
                      raw_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", "xy"),
                      {"duplicate JSON key 'a'"});
}

TEST(SafeTensors, HeaderPaddedWithSpacesIsAccepted) {
    TempDir dir;
    const fs::path p = dir / "pad.safetensors";
    write_bytes(p, raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})" + std::string(13, ' '), "xy"));
    const auto f = SafeTensorsFile::open(p);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.at("a").data), 2), "xy");
}

TEST(SafeTensors, BadEntries) {
    TempDir dir;
    auto one = [](const std::string& entry, const std::string& data = std::string(24, '\0')) {
        return raw_file("{\"w\":" + entry + "}", data);
    };
    expect_open_error(dir, one("5"), {"tensor 'w'", "expected an object"});
    expect_open_error(dir, one(R"({"shape":[2,3],"data_offsets":[0,24]})"), {"tensor 'w'", "no 'dtype'"});
    expect_open_error(dir, one(R"({"dtype":"F32","data_offsets":[0,24]})"), {"tensor 'w'", "no 'shape'"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":[2,3]})"), {"tensor 'w'", "no 'data_offsets'"});
    expect_open_error(dir, one(R"({"dtype":32,"shape":[2,3],"data_offsets":[0,24]})"), {"tensor 'w'", "'dtype'"});
    expect_open_error(dir, one(R"({"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[0,6]})"), {"tensor 'w'", "unsupported dtype 'F8_E4M3'"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":"2x3","data_offsets":[0,24]})"), {"tensor 'w'", "'shape'"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":[2,3.0],"data_offsets":[0,24]})"), {"tensor 'w'", "not an integer"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":[-2,-3],"data_offsets":[0,24]})"), {"tensor 'w'", "negative"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0]})"), {"tensor 'w'", "data_offsets"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,-24]})"), {"tensor 'w'", "data_offsets"});
    expect_open_error(dir, one(R"({"dtype":"F32","shape":[2,3],"data_offsets":{"a":1}})"), {"tensor 'w'", "data_offsets"});
}

TEST(SafeTensors, LyingShapesAndOffsets) {
    TempDir dir;
    const std::string d24(24, '\0');
    // shape x dtype size != byte range
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", d24),
                      {"tensor 'w'", "needs 24 bytes", "hold 20"});
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,24]}})", d24),
                      {"tensor 'w'", "needs 12 bytes"});
    // element-count and byte-count overflow
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,24]}})", d24),
                      {"tensor 'w'", "overflows"});
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,24]}})", d24),
                      {"tensor 'w'", "overflows"});
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,24]}})", d24),
                      {"tensor 'w'", "overflows"});
    // reversed, beyond the data section
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", d24), {"tensor 'w'", "reversed"});
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}})", d24),
                      {"tensor 'w'", "past the end of the data section (24 bytes)"});
    expect_open_error(dir, raw_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}})", d24),
                      {"tensor 'w'"});
    // overlapping
    expect_open_error(dir,
                      raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", d24),
                      {"overlaps", "'a'", "'b'"});
    expect_open_error(dir,
                      raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d24),
                      {"overlaps"});
    // empty tensors inside another's range and gaps are fine
    const fs::path ok = dir / "ok.safetensors";
    write_bytes(ok, raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                             R"("g":{"dtype":"U8","shape":[2],"data_offsets":[20,22]}})",
                             d24));
    EXPECT_EQ(SafeTensorsFile::open(ok).size(), 3u);
}

TEST(SafeTensors, BadMetadata) {
    TempDir dir;
    expect_open_error(dir, raw_file(R"({"__metadata__":[1]})", ""), {"__metadata__", "expected an object"});
    expect_open_error(dir, raw_file(R"({"__metadata__":{"format":1}})", ""), {"__metadata__", "'format'", "expected a string"});
    expect_open_error(dir, raw_file(R"({"__metadata__":{"a":{"b":"c"}}})", ""), {"__metadata__", "'a'"});
}

TEST(SafeTensors, NotAFile) {
    TempDir dir;
    expect_error([&] { SafeTensorsFile::open(dir / "missing.safetensors"); }, {"missing.safetensors", "cannot open"});
    expect_error([&] { SafeTensorsFile::open(dir.path); }, {dir.path.string(), "is a directory"});
    expect_error([&] { TensorStore::open(dir / "nothing-here"); }, {"nothing-here", "no such"});
    write_bytes(dir / "weights.safetensors", good_file());
    expect_error([&] { TensorStore::open(dir.path); }, {"neither model.safetensors nor model.safetensors.index.json", "weights.safetensors"});
}

// ---- lookups and conversions ------------------------------------------------------------------------
TEST(SafeTensors, MissingTensorsAndWrongShapes) {
    TempDir dir;
    const fs::path p = dir / "model.safetensors";
    write_bytes(p, good_file());
    const TensorStore s = TensorStore::open(dir.path);
    EXPECT_TRUE(s.contains("a"));
    EXPECT_FALSE(s.contains("c"));
    EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b"}));
    expect_error([&] { s.at("model.layers.0.q_proj.weight"); }, {"model.layers.0.q_proj.weight", "not found", dir.path.string()});
    expect_error([&] { s.load_f32("a", {3, 2}); }, {p.string(), "tensor 'a'", "expected shape [3, 2]", "file has [2, 3]"});
    expect_error([&] { s.load_f32("a", {6}); }, {"expected shape [6]"});
    expect_error([&] { s.load_f32("a", {2, 3, 1}); }, {"expected shape [2, 3, 1]"});
    expect_error([&] { s.load_tensor("a", Shape<2>{2, 4}); }, {"tensor 'a'", "[2, 4]"});
    expect_error([&] { s.load_f32("b", {2}); }, {"tensor 'b'", "I64", "not a floating-point"});
    expect_error([&] { s.load_i64("a"); }, {"tensor 'a'", "F32", "not an integer"});
    expect_error([&] { s.bf16_data("a", std::vector<Index>{6}); }, {"tensor 'a'", "expected shape [6]"});
    expect_error([&] { s.load_i64("b", std::vector<Index>{1, 2}); }, {"tensor 'b'", "[1, 2]"});
    EXPECT_EQ(s.load_i64("b", std::vector<Index>{2}), (std::vector<std::int64_t>{-200, 7}));
    const auto t = s.load_tensor("a", Shape<2>{2, 3});
    EXPECT_EQ(t(1, 0), 4.0f);
    std::vector<float> small(5);
    expect_error([&] { s.load_f32_into("a", std::vector<Index>{2, 3}, small); }, {"output buffer"});
}

TEST(SafeTensors, ClosestNameSuggestion) {
    TempDir dir;
    const float x[2] = {1, 2};
    write_safetensors(dir / "model.safetensors", {{"model.embed_tokens.weight", DType::F32, {2}, x}});
    const TensorStore s = TensorStore::open(dir.path);
    expect_error([&] { s.at("model.embed_tokens.bias"); }, {"closest: 'model.embed_tokens.weight'"});
}

TEST(SafeTensors, UnalignedDataIsReadSafely) {
    // Header of odd length: every tensor's data starts at an odd address. The load helpers must
    // memcpy/convert (UBSan checks that nothing dereferences a misaligned pointer).
    TempDir dir;
    const std::uint16_t bf[3] = {0x3f80, 0x4000, 0xbf80};  // 1, 2, -1
    const std::uint16_t hf[2] = {0x3c00, 0x4200};          // 1, 3
    const float f[2] = {0.5f, 8.0f};
    const std::int64_t ids[2] = {-200, 9};
    const double dd[1] = {2.5};
    std::string data;
    data.append(reinterpret_cast<const char*>(bf), 6);   // [0,6)
    data.append(reinterpret_cast<const char*>(f), 8);    // [6,14)
    data.append(reinterpret_cast<const char*>(ids), 16); // [14,30)
    data.append(reinterpret_cast<const char*>(hf), 4);   // [30,34)
    data.append(reinterpret_cast<const char*>(dd), 8);   // [34,42)
    std::string h = R"({"bf":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},"f":{"dtype":"F32","shape":[2],"data_offsets":[6,14]},)"
                    R"("ids":{"dtype":"I64","shape":[2],"data_offsets":[14,30]},"h":{"dtype":"F16","shape":[2],"data_offsets":[30,34]},)"
                    R"("d":{"dtype":"F64","shape":[1],"data_offsets":[34,42]}})";
    if (h.size() % 2 == 0) h += ' ';
    const fs::path p = dir / "u.safetensors";
    write_bytes(p, raw_file(h, data));
    const TensorStore s = TensorStore::open(p);
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(s.at("bf").data) % 2, 1u) << "test precondition: unaligned";
    EXPECT_EQ(s.load_f32("bf", {3}), (std::vector<float>{1, 2, -1}));
    EXPECT_EQ(s.load_f32("f", {2}), (std::vector<float>{0.5f, 8.0f}));
    EXPECT_EQ(s.load_f32("h", {2}), (std::vector<float>{1, 3}));
    EXPECT_EQ(s.load_f32("d", {1}), (std::vector<float>{2.5f}));
    EXPECT_EQ(s.load_i64("ids"), (std::vector<std::int64_t>{-200, 9}));
    auto raw = s.bf16_data("bf", std::vector<Index>{3});
    ASSERT_TRUE(raw.has_value());
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(raw->data()) % alignof(bf16), 0u);
    EXPECT_EQ((*raw)[1].bits, 0x4000);
    auto again = s.bf16_data("bf", std::vector<Index>{3});
    EXPECT_EQ(again->data(), raw->data()) << "the aligned copy is made once";
    auto fv = s.data_as<float>("f", std::vector<Index>{2});
    ASSERT_TRUE(fv.has_value());
    EXPECT_EQ((*fv)[1], 8.0f);
    // Large unaligned bf16 tensor: crosses the 4096-element chunk of the converter.
    std::vector<std::uint16_t> big(5000);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = to_bf16(float(i) - 2500.0f).bits;
    std::string h2 = R"({"big":{"dtype":"BF16","shape":[5000],"data_offsets":[0,10000]}})";
    if (h2.size() % 2 == 0) h2 += ' ';
    write_bytes(dir / "big.safetensors", raw_file(h2, std::string(reinterpret_cast<const char*>(big.data()), 10000)));
    const auto v = TensorStore::open(dir / "big.safetensors").load_f32("big", {5000});
    for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], to_float(bf16::from_bits(big[i]))) << i;  // bf16 -> f32 is exact
}

TEST(SafeTensors, StoreSurvivesMoves) {
    TempDir dir;
    write_bytes(dir / "model.safetensors", good_file());
    std::vector<TensorStore> v;
    v.push_back(TensorStore::open(dir.path));
    const TensorRef* a = &v[0].at("a");
    for (int i = 0; i < 8; ++i) v.push_back(TensorStore::open(dir.path));  // reallocations move v[0]
    EXPECT_EQ(&v[0].at("a"), a);
    TensorStore moved = std::move(v[0]);
    EXPECT_EQ(moved.load_f32("a", {2, 3})[5], 6.0f);
}

// release() drops the pages of a tensor spanning several pages; reading it again faults the same
// bytes back in from the file.
TEST(SafeTensors, ReleasedTensorsReadBackIdentically) {
    TempDir dir;
    std::vector<float> big(3 * 4096 + 7), small = {1.f, 2.f};
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = float(i) * 0.25f - 7.f;
    write_safetensors(dir / "model.safetensors", {{"big", DType::F32, {Index(big.size())}, big.data()},
                                                  {"small", DType::F32, {2}, small.data()}});
    const auto st = TensorStore::open(dir.path);
    for (int round = 0; round < 2; ++round) {
        EXPECT_EQ(st.load_f32("big", {Index(big.size())}), big);
        st.release("big");
        st.release("small");  // smaller than a page: nothing to drop
        st.release("no such tensor");
    }
    EXPECT_EQ(st.load_f32("big", {Index(big.size())}), big);
    EXPECT_EQ(st.load_f32("small", {2}), small);
}

// ---- sharded folders -----------------------------------------------------------------------------------
namespace {
void write_shards(const TempDir& dir) {
    const float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};
    write_safetensors(dir / "model-00001-of-00002.safetensors", {{"model.a", DType::F32, {2, 2}, a}, {"model.b", DType::F32, {2}, b}});
    write_safetensors(dir / "model-00002-of-00002.safetensors", {{"lm_head.weight", DType::F32, {3}, c}});
}
void write_index(const TempDir& dir, const std::string& json) { write_bytes(dir / "model.safetensors.index.json", json); }
const char* kGoodIndex = R"({"metadata":{"total_size":36},"weight_map":{"model.a":"model-00001-of-00002.safetensors",)"
                         R"("model.b":"model-00001-of-00002.safetensors","lm_head.weight":"model-00002-of-00002.safetensors"}})";
}  // namespace

TEST(SafeTensorsSharded, GoodFolder) {
    TempDir dir;
    write_shards(dir);
    write_index(dir, kGoodIndex);
    for (const fs::path& p : {dir.path, dir / "model.safetensors.index.json"}) {
        const TensorStore s = TensorStore::open(p);
        EXPECT_EQ(s.size(), 3u);
        EXPECT_EQ(s.files().size(), 2u);
        EXPECT_EQ(s.load_f32("lm_head.weight", {3}), (std::vector<float>{7, 8, 9}));
        EXPECT_EQ(s.load_f32("model.a", {2, 2})[3], 4.0f);
        EXPECT_NE(s.at("lm_head.weight").file.find("00002"), std::string::npos);
    }
    // A single model.safetensors next to the index wins (as in transformers).
    const float z[1] = {42};
    write_safetensors(dir / "model.safetensors", {{"only", DType::F32, {1}, z}});
    EXPECT_EQ(TensorStore::open(dir.path).names(), std::vector<std::string>{"only"});
}

TEST(SafeTensorsSharded, BadIndex) {
    TempDir dir;
    write_shards(dir);
    const std::string ip = (dir / "model.safetensors.index.json").string();
    auto check = [&](const std::string& json, std::initializer_list<std::string> needles) {
        write_index(dir, json);
        expect_error([&] { TensorStore::open(dir.path); }, needles);
    };
    check("{\"weight_map\": ", {ip, "not valid JSON"});
    check("[]", {ip, "expected a JSON object"});
    check(R"({"metadata":{}})", {ip, "no 'weight_map'"});
    check(R"({"weight_map":[]})", {ip, "'weight_map'", "expected an object"});
    check(R"({"weight_map":{}})", {ip, "empty"});
    check(R"({"metadata":3,"weight_map":{"model.a":"model-00001-of-00002.safetensors"}})", {ip, "'metadata'"});
    check(R"({"weight_map":{"model.a":1}})", {ip, "tensor 'model.a'", "expected a file name"});
    check(R"({"weight_map":{"model.a":"../model-00001-of-00002.safetensors"}})", {ip, "tensor 'model.a'", "not a file inside"});
    check(R"({"weight_map":{"model.a":"/etc/passwd"}})", {ip, "not a file inside"});
    check(R"({"weight_map":{"model.a":"model-00003-of-00003.safetensors"}})", {ip, "model-00003-of-00003.safetensors", "missing"});
    check(R"({"weight_map":{"model.x":"model-00001-of-00002.safetensors"}})", {ip, "tensor 'model.x'", "no such tensor"});
    check(R"({"weight_map":{"model.a":"model-00002-of-00002.safetensors"}})", {ip, "tensor 'model.a'", "00002", "no such tensor"});
    check(R"({"weight_map":{"model.a":"model-00001-of-00002.safetensors","model.a":"model-00002-of-00002.safetensors"}})",
          {"duplicate JSON key 'model.a'"});
    // The same tensor in two shards.
    const float b[2] = {0, 0};
    write_safetensors(dir / "model-00002-of-00002.safetensors", {{"model.b", DType::F32, {2}, b}});
    check(R"({"weight_map":{"model.a":"model-00001-of-00002.safetensors","model.b":"model-00002-of-00002.safetensors"}})",
          {"tensor 'model.b' is stored twice", "00001", "00002"});
    // A corrupt shard is reported with its own path.
    write_bytes(dir / "model-00002-of-00002.safetensors", "xx");
    check(kGoodIndex, {"model-00002-of-00002.safetensors", "shorter than the 8-byte"});
}

// ---- golden model folder ---------------------------------------------------------------------------
TEST(SafeTensorsGolden, TinyVlmFolder) {
    const fs::path dir = fs::path(FASTVLM_SHARED_DIR) / "golden" / "tiny-vlm";
    if (!fs::exists(dir / "model.safetensors")) GTEST_SKIP() << "golden data not found at " << dir;
    const TensorStore s = TensorStore::open(dir);
    EXPECT_EQ(s.size(), 209u);  // 210 header keys minus __metadata__
    EXPECT_EQ(s.shards().at(0).metadata().at("format"), "pt");
    EXPECT_EQ(s.at("model.embed_tokens.weight").shape, (std::vector<Index>{300, 64}));
    EXPECT_EQ(s.at("model.mm_projector.0.weight").shape, (std::vector<Index>{64, 256}));
    EXPECT_EQ(s.at("model.mm_projector.2.bias").shape, (std::vector<Index>{64}));
    EXPECT_EQ(s.at("model.layers.0.self_attn.k_proj.weight").shape, (std::vector<Index>{32, 64}));
    EXPECT_EQ(s.at("model.vision_tower.vision_tower.model.patch_embed.0.reparam_conv.weight").shape, (std::vector<Index>{8, 3, 3, 3}));
    EXPECT_FALSE(s.contains("lm_head.weight")) << "tiny-vlm ties lm_head to embed_tokens";
    const auto emb = s.load_tensor("model.embed_tokens.weight", Shape<2>{300, 64});
    double sum2 = 0;
    for (float x : emb.span()) {
        ASSERT_TRUE(std::isfinite(x));
        sum2 += double(x) * x;
    }
    EXPECT_GT(sum2, 0.0);
    for (const auto& n : s.names()) {  // every float tensor converts
        const TensorRef& t = s.at(n);
        if (is_float_dtype(t.dtype)) {
            EXPECT_EQ(s.load_f32(n, t.shape).size(), std::size_t(t.numel())) << n;
        }
    }
    const fs::path io_file = fs::path(FASTVLM_SHARED_DIR) / "golden" / "tiny_vlm_io.safetensors";
    if (fs::exists(io_file)) {
        const TensorStore io = TensorStore::open(io_file);
        const auto ids = io.load_i64("input_ids", std::vector<Index>{1, 12});
        EXPECT_EQ(std::count(ids.begin(), ids.end(), -200), 1);
        EXPECT_EQ(io.at("pixel_values").shape, (std::vector<Index>{1, 3, 256, 256}));
    }
}

// ---- fuzz -------------------------------------------------------------------------------------------------
// 2000 mutations (byte flips, truncations, header-length edits, header splices) of a valid file:
// each must either open and read in bounds or throw fastvlm::Error; anything else fails the test.
TEST(SafeTensorsFuzz, MutatedFilesNeverCrash) {
    TempDir dir;
    std::vector<float> f(24);
    for (std::size_t i = 0; i < f.size(); ++i) f[i] = float(i) * 0.5f;
    std::vector<std::uint16_t> bf(10, 0x3f80);
    std::vector<std::int64_t> ids = {1, -200, 3};
    write_safetensors(dir / "seed.safetensors",
                      {{"model.w", DType::F32, {4, 6}, f.data()}, {"model.bf", DType::BF16, {2, 5}, bf.data()},
                       {"ids", DType::I64, {3}, ids.data()}},
                      {{"format", "pt"}});
    const std::string seed = read_bytes(dir / "seed.safetensors");
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, seed.data(), 8);
    ASSERT_LT(header_len, seed.size());

    std::mt19937_64 rng(12345);
    auto pick = [&](std::size_t n) { return std::size_t(rng() % std::max<std::size_t>(n, 1)); };
    const char interesting[] = {'"', '{', '}', '[', ']', ',', ':', '-', '0', '9', 'e', '.', ' ', '\0', '\xff'};
    const fs::path p = dir / "fuzz.safetensors";
    int opened = 0, rejected = 0;
    for (int iter = 0; iter < 2000; ++iter) {
        std::string b = seed;
        const int kind = int(rng() % 6);
        if (kind == 0) {  // truncate
            b.resize(pick(b.size()));
        } else if (kind == 1) {  // flip random bits anywhere
            for (int k = 0, n = 1 + int(rng() % 8); k < n; ++k) b[pick(b.size())] ^= char(1u << (rng() % 8));
        } else if (kind == 2) {  // structural characters into the header
            for (int k = 0, n = 1 + int(rng() % 4); k < n; ++k) b[8 + pick(header_len)] = interesting[pick(sizeof interesting)];
        } else if (kind == 3) {  // digits of offsets/shapes
            for (std::size_t i = 8; i < 8 + header_len; ++i)
                if (b[i] >= '0' && b[i] <= '9' && rng() % 6 == 0) b[i] = char('0' + rng() % 10);
        } else if (kind == 4) {  // header length field
            std::uint64_t n = header_len;
            const int m = int(rng() % 4);
            n = m == 0 ? n + 1 + rng() % 64 : m == 1 ? (n > 0 ? n - 1 - rng() % std::min<std::uint64_t>(n, 64) : 0)
                : m == 2 ? rng() : (rng() % 2 ? 0 : ~std::uint64_t(0));
            std::memcpy(b.data(), &n, 8);
        } else {  // delete or duplicate a span of the header
            const std::size_t at = 8 + pick(header_len), len = 1 + pick(16);
            if (rng() % 2) b.erase(at, std::min(len, b.size() - at));
            else b.insert(at, b.substr(at, len));
        }
        overwrite_bytes(p, b);
        try {
            const TensorStore s = TensorStore::open(p);
            const SafeTensorsFile& f0 = s.shards().at(0);
            const auto all = f0.bytes();
            for (const auto& n : s.names()) {
                const TensorRef& t = s.at(n);
                // Every view lies inside the data section.
                ASSERT_GE(t.data, all.data() + f0.data_offset()) << n;
                ASSERT_LE(t.data + t.nbytes, all.data() + all.size()) << n;
                ASSERT_EQ(t.nbytes, std::size_t(t.numel()) * dtype_size(t.dtype)) << n;
                if (is_float_dtype(t.dtype)) {
                    if (t.nbytes <= (std::size_t(64) << 20)) (void)s.load_f32(n, t.shape);
                } else {
                    (void)s.load_i64(n);
                }
                (void)s.bf16_data(n, t.shape);
            }
            ++opened;
        } catch (const fastvlm::Error& e) {
            EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << "error does not name the file: " << e.what();
            ++rejected;
        } catch (const std::exception& e) {
            ADD_FAILURE() << "iteration " << iter << ": non-fastvlm exception: " << e.what();
        }
    }
    EXPECT_EQ(opened + rejected, 2000);
    EXPECT_GT(rejected, 500) << "mutations should mostly break the header";
    EXPECT_GT(opened, 50) << "data-section flips should still open";
    std::printf("fuzz: %d opened, %d rejected\n", opened, rejected);
}
