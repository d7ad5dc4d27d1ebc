// Fuzz target: the tokenizer files and encode/decode.
//
// Input: one mode byte, then FILE "\n#text#\n" TEXT (without the separator, TEXT = FILE).
//   mode % 7 == 0: FILE is tokenizer.json (a folder holding only it);
//   1..5: FILE replaces vocab.json / merges.txt / added_tokens.json / tokenizer_config.json /
//         special_tokens_map.json in a copy of the tiny test tokenizer (tests/data/tokenizer_tiny);
//   6: no file; everything after the mode byte is TEXT for the tiny tokenizer.
// The folder is loaded with text::Tokenizer::load(folder), as Model::load does. TEXT is encoded by the
// loaded tokenizer (the tiny one when loading failed) with and without special-token parsing, decoded
// back, streamed through StreamDecoder, and also read as lists of token ids to decode.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "fastvlm/text/tokenizer.hpp"
#include "fuzz_common.hpp"

namespace {

using fastvlm::text::Tokenizer;

const char* const kFiles[] = {"tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json",
                              "special_tokens_map.json"};
constexpr int kOptional = 5;  // special_tokens_map.json: not in the tiny folder

struct Fixture {
    std::filesystem::path tiny_dir{FASTVLM_FUZZ_TOKENIZER_DIR};
    Tokenizer tiny = Tokenizer::load(tiny_dir);
    std::string originals[6];
    fuzz::ScratchDir json_dir{"tokenizer_json"}, folder{"tokenizer_folder"};
    int dirty = -1;  // the folder file the previous input replaced

    Fixture() {
        for (int i = 1; i < kOptional; ++i) {
            originals[i] = fuzz::read_fixture(tiny_dir / kFiles[i]);
            folder.write(kFiles[i], originals[i]);
        }
    }
    void restore(int i) {
        if (i == kOptional) folder.remove(kFiles[i]);
        else if (i >= 1) folder.write(kFiles[i], originals[i]);
    }
};

// decode == the concatenated StreamDecoder output (documented), for ids all in the vocabulary.
void check_stream(const Tokenizer& tok, const std::vector<std::int32_t>& ids) {
    const std::string whole = tok.decode(ids, true);
    Tokenizer::StreamDecoder sd(tok, true);
    std::string streamed;
    for (std::int32_t id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    FUZZ_CHECK(streamed == whole);
    FUZZ_CHECK(Tokenizer::sanitize_utf8(whole) == whole);
}

void run_text(const Tokenizer& tok, bool is_tiny, std::string_view text) {
    for (const bool special : {true, false}) {
        std::vector<std::int32_t> ids;
        const bool ok = fuzz::accepts([&] { ids = tok.encode(text, special); });
        if (!ok) {
            // Invalid UTF-8 is an Error; the sanitized text must then encode (the tiny vocabulary has
            // a token for every byte).
            const std::string clean = Tokenizer::sanitize_utf8(text);
            if (is_tiny) FUZZ_CHECK(fuzz::accepts([&] { ids = tok.encode(clean, special); }));
            else if (!fuzz::accepts([&] { ids = tok.encode(clean, special); })) continue;
        }
        for (std::int32_t id : ids) FUZZ_CHECK(id >= 0);
        std::string back;
        FUZZ_CHECK(fuzz::accepts([&] { back = tok.decode(ids); }));  // ids from encode are in the vocabulary
        // Byte-level BPE is lossless: without characters NFC could change, decoding gives the text back.
        if (is_tiny && ok && !fastvlm::text::detail::maybe_not_nfc(text)) FUZZ_CHECK(back == text);
        FUZZ_CHECK(fuzz::accepts([&] { check_stream(tok, ids); }));
    }
    fuzz::sink(tok.token_id(text));

    // The text as token ids: raw int32 values (mostly unknown ids: an Error), and 16-bit values folded
    // into [-1, size + 8) so that most are real tokens.
    std::vector<std::int32_t> raw(text.size() / 4), folded;
    if (!raw.empty()) std::memcpy(raw.data(), text.data(), raw.size() * 4);
    const std::int64_t span = std::int64_t(tok.size()) + 9;
    for (std::size_t i = 0; i + 1 < text.size(); i += 2) {
        const auto v = std::int64_t(std::uint8_t(text[i]) | std::uint8_t(text[i + 1]) << 8);
        folded.push_back(std::int32_t(v % span - 1));
    }
    for (const auto* ids : {&raw, &folded}) {
        fuzz::accepts([&] { fuzz::sink(tok.decode(*ids, false)); });
        fuzz::accepts([&] { check_stream(tok, *ids); });
        for (std::int32_t id : *ids) {
            fuzz::sink(tok.is_special(id));
            fuzz::accepts([&] { fuzz::sink(tok.token_bytes(id)); });
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Fixture fx;
    if (size == 0) return 0;
    const int mode = data[0] % 7;
    const std::string_view rest = fuzz::as_text(data + 1, size - 1);

    std::optional<Tokenizer> own;
    std::string_view text = rest;
    if (mode < 6) {
        const auto [file, t] = fuzz::split_once(rest, "\n#text#\n", true);
        text = t;
        if (mode == 0) {
            fx.json_dir.write(kFiles[0], file);
            fuzz::accepts([&] { own = Tokenizer::load(fx.json_dir.path()); });
        } else {
            if (fx.dirty != mode) fx.restore(fx.dirty);
            fx.dirty = mode;
            fx.folder.write(kFiles[mode], file);
            fuzz::accepts([&] { own = Tokenizer::load(fx.folder.path()); });
        }
    }
    run_text(own ? *own : fx.tiny, !own, text);
    return 0;
}
