// Unit tests of the Qwen2 tokenizer on the tiny hand-made vocabulary in tests/data/tokenizer_tiny
// (tests/tokenizer/make_tiny_vocab.py). Conformance with the real vocabulary: tests/tokenizer/.
#include "fastvlm/text/tokenizer.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

namespace fs = std::filesystem;
using fastvlm::Error;
using fastvlm::text::Tokenizer;
namespace detail = fastvlm::text::detail;
using Ids = std::vector<std::int32_t>;
using Strs = std::vector<std::string>;

namespace {

const fs::path kTiny = fs::path(FASTVLM_TEST_DATA_DIR) / "tokenizer_tiny";

const Tokenizer& tiny() {
    static const Tokenizer t = Tokenizer::load(kTiny);
    return t;
}
const Tokenizer& tiny_json() {
    static const Tokenizer t = Tokenizer::from_tokenizer_json(kTiny / "json" / "tokenizer.json");
    return t;
}

std::int32_t id(const Tokenizer& t, std::string_view token) {
    const auto v = t.token_id(token);
    EXPECT_TRUE(v.has_value()) << token;
    return v.value_or(-1);
}

// Message of the fastvlm::Error thrown by f, or "" if none.
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

bool valid_utf8(std::string_view s) {
    try {
        detail::check_utf8(s, "s");
        return true;
    } catch (const Error&) {
        return false;
    }
}

// A scratch folder removed at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() /
               ("fastvlm_tok_" + std::to_string(std::random_device{}()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::create_directories(path);
    }
    ~TempDir() { fs::remove_all(path); }
    void write(const std::string& name, const std::string& content) const {
        std::ofstream(path / name, std::ios::binary) << content;
    }
    void copy_tiny(const std::string& name) const { fs::copy_file(kTiny / name, path / name); }
};

}  // namespace

// ---- pre-tokenizer: the Qwen2 regex, alternative by alternative ----

TEST(TokenizerPretokenize, RegexAlternatives) {
    const std::vector<std::pair<std::string, Strs>> cases = {
        {"Hello world", {"Hello", " world"}},
        {"I'm don't", {"I", "'m", " don", "'t"}},
        {"HE'LL WE'VE it'S they'Re I'D", {"HE", "'LL", " WE", "'VE", " it", "'S", " they", "'Re", " I", "'D"}},
        {"'rx 'l 'x", {"'rx", " '", "l", " '", "x"}},
        {"abc123def", {"abc", "1", "2", "3", "def"}},
        {"a  b", {"a", " ", " b"}},
        {"a   ", {"a", "   "}},
        {"a \n\n b", {"a", " \n\n", " b"}},
        {"x\r\n\r\ny", {"x", "\r\n\r\n", "y"}},
        {"!!!\n\nok", {"!!!\n\n", "ok"}},
        {" ?! x", {" ?!", " x"}},
        {"\tword", {"\tword"}},
        {"(x)", {"(x", ")"}},
        {"\n\nword", {"\n\n", "word"}},
        {"1,000.5", {"1", ",", "0", "0", "0", ".", "5"}},
        {"你好世界。", {"你好世界", "。"}},
        {"\xD9\xA3\xD9\xA4", {"\xD9\xA3", "\xD9\xA4"}},        // Arabic-Indic digits are \p{N}
        {"a\xE3\x80\x80" "b", {"a", "\xE3\x80\x80" "b"}},        // U+3000 is \s, and [^\r\n\pL\pN] before a letter
        {"a \xC2\x85", {"a", " \xC2\x85"}},                     // U+0085 is \s for Oniguruma (not for JS)
        {"x'\xC5\xBF", {"x", "'\xC5\xBF"}},                     // (?i) folds U+017F long s to s
        {"", {}},
    };
    for (const auto& [in, want] : cases) EXPECT_EQ(detail::pretokenize(in), want) << '"' << in << '"';
}

TEST(TokenizerPretokenize, PiecesTileTheInput) {
    std::mt19937 rng(7);
    const Strs atoms = {"a",  "Z", "1", " ",        "  ",               "\n",       "\r\n",        "\t",
                        "'",  "'s", "!", "你", "\xC2\xA0", "\xF0\x9F\x98\x80", "\xCC\x81", "\xE2\x80\xA8"};
    for (int n = 0; n < 500; ++n) {
        std::string s;
        const int len = static_cast<int>(rng() % 20);
        for (int i = 0; i < len; ++i) s += atoms[rng() % atoms.size()];
        std::string joined;
        for (const auto& p : detail::pretokenize(s)) {
            EXPECT_FALSE(p.empty());
            joined += p;
        }
        EXPECT_EQ(joined, s);
    }
}

// ---- byte-level alphabet and UTF-8 ----

TEST(TokenizerByteLevel, AlphabetIsABijection) {
    std::string all;
    for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
    const std::string enc = detail::byte_level_encode(all);
    EXPECT_EQ(detail::byte_level_decode(enc), all);
    EXPECT_EQ(detail::byte_level_encode(" "), "\xC4\xA0");   // Ġ
    EXPECT_EQ(detail::byte_level_encode("\n"), "\xC4\x8A");  // Ċ
    EXPECT_EQ(detail::byte_level_encode("a"), "a");
    EXPECT_EQ(detail::byte_level_decode("\xE2\x82\xAC"), std::nullopt);  // € is outside the alphabet
}

TEST(TokenizerUtf8, ErrorsNameTheByteOffset) {
    EXPECT_NE(error_of([] { detail::check_utf8("abc\xFF", "text"); }).find("byte offset 3"), std::string::npos);
    EXPECT_NE(error_of([] { detail::check_utf8("ab\xE4\xBD", "text"); }).find("truncated sequence at byte offset 2"),
              std::string::npos);
    // overlong, surrogate
    EXPECT_NE(error_of([] { detail::check_utf8("\xC0\xAF", "text"); }).find("offset 0"), std::string::npos);
    EXPECT_NE(error_of([] { detail::check_utf8("x\xED\xA0\x80", "text"); }).find("offset 1"), std::string::npos);
    EXPECT_NE(error_of([] { detail::check_utf8("\xF4\x90\x80\x80", "text"); }), "");  // > U+10FFFF
    EXPECT_EQ(error_of([] { detail::check_utf8("h\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80", "text"); }), "");
}

TEST(TokenizerUtf8, SanitizeReplacesMaximalSubparts) {
    const std::string r = "\xEF\xBF\xBD";
    EXPECT_EQ(Tokenizer::sanitize_utf8("a\xE4\xBD" "b"), "a" + r + "b");     // one truncated sequence
    EXPECT_EQ(Tokenizer::sanitize_utf8("\xC0\xAF"), r + r);                   // two invalid bytes
    EXPECT_EQ(Tokenizer::sanitize_utf8("\xED\xA0\x80"), r + r + r);           // surrogate: 3 (as Python)
    EXPECT_EQ(Tokenizer::sanitize_utf8("\xF0\x9F\x98"), r);                   // truncated at the end
    EXPECT_EQ(Tokenizer::sanitize_utf8("ok \xE4\xBD\xA0"), "ok \xE4\xBD\xA0");
}

// ---- encode on the tiny vocabulary ----

TEST(TokenizerEncode, MergesByRank) {
    const Tokenizer& t = tiny();
    EXPECT_EQ(t.encode("hello world"), (Ids{id(t, "hello"), id(t, "\xC4\xA0world")}));
    EXPECT_EQ(t.encode("hel"), (Ids{id(t, "he"), 'l'}));  // "h e" (rank 0) beats "e l" (rank 15)
    EXPECT_EQ(t.encode("el"), (Ids{id(t, "el")}));
    EXPECT_EQ(t.encode("aaa"), (Ids{id(t, "aa"), 'a'}));  // leftmost first on equal rank
    EXPECT_EQ(t.encode("aaaaa"), (Ids{id(t, "aa"), id(t, "aa"), 'a'}));
    EXPECT_EQ(t.encode("it's"), (Ids{'i', 't', id(t, "'s")}));
    EXPECT_EQ(t.encode("\n\n\n"), (Ids{id(t, "\xC4\x8A\xC4\x8A"), id(t, "\xC4\x8A")}));
    // 你 = E4 BD A0 has a token, 好 = E5 A5 BD does not
    EXPECT_EQ(t.encode("你好"), (Ids{id(t, "\xC3\xA4\xC2\xBD\xC5\x82"), 0xE5, 0xA5, 0xBD}));
    EXPECT_TRUE(t.encode("").empty());
}

TEST(TokenizerEncode, LongWordsUseTheHeapPathWithSameResult) {
    const Tokenizer& t = tiny();
    const Ids ids = t.encode(std::string(301, 'a'));  // one pre-token of 301 symbols
    ASSERT_EQ(ids.size(), 151u);
    for (std::size_t i = 0; i < 150; ++i) EXPECT_EQ(ids[i], id(t, "aa"));
    EXPECT_EQ(ids.back(), 'a');
    std::string hellos;
    for (int i = 0; i < 100; ++i) hellos += "hello";
    EXPECT_EQ(t.encode(hellos), Ids(100, id(t, "hello")));
}

TEST(TokenizerEncode, HeapAndScanBpeAgreeOnRandomMergeTables) {
    std::mt19937 rng(123);
    for (int trial = 0; trial < 20; ++trial) {
        // alphabet 0..3; merges build ids 4.. from random existing pairs, random ranks
        detail::MergeTable table;
        table.reserve(64);
        std::int32_t next_id = 4;
        std::vector<std::int32_t> ranks(40);
        for (std::size_t r = 0; r < ranks.size(); ++r) ranks[r] = static_cast<std::int32_t>(r);
        std::shuffle(ranks.begin(), ranks.end(), rng);
        for (std::int32_t r : ranks) {
            const auto a = static_cast<std::int32_t>(rng() % static_cast<unsigned>(next_id));
            const auto b = static_cast<std::int32_t>(rng() % static_cast<unsigned>(next_id));
            if (table.find(a, b)) continue;
            table.insert(a, b, {r, next_id++});
        }
        for (int s = 0; s < 50; ++s) {
            std::vector<std::int32_t> sym(1 + rng() % 200);
            for (auto& v : sym) v = static_cast<std::int32_t>(rng() % 4);
            auto a = sym, b = sym;
            detail::bpe_scan(table, a);
            detail::bpe_heap(table, b);
            ASSERT_EQ(a, b) << "trial " << trial << " sample " << s;
        }
    }
}

TEST(TokenizerEncode, SpecialTokensAreMatchedBeforeBpe) {
    const Tokenizer& t = tiny();
    const std::int32_t start = 273, end = 274, eot = 272;
    EXPECT_EQ(t.encode("<|im_start|>hello<|im_end|>"), (Ids{start, id(t, "hello"), end}));
    EXPECT_EQ(t.encode("<|im_end|><|im_end|><|endoftext|>"), (Ids{end, end, eot}));
    EXPECT_EQ(t.encode("a<|im_end|> world"), (Ids{'a', end, id(t, "\xC4\xA0world")}));
    // a partial token is plain text
    const Ids partial = t.encode("<|im_end");
    EXPECT_EQ(std::count(partial.begin(), partial.end(), end), 0);
    EXPECT_EQ(t.decode(partial), "<|im_end");
    // parse_special=false: specials become text, the non-special added token is still matched
    const Ids plain = t.encode("<|im_start|>hello<tool>", false);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), start), 0);
    EXPECT_EQ(plain.back(), 275);
    EXPECT_EQ(t.decode(plain), "<|im_start|>hello<tool>");
}

TEST(TokenizerEncode, AddedTokenLongestMatchAndStrip) {
    const Tokenizer& t = tiny_json();
    EXPECT_EQ(t.encode("<tool>!"), (Ids{277}));
    EXPECT_EQ(t.encode("<tool>?"), (Ids{275, '?'}));
    EXPECT_EQ(t.encode("a <mask>  b"), (Ids{'a', 276, 'b'}));  // <mask> has lstrip and rstrip
    EXPECT_EQ(tiny().encode("hello world <|im_end|>"), t.encode("hello world <|im_end|>"));
}

TEST(TokenizerEncode, NfcNormalization) {
    const Tokenizer& t = tiny();
    EXPECT_EQ(t.encode("e\xCC\x81"), t.encode("\xC3\xA9"));                   // e + U+0301 -> é
    EXPECT_EQ(t.encode("\xE2\x84\xAB"), t.encode("\xC3\x85"));               // Å (U+212B) -> Å
    EXPECT_EQ(t.encode("\xE1\x84\x80\xE1\x85\xA1"), t.encode("\xEA\xB0\x80"));  // jamo -> 가
    EXPECT_EQ(t.decode(t.encode("Cafe\xCC\x81")), "Caf\xC3\xA9");
    // NFC is applied after added tokens are split off, per section
    EXPECT_EQ(t.encode("e<|im_end|>\xCC\x81"), (Ids{'e', 274, 0xCC, 0x81}));
}

TEST(TokenizerEncode, InvalidUtf8Throws) {
    const std::string msg = error_of([] { tiny().encode("abc\xE4\xBD" "d"); });
    EXPECT_NE(msg.find("not valid UTF-8"), std::string::npos) << msg;
    EXPECT_NE(msg.find("byte offset 3"), std::string::npos) << msg;
}

TEST(TokenizerEncode, TokenizerJsonMatchesFolder) {
    const Strs texts = {"hello world", "it's aaa\n\n\n", "你好 <|im_start|>x<|im_end|>", "  hello  world  ",
                        "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9", "e\xCC\x81"};
    for (const auto& s : texts) EXPECT_EQ(tiny().encode(s), tiny_json().encode(s)) << s;
}

TEST(TokenizerEncode, ConcurrentCallsAgree) {
    const Tokenizer& t = tiny();
    const std::string text = "hello world, it's 你好 <|im_end|> aaa\n\n";
    const Ids want = t.encode(text);
    std::vector<Ids> got(2);
    std::vector<std::thread> th;
    for (int k = 0; k < 2; ++k)
        th.emplace_back([&, k] {
            for (int i = 0; i < 200; ++i) got[static_cast<std::size_t>(k)] = t.encode(text);
        });
    for (auto& x : th) x.join();
    EXPECT_EQ(got[0], want);
    EXPECT_EQ(got[1], want);
}

// ---- vocabulary queries ----

TEST(TokenizerVocab, SizeIdsAndFlags) {
    const Tokenizer& t = tiny();
    EXPECT_EQ(t.size(), 276u);  // 256 bytes + 16 merges + 4 added
    EXPECT_EQ(tiny_json().size(), 278u);
    EXPECT_EQ(t.token_id("<|im_end|>"), 274);
    EXPECT_EQ(t.token_id("\xC4\xA0world"), 264);  // 9th merge
    EXPECT_EQ(t.token_id("nope"), std::nullopt);
    EXPECT_EQ(t.token_bytes(id(t, "\xC4\xA0world")), " world");
    EXPECT_EQ(t.token_bytes(272), "<|endoftext|>");
    EXPECT_EQ(t.token_bytes(0x0A), "\n");
    EXPECT_TRUE(t.is_special(272));
    EXPECT_TRUE(t.is_special(274));
    EXPECT_FALSE(t.is_special(275));  // <tool> is added but not special
    EXPECT_FALSE(t.is_special(0));
    EXPECT_FALSE(t.is_special(-1));
    EXPECT_FALSE(t.is_special(100000));
    EXPECT_NE(error_of([&] { t.token_bytes(276); }).find("276"), std::string::npos);
    EXPECT_NE(error_of([&] { t.token_bytes(-3); }), "");
}

// ---- decode ----

TEST(TokenizerDecode, RoundTrip) {
    const Tokenizer& t = tiny();
    const Strs texts = {"hello world", "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
                        "你好，世界", "مرحبا بالعالم", "नमस्ते दुनिया",
                        "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // ZWJ family
                        "<|im_start|>user\nhi<|im_end|>", "it's 42!", std::string("nul\0byte", 8)};
    for (const auto& s : texts) {
        EXPECT_EQ(t.decode(t.encode(s)), s) << s;
        EXPECT_EQ(tiny_json().decode(tiny_json().encode(s)), s) << s;
    }
}

TEST(TokenizerDecode, SkipSpecialAndErrors) {
    const Tokenizer& t = tiny();
    const Ids ids = t.encode("<|im_start|>hello<tool><|im_end|>");
    EXPECT_EQ(t.decode(ids, true), "hello<tool>");
    EXPECT_EQ(t.decode(ids, false), "<|im_start|>hello<tool><|im_end|>");
    const Ids bad = {'a', 999};
    EXPECT_NE(error_of([&] { t.decode(bad); }).find("999"), std::string::npos);
    const Ids partial = {0xE4, 0xBD, 'a'};  // byte tokens: truncated sequence then 'a'
    EXPECT_EQ(t.decode(partial), "\xEF\xBF\xBD" "a");
}

TEST(TokenizerDecode, StreamNeverEmitsPartialCharacters) {
    const Tokenizer& t = tiny();
    const std::string text = "h\xC3\xA9 你好 \xF0\x9F\x98\x80\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 "
                             "مرحبا <|im_end|>नमस्ते";
    const Ids ids = t.encode(text);
    for (bool skip : {true, false}) {
        Tokenizer::StreamDecoder dec(t, skip);
        std::string out;
        int held = 0;
        for (std::int32_t i : ids) {
            const std::string piece = dec.push(i);
            EXPECT_TRUE(valid_utf8(piece)) << "token " << i;
            if (piece.empty()) ++held;
            out += piece;
        }
        out += dec.flush();
        EXPECT_EQ(out, t.decode(ids, skip));
        EXPECT_GT(held, 5);  // multi-byte characters really were split over byte tokens
    }
}

TEST(TokenizerDecode, StreamInvalidAndTruncatedBytes) {
    const Tokenizer& t = tiny();
    Tokenizer::StreamDecoder dec(t);
    EXPECT_EQ(dec.push(0xE4), "");
    EXPECT_EQ(dec.push(0xBD), "");
    EXPECT_EQ(dec.push('a'), "\xEF\xBF\xBD" "a");  // E4 BD cannot be completed by 'a'
    EXPECT_EQ(dec.push(0xF0), "");
    EXPECT_EQ(dec.push(0x9F), "");
    EXPECT_EQ(dec.push(274), "");  // <|im_end|> skipped: the pending bytes stay pending
    EXPECT_EQ(dec.push(0x98), "");
    EXPECT_EQ(dec.push(0x80), "\xF0\x9F\x98\x80");
    EXPECT_EQ(dec.push(0xFF), "\xEF\xBF\xBD");
    EXPECT_EQ(dec.push(0xE4), "");
    EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD");
    EXPECT_EQ(dec.flush(), "");
    EXPECT_NE(error_of([&] { dec.push(5000); }), "");
}

// ---- loading and bad files ----

TEST(TokenizerLoad, FolderFallsBackToTokenizerJson) {
    const Tokenizer t = Tokenizer::load(kTiny / "json");
    EXPECT_EQ(t.size(), 278u);
    EXPECT_EQ(t.encode("<tool>!"), (Ids{277}));
}

TEST(TokenizerLoad, AddedTokensJsonWithSpecialTokensMap) {
    TempDir d;
    d.copy_tiny("vocab.json");
    d.copy_tiny("merges.txt");
    d.copy_tiny("added_tokens.json");
    d.write("special_tokens_map.json",
            R"({"eos_token": {"content": "<|endoftext|>"},
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})");
    const Tokenizer t = Tokenizer::load(d.path);
    EXPECT_EQ(t.size(), 276u);
    EXPECT_TRUE(t.is_special(272) && t.is_special(273) && t.is_special(274));
    EXPECT_FALSE(t.is_special(275));
    EXPECT_EQ(t.encode("<|im_start|>hello"), (Ids{273, id(t, "hello")}));
}

TEST(TokenizerLoad, MissingFilesNameThem) {
    TempDir d;
    EXPECT_NE(error_of([&] { Tokenizer::load(d.path / "nope"); }).find("does not exist"), std::string::npos);
    EXPECT_NE(error_of([&] { Tokenizer::load(d.path); }).find("neither vocab.json"), std::string::npos);
    d.copy_tiny("vocab.json");
    EXPECT_NE(error_of([&] { Tokenizer::load(d.path); }).find("merges.txt is missing"), std::string::npos);
    EXPECT_NE(error_of([&] { Tokenizer::from_tokenizer_json(d.path / "tokenizer.json"); }).find("cannot open"),
              std::string::npos);
}

TEST(TokenizerLoad, CorruptFilesNameTheFile) {
    auto folder_error = [](const std::string& vocab, const std::string& merges, const std::string& extra_name = "",
                           const std::string& extra = "") {
        TempDir d;
        d.write("vocab.json", vocab);
        d.write("merges.txt", merges);
        if (!extra_name.empty()) d.write(extra_name, extra);
        return error_of([&] { Tokenizer::load(d.path); });
    };
    const std::string v = R"({"a": 0, "b": 1, "ab": 2})";
    EXPECT_EQ(folder_error(v, "#version: 0.2\na b\n"), "");
    std::string e = folder_error("{\"a\": 0,", "a b\n");
    EXPECT_NE(e.find("vocab.json is not valid JSON"), std::string::npos) << e;
    e = folder_error(R"({"a": "zero"})", "");
    EXPECT_NE(e.find("vocab.json"), std::string::npos) << e;
    EXPECT_NE(e.find("not an integer"), std::string::npos) << e;
    e = folder_error(R"({"a": 0, "b": 0})", "");
    EXPECT_NE(e.find("used by two tokens"), std::string::npos) << e;
    e = folder_error(R"({"a": -4})", "");
    EXPECT_NE(e.find("out of range"), std::string::npos) << e;
    e = folder_error(v, "#version: 0.2\na c\n");
    EXPECT_NE(e.find("merges.txt:2"), std::string::npos) << e;
    EXPECT_NE(e.find("'c'"), std::string::npos) << e;
    e = folder_error(v, "a b\nb a\n");
    EXPECT_NE(e.find("merges.txt:2"), std::string::npos) << e;
    EXPECT_NE(e.find("result 'ba'"), std::string::npos) << e;
    e = folder_error(v, "a b c\n");
    EXPECT_NE(e.find("merges.txt:1: expected two tokens"), std::string::npos) << e;
    e = folder_error(v, "a \xFF\n");
    EXPECT_NE(e.find("merges.txt is not valid UTF-8"), std::string::npos) << e;
    e = folder_error(v, "a b\n", "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer"})");
    EXPECT_NE(e.find("tokenizer_config.json: tokenizer_class 'LlamaTokenizer' is not supported"), std::string::npos)
        << e;
    e = folder_error(v, "a b\n", "tokenizer_config.json", "[1,");
    EXPECT_NE(e.find("tokenizer_config.json is not valid JSON"), std::string::npos) << e;
    e = folder_error(v, "a b\n", "added_tokens.json", R"({"<x>": 1})");
    EXPECT_NE(e.find("added token '<x>' has id 1"), std::string::npos) << e;
    e = folder_error(v, "a b\n", "added_tokens.json", R"({"<x>": "seven"})");
    EXPECT_NE(e.find("added_tokens.json: added token '<x>' has a bad id"), std::string::npos) << e;
}

TEST(TokenizerLoad, ConflictingAddedTokenFiles) {
    TempDir d;
    d.copy_tiny("vocab.json");
    d.copy_tiny("merges.txt");
    d.copy_tiny("tokenizer_config.json");
    d.write("added_tokens.json", R"({"<|im_end|>": 280})");
    const std::string e = error_of([&] { Tokenizer::load(d.path); });
    EXPECT_NE(e.find("added_tokens.json: '<|im_end|>' has id 280"), std::string::npos) << e;
    EXPECT_NE(e.find("tokenizer_config.json gives 274"), std::string::npos) << e;
}

TEST(TokenizerLoad, UnsupportedTokenizerJson) {
    std::ifstream in(kTiny / "json" / "tokenizer.json");
    const nlohmann::json good = nlohmann::json::parse(in);
    auto error_with = [&](auto&& edit) {
        nlohmann::json j = good;
        edit(j);
        TempDir d;
        d.write("tokenizer.json", j.dump());
        return error_of([&] { Tokenizer::from_tokenizer_json(d.path / "tokenizer.json"); });
    };
    EXPECT_EQ(error_with([](nlohmann::json&) {}), "");
    std::string e = error_with([](nlohmann::json& j) { j["model"]["type"] = "WordPiece"; });
    EXPECT_NE(e.find("tokenizer.json: model type 'WordPiece' is not supported"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+"; });
    EXPECT_NE(e.find("pre_tokenizer"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["normalizer"] = {{"type", "NFKC"}}; });
    EXPECT_NE(e.find("normalizer 'NFKC' is not supported"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["model"]["byte_fallback"] = true; });
    EXPECT_NE(e.find("byte_fallback"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j.erase("model"); });
    EXPECT_NE(e.find("tokenizer.json: no model.vocab object"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["model"].erase("type"); j["model"]["dropout"] = {1, 2}; });
    EXPECT_EQ(e, "");  // type defaults to BPE; unknown keys are ignored
    e = error_with([](nlohmann::json& j) { j["model"]["vocab"]["h"] = "x"; });
    EXPECT_NE(e.find("id of token 'h' is not an integer"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["model"]["vocab"]["h"] = {1}; });
    EXPECT_NE(e.find("id of token 'h' is not an integer"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["model"]["merges"][1] = "h e l"; });
    EXPECT_NE(e.find("merge #2 'h e l' is not two tokens"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["added_tokens"][0].erase("content"); });
    EXPECT_NE(e.find("has no string 'content'"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["model"]["merges"][0] = nlohmann::json::array({"h"}); });
    EXPECT_NE(e.find("merge #1 is not a pair"), std::string::npos) << e;
    e = error_with([](nlohmann::json& j) { j["added_tokens"][0]["id"] = 5; });
    EXPECT_NE(e.find("which the vocabulary gives to another token"), std::string::npos) << e;
    // without a normalizer the text is not NFC-normalized
    e = error_with([](nlohmann::json& j) { j["normalizer"] = nullptr; });
    EXPECT_EQ(e, "");
}
