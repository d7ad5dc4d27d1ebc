// Hostile input against the named limits (issue 16): every class ends in a fastvlm::Error that names
// the file and the limit, before the memory or time it asks for is spent. Runs under ASan + UBSan in
// the test command. docs/reliability.md lists the limits.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

#include "fastvlm/io/config.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/image.hpp"
#include "fastvlm/io/json.hpp"
#include "fastvlm/io/limits.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/text/tokenizer.hpp"
#include "support.hpp"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>

using namespace fastvlm;
using test_support::error_of;
namespace fs = std::filesystem;

namespace {

struct Dir : test_support::TempDir {
    explicit Dir(const std::string& name) : TempDir("limits_", name) {}
    fs::path operator/(const char* f) const { return path / f; }
};

void write(const fs::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary) << bytes;
}

std::string u64le(std::uint64_t n) {
    std::string s(8, '\0');
    std::memcpy(s.data(), &n, 8);
    return s;
}

std::string safetensors_with_header(const std::string& h) { return u64le(h.size()) + h; }

// A header of n one-byte U8 tensors t0..t{n-1}, data included.
std::string many_tensors(std::size_t n) {
    std::string h = "{";
    for (std::size_t i = 0; i < n; ++i) {
        h.append(i ? ",\"t" : "\"t").append(std::to_string(i)).append("\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[");
        h.append(std::to_string(i)).append(",").append(std::to_string(i + 1)).append("]}");
    }
    h += "}";
    return safetensors_with_header(h) + std::string(n, 'x');
}

std::string nested(std::size_t depth, const std::string& open = "[", const std::string& close = "]") {
    std::string s;
    for (std::size_t i = 0; i < depth; ++i) s += open;
    for (std::size_t i = 0; i < depth; ++i) s += close;
    return s;
}

void expect_has(const std::string& msg, std::initializer_list<std::string> needles) {
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message lacks '" << n << "': " << msg;
}

}  // namespace

// ---- JSON ---------------------------------------------------------------------------------------------
TEST(Json, DepthLimitAppliesToArraysAndObjects) {
    EXPECT_EQ(io::parse_json(nested(64), "x").dump().size(), 128u);
    expect_has(error_of([] { io::parse_json(nested(65), "doc.json"); }), {"doc.json", "nested deeper than 64"});
    expect_has(error_of([] { io::parse_json(nested(100000), "doc.json"); }), {"nested deeper than 64"});
    std::string obj;
    for (int i = 0; i < 200; ++i) obj += "{\"a\":";
    obj += "1" + std::string(200, '}');
    expect_has(error_of([&] { io::parse_json(obj, "o"); }), {"nested deeper than 64"});
    EXPECT_NO_THROW(io::parse_json(nested(200), "x", {.max_depth = 200}));
}

TEST(Json, DuplicatesRejectedOrKeptAsAsked) {
    expect_has(error_of([] { io::parse_json(R"({"a":1,"b":{"c":1,"c":2}})", "f"); }), {"f", "duplicate JSON key 'c'"});
    EXPECT_EQ(io::parse_json(R"({"a":1,"a":2})", "f", {.reject_duplicate_keys = false})["a"], 2);
    // Same DOM as nlohmann's own parser on an ordinary document.
    const std::string doc = R"({"x":[1,2.5,"s",null,true,{"y":[]}],"z":{"w":-3},"u":18446744073709551615})";
    EXPECT_EQ(io::parse_json(doc, "d"), nlohmann::json::parse(doc));
}

TEST(Json, ManyEntriesParseInLinearTime) {
    // 200,000 keys (the strict parser of the past was quadratic: 40,000 took 77 s). No timing assertion:
    // under a sanitizer this simply has to finish inside the test timeout.
    std::string doc = "{";
    for (int i = 0; i < 200000; ++i) doc += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":{}";
    doc += "}";
    EXPECT_EQ(io::parse_json(doc, "big").size(), 200000u);
}

TEST(Json, ErrorsNeverEchoUnboundedInput) {
    const std::string huge(1 << 20, 'a');
    const std::string e1 = error_of([&] { io::parse_json("{\"" + huge + "\":1,\"" + huge + "\":2}", "f"); });
    expect_has(e1, {"duplicate JSON key", "more bytes"});
    EXPECT_LT(e1.size(), 300u);
    const std::string e2 = error_of([&] { io::parse_json("[\"" + huge + "\" x]", "f"); });
    EXPECT_LE(e2.size(), detail::kMaxErrorMessageBytes + 64) << e2.substr(0, 200);
    EXPECT_EQ(io::brief_json(nlohmann::json(std::vector<int>(1000, 1))), "an array of 1000 elements");
    // The cut keeps whole UTF-8 characters.
    const std::string cut = detail::cap_message(std::string(5000, 'x') + std::string(3000, '\xC3') + "");
    EXPECT_LE(cut.size(), detail::kMaxErrorMessageBytes + 64);
}

// ---- files ----------------------------------------------------------------------------------------------
TEST(Files, ReadFileRefusesWhatIsNotARegularFileWithoutBlocking) {
    Dir d("files");
    write(d / "ok.txt", "hello");
    EXPECT_EQ(io::read_file(d / "ok.txt", 5), "hello");
    expect_has(error_of([&] { io::read_file(d / "ok.txt", 4); }), {"ok.txt", "4-byte limit"});
    expect_has(error_of([&] { io::read_file(d / "missing", 4); }), {"missing", "no such file"});
    expect_has(error_of([&] { io::read_file(d.path, 4); }), {"is a directory"});
    ASSERT_EQ(::mkfifo((d / "fifo").c_str(), 0600), 0);
    expect_has(error_of([&] { io::read_file(d / "fifo", 100); }), {"fifo", "FIFO"});  // no writer: must not wait
    fs::create_symlink(d / "loop2", d / "loop1");
    fs::create_symlink(d / "loop1", d / "loop2");
    expect_has(error_of([&] { io::read_file(d / "loop1", 100); }), {"loop1", "symlink loop"});
    expect_has(error_of([&] { io::read_file("/dev/zero", 100); }), {"/dev/zero", "character device"});
    EXPECT_TRUE(io::present(d / "loop1"));
    EXPECT_FALSE(io::present(d / "nothing"));
}

TEST(Files, ReadLineBoundsLongLinesAndEndlessInput) {
    std::istringstream in("short\n" + std::string(100, 'x') + "\nnext\nlast");
    std::string line;
    EXPECT_EQ(io::read_line(in, line, 10, "in"), io::LineStatus::ok);
    EXPECT_EQ(line, "short");
    EXPECT_EQ(io::read_line(in, line, 10, "in"), io::LineStatus::too_long);
    EXPECT_TRUE(line.empty());
    EXPECT_EQ(io::read_line(in, line, 10, "in"), io::LineStatus::ok);
    EXPECT_EQ(line, "next");
    EXPECT_EQ(io::read_line(in, line, 10, "in"), io::LineStatus::ok);
    EXPECT_EQ(line, "last");
    EXPECT_EQ(io::read_line(in, line, 10, "in"), io::LineStatus::eof);
    std::ifstream zero("/dev/zero", std::ios::binary);  // a line that never ends
    expect_has(error_of([&] { io::read_line(zero, line, 1000, "/dev/zero", 1 << 20); }), {"/dev/zero", "without a newline"});
}

// ---- safetensors ---------------------------------------------------------------------------------------
TEST(LoadLimits, SafetensorsHeaderDepthCountAndSize) {
    Dir d("st");
    const fs::path p = d / "model.safetensors";
    write(p, safetensors_with_header("{\"__metadata__\":" + nested(100000, "{\"a\":", "}") + "}"));
    expect_has(error_of([&] { io::SafeTensorsFile::open(p); }), {p.string(), "nested deeper than 64"});
    write(p, many_tensors(200));
    EXPECT_EQ(io::SafeTensorsFile::open(p).size(), 200u);
    expect_has(error_of([&] { io::SafeTensorsFile::open(p, {.max_tensors = 100}); }), {p.string(), "100-tensor limit"});
    expect_has(error_of([&] { io::TensorStore::open(d.path, {.max_tensors = 100}); }), {"100-tensor limit"});
    expect_has(error_of([&] { io::SafeTensorsFile::open(p, {.max_header_bytes = 1000}); }), {"1000-byte limit"});
    // 100,000 entries: refused by the default limit (65,536) after a linear-time parse.
    write(p, many_tensors(100000));
    expect_has(error_of([&] { io::SafeTensorsFile::open(p); }), {"65536-tensor limit"});
    write(p, many_tensors(60000));
    EXPECT_EQ(io::TensorStore::open(d.path).size(), 60000u);
}

TEST(LoadLimits, LongTensorNamesAreShortenedInMessages) {
    Dir d("names");
    const fs::path p = d / "model.safetensors";
    const std::string name(1 << 20, 'n');
    write(p, safetensors_with_header("{\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,2]}}") + "xx");
    const std::string e = error_of([&] { io::SafeTensorsFile::open(p); });
    expect_has(e, {"more bytes", "needs 4 bytes"});
    EXPECT_LT(e.size(), 1000u);
}

TEST(LoadLimits, ModelFilesThatAreNotRegularFiles) {
    Dir d("nonreg");
    ASSERT_EQ(::mkfifo((d / "model.safetensors").c_str(), 0600), 0);
    expect_has(error_of([&] { io::TensorStore::open(d.path); }), {"model.safetensors", "FIFO"});
    fs::remove(d / "model.safetensors");
    fs::create_directory(d / "model.safetensors");
    expect_has(error_of([&] { io::TensorStore::open(d.path); }), {"model.safetensors", "is a directory"});
    fs::remove(d / "model.safetensors");
    fs::create_symlink(d / "model.safetensors", d / "model.safetensors");
    expect_has(error_of([&] { io::TensorStore::open(d.path); }), {"model.safetensors", "symlink loop"});
    expect_has(error_of([&] { io::TensorStore::open(d / "model.safetensors"); }), {"model.safetensors", "symlink loop"});
    fs::remove(d / "model.safetensors");
    fs::create_symlink("/dev/zero", d / "model.safetensors");
    expect_has(error_of([&] { io::TensorStore::open(d.path); }), {"model.safetensors", "character device"});
    // index.json: nested, a FIFO shard
    fs::remove(d / "model.safetensors");
    write(d / "model.safetensors.index.json", "{\"weight_map\":" + nested(1000, "{\"a\":", "}") + "}");
    expect_has(error_of([&] { io::TensorStore::open(d.path); }), {"index.json", "nested deeper than 64"});
    write(d / "model.safetensors.index.json", R"({"weight_map":{"a":"shard.safetensors"}})");
    ASSERT_EQ(::mkfifo((d / "shard.safetensors").c_str(), 0600), 0);
    expect_has(error_of([&] { io::TensorStore::open(d.path); }), {"shard.safetensors", "FIFO"});
}

// ---- config.json ------------------------------------------------------------------------------------------
TEST(LoadLimits, ConfigDepthImageSizeAndFileKind) {
    Dir d("cfg");
    nlohmann::json cfg = nlohmann::json::parse(io::read_file(test_support::kTinyDir / "config.json", 1 << 20));
    write(d / "config.json", cfg.dump());
    EXPECT_NO_THROW(io::ModelConfig::load(d.path));
    const int stride = io::ModelConfig::load(d.path).vision.total_stride();
    const int big = 4096 / stride * stride;
    cfg["mm_vision_tower"] = "mobileclip_goldensmall_" + std::to_string(big);
    if (cfg.contains("image_size")) cfg["image_size"] = big;
    if (cfg.contains("vision_config")) cfg["vision_config"]["image_size"] = big;
    write(d / "config.json", cfg.dump());
    expect_has(error_of([&] { io::ModelConfig::load(d.path); }), {"config.json", "image_size", "max_image_size"});
    EXPECT_NO_THROW(io::ModelConfig::load(d.path, {.max_image_size = 4096}));
    write(d / "config.json", "{\"x\":" + nested(100000) + "}");
    expect_has(error_of([&] { io::ModelConfig::load(d.path); }), {"config.json", "nested deeper than 64 levels (limit max_json_depth)"});
    std::string empties = "[";
    for (int i = 0; i < 1000000; ++i) empties += i ? ",{}" : "{}";
    write(d / "config.json", empties + "]");
    expect_has(error_of([&] { io::ModelConfig::load(d.path); }), {"config.json"});
    fs::remove(d / "config.json");
    ASSERT_EQ(::mkfifo((d / "config.json").c_str(), 0600), 0);
    expect_has(error_of([&] { io::ModelConfig::load(d.path); }), {"config.json", "FIFO"});
}

// ---- tokenizer files ---------------------------------------------------------------------------------------
TEST(LoadLimits, TokenizerFiles) {
    const fs::path tiny = fs::path(FASTVLM_TEST_DATA_DIR) / "tokenizer_tiny";
    Dir d("tok");
    for (const char* f : {"vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"}) fs::copy_file(tiny / f, d / f);
    EXPECT_NO_THROW(text::Tokenizer::load(d.path));
    write(d / "tokenizer_config.json", "{\"a\":" + nested(100000) + "}");
    expect_has(error_of([&] { text::Tokenizer::load(d.path); }), {"tokenizer_config.json", "nested deeper than 64"});
    fs::copy_file(tiny / "tokenizer_config.json", d / "tokenizer_config.json", fs::copy_options::overwrite_existing);
    fs::rename(d / "vocab.json", d / "vocab.saved");
    write(d / "tokenizer.json", "{\"model\":" + nested(100000, "{\"a\":", "}") + "}");  // used when vocab.json is absent
    expect_has(error_of([&] { text::Tokenizer::load(d.path); }), {"tokenizer.json", "nested deeper than 64 levels (limit max_json_depth)"});
    fs::remove(d / "tokenizer.json");
    ASSERT_EQ(::mkfifo((d / "vocab.json").c_str(), 0600), 0);
    expect_has(error_of([&] { text::Tokenizer::load(d.path); }), {"vocab.json", "FIFO"});
    fs::remove(d / "vocab.json");
    fs::create_symlink(d / "vocab.json", d / "vocab.json");
    expect_has(error_of([&] { text::Tokenizer::load(d.path); }), {"vocab.json", "symlink loop"});
    fs::remove(d / "vocab.json");
    fs::rename(d / "vocab.saved", d / "vocab.json");
    // Many added tokens: a linear-time load, and a limit.
    nlohmann::json at = nlohmann::json::object();
    const auto base = text::Tokenizer::load(d.path).size();
    for (int i = 0; i < 5000; ++i) at["<extra_" + std::to_string(i) + ">"] = int(base) + 100 + i;
    write(d / "added_tokens.json", at.dump());
    expect_has(error_of([&] { text::Tokenizer::load(d.path); }), {"added tokens", "4096 limit"});
    EXPECT_NO_THROW(text::Tokenizer::load(d.path, {.max_added_tokens = 10000}));
}

// ---- images ------------------------------------------------------------------------------------------------
TEST(ImageLimitsTest, JpegScanCountAndFileKinds) {
    // A baseline JPEG written by stb has 1 scan; a JPEG whose scan header repeats is counted before decoding.
    const io::Image img = test_support::test_image(32, 24);
    std::vector<std::uint8_t> jpg;
    stbi_write_jpg_to_func(
        [](void* ctx, void* data, int n) {
            auto* v = static_cast<std::vector<std::uint8_t>*>(ctx);
            for (int i = 0; i < n; ++i) v->push_back(static_cast<const std::uint8_t*>(data)[i]);
        },
        &jpg, img.width, img.height, 3, img.rgb.data(), 90);
    EXPECT_NO_THROW(io::load_image_from_memory(jpg, "one-scan.jpg"));
    expect_has(error_of([&] { io::load_image_from_memory(jpg, "one-scan.jpg", {.max_jpeg_scans = 0}); }),
               {"one-scan.jpg", "more than 0 scans", "max_jpeg_scans"});
    // 5,000 empty scans spliced before EOI: refused up front, in bounded time.
    std::vector<std::uint8_t> many(jpg.begin(), jpg.end() - 2);
    const std::uint8_t sos[] = {0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00};
    for (int i = 0; i < 5000; ++i) many.insert(many.end(), sos, sos + sizeof sos);
    many.push_back(0xFF), many.push_back(0xD9);
    expect_has(error_of([&] { io::load_image_from_memory(many, "scans.jpg"); }), {"scans.jpg", "more than 100 scans"});

    Dir d("img");
    fs::create_directory(d / "dir.png");
    expect_has(error_of([&] { io::load_image(d / "dir.png"); }), {"dir.png", "is a directory"});
    ASSERT_EQ(::mkfifo((d / "fifo.png").c_str(), 0600), 0);
    expect_has(error_of([&] { io::load_image(d / "fifo.png"); }), {"fifo.png", "FIFO"});
    expect_has(error_of([&] { io::load_image("/dev/zero"); }), {"/dev/zero", "character device"});
    write(d / "big.png", std::string(2000, 'x'));
    expect_has(error_of([&] { io::load_image(d / "big.png", {.max_file_bytes = 1000}); }), {"big.png", "1000-byte limit"});
}

TEST(ImageLimitsTest, TruncatedBmpIsRefusedBeforeDecoding) {
    // 54-byte header declaring 8,388,615 x 5 pixels at 24 bits, then 100 bytes: stb would decode 120 MB of zeros.
    std::vector<std::uint8_t> bmp(154, 0);
    auto le32 = [&](std::size_t i, std::uint32_t v) {
        for (int k = 0; k < 4; ++k) bmp[i + std::size_t(k)] = std::uint8_t(v >> (8 * k));
    };
    bmp[0] = 'B', bmp[1] = 'M';
    le32(2, 154), le32(10, 54), le32(14, 40), le32(18, 8388615), le32(22, 5);
    bmp[26] = 1, bmp[28] = 24;
    expect_has(error_of([&] { io::load_image_from_memory(bmp, "lying.bmp"); }), {"lying.bmp", "BMP is truncated"});
    // The same header with its rows present decodes (a 4 x 5 image).
    le32(18, 4);
    bmp.resize(54 + 5 * 12);
    EXPECT_EQ(io::load_image_from_memory(bmp, "ok.bmp").width, 4);
}

TEST(LoadLimits, SparseTokenIdsAreRefused) {
    Dir d("sparse");
    write(d / "vocab.json", R"({"a": 16777215})");
    write(d / "merges.txt", "#version: 0.2\n");
    expect_has(error_of([&] { text::Tokenizer::load(d.path); }), {"vocab.json", "ids must be dense"});
}

// io/limits.hpp: every limit by name, as --limit and Model(limits=...) set them.
TEST(LimitsByName, SetParsesSizesAndChecksRanges) {
    io::Limits lim;
    io::set_limits(lim, "max_image_size=4096,max-pixels=256M,,max_jpeg_scans=7,max_header_bytes=1Gi,max_file_bytes=3k");
    EXPECT_EQ(lim.load.max_image_size, 4096);
    EXPECT_EQ(lim.image.max_pixels, 256ll << 20);
    EXPECT_EQ(lim.image.max_jpeg_scans, 7);
    EXPECT_EQ(lim.load.max_header_bytes, std::size_t(1) << 30);
    EXPECT_EQ(lim.image.max_file_bytes, 3u * 1024);
    EXPECT_EQ(lim.load.max_json_depth, io::LoadLimits{}.max_json_depth);  // the others keep their defaults
    // Every field is reachable by its name and reads back what was set.
    for (const auto& l : io::kLimits) {
        io::Limits x;
        io::set_limit(x, l.name, std::to_string(l.hi));
        EXPECT_EQ(l.get(x), l.hi) << l.name;
        io::set_limit(x, l.name, std::to_string(l.lo));
        EXPECT_EQ(l.get(x), l.lo) << l.name;
    }
    // The table's defaults are the structs' defaults.
    EXPECT_EQ(io::limit_info("max_json_depth").get(io::Limits{}), std::uint64_t(io::LoadLimits{}.max_json_depth));
    EXPECT_EQ(io::limit_info("max_padded_pixels").get(io::Limits{}), std::uint64_t(io::ImageLimits{}.max_padded_pixels));
}

TEST(LimitsByName, BadNamesAndValuesNameTheLimit) {
    io::Limits lim;
    auto err = [&](const char* spec) { return error_of([&] { io::set_limits(lim, spec); }); };
    EXPECT_NE(err("nope=1").find("unknown limit 'nope' (known: max_json_file_bytes"), std::string::npos);
    EXPECT_NE(err("max_image_size=63").find("limit max_image_size: 63 is outside 64..16384"), std::string::npos);
    EXPECT_NE(err("max_json_depth=1001").find("outside 1..1000"), std::string::npos);
    EXPECT_NE(err("max_pixels=-1").find("limit max_pixels: '-1' is not a non-negative integer"), std::string::npos);
    EXPECT_NE(err("max_pixels=1X").find("'1X'"), std::string::npos);
    EXPECT_NE(err("max_pixels=1KK").find("'1KK'"), std::string::npos);
    EXPECT_NE(err("max_pixels=").find("''"), std::string::npos);
    EXPECT_NE(err("max_pixels=99999999999999999999").find("is not"), std::string::npos);  // overflows 64 bits
    EXPECT_NE(err("max_pixels=99999999999T").find("is not"), std::string::npos);          // overflows after the suffix
    EXPECT_NE(err("max_pixels").find("expected NAME=VALUE"), std::string::npos);
    EXPECT_LE(err(std::string(100000, 'x').c_str()).size(), 4096u);  // a huge name is not echoed whole
    EXPECT_EQ(lim.image.max_pixels, io::ImageLimits{}.max_pixels);  // nothing was set by the failures
    EXPECT_NE(io::describe_limits().find("max_jpeg_scans"), std::string::npos);
}
