// fastvlm/text/tokenizer/load.hpp — reading the tokenizer files into a Builder: vocab.json +
// merges.txt, tokenizer.json (pipeline checked to be Qwen2's) and the added-token files.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/json.hpp"
#include "fastvlm/text/tokenizer/pretokenize.hpp"
#include "fastvlm/text/tokenizer/utf8.hpp"
#include "fastvlm/text/tokenizer/vocab_json.hpp"

namespace fastvlm::text::detail {

inline std::string read_file(const std::filesystem::path& file, std::size_t limit) {
    return io::read_file(file, limit, "tokenizer: " + file.string());
}

inline nlohmann::json read_json(const std::filesystem::path& file, const io::LoadLimits& limits) {
    const std::string data = read_file(file, limits.max_json_file_bytes);
    return io::parse_json(data, "tokenizer: " + file.string(), {.max_depth = limits.max_json_depth, .reject_duplicate_keys = false});
}

inline constexpr std::int64_t kMaxId = 1 << 24;  // token ids are below 2^24

struct AddedToken {
    std::string content;
    std::int32_t id = -1;
    bool special = false, lstrip = false, rstrip = false;
};

struct Builder {
    std::unordered_map<std::string, std::int32_t> vocab;  // byte-level form -> id
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<std::size_t> merge_lines;  // line numbers in merges.txt (empty for tokenizer.json)
    std::vector<AddedToken> added;
    bool nfc = true;
    std::string vocab_src, merges_src, added_src;
    std::size_t max_added = io::LoadLimits{}.max_added_tokens;
};

inline AddedToken parse_added(const nlohmann::json& t, const nlohmann::json& idj, const std::string& src) {
    FASTVLM_CHECK(t.is_object() && t.contains("content") && t["content"].is_string(), "tokenizer: ", src,
                  ": an added token has no string 'content'");
    AddedToken a;
    a.content = t["content"].get<std::string>();
    FASTVLM_CHECK(!a.content.empty(), "tokenizer: ", src, ": an added token has empty content");
    std::int64_t id = -1;
    if (idj.is_number_integer()) {
        id = idj.get<std::int64_t>();
    } else if (idj.is_string()) {  // added_tokens_decoder keys
        const std::string& s = idj.get_ref<const std::string&>();
        char* endp = nullptr;
        id = std::strtoll(s.c_str(), &endp, 10);
        if (s.empty() || *endp != '\0') id = -1;
    }
    FASTVLM_CHECK(id >= 0 && id < kMaxId, "tokenizer: ", src, ": added token '", a.content, "' has a bad id");
    a.id = static_cast<std::int32_t>(id);
    auto flag = [&](const char* key) { return t.contains(key) && t[key].is_boolean() && t[key].get<bool>(); };
    a.special = flag("special"), a.lstrip = flag("lstrip"), a.rstrip = flag("rstrip");
    return a;
}

// The tokenizer.json pipeline must be Qwen2's: NFC (or none), Split(Qwen2 regex) + ByteLevel
// without its own regex, BPE without byte fallback or subword affixes.
inline void check_tokenizer_json_pipeline(const nlohmann::json& j, const std::string& src, bool& nfc) {
    const nlohmann::json& model = j.at("model");
    const std::string type = model.value("type", std::string("BPE"));
    FASTVLM_CHECK(type == "BPE", "tokenizer: ", src, ": model type '", type, "' is not supported (BPE only)");
    FASTVLM_CHECK(!model.value("byte_fallback", false), "tokenizer: ", src, ": byte_fallback BPE is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        if (model.contains(key) && model[key].is_string())
            FASTVLM_CHECK(model[key].get<std::string>().empty(), "tokenizer: ", src, ": BPE ", key,
                          " is not supported");
    }
    FASTVLM_CHECK(!model.value("ignore_merges", false), "tokenizer: ", src, ": ignore_merges is not supported");

    nfc = false;
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
        const std::string nt = j["normalizer"].value("type", std::string());
        FASTVLM_CHECK(nt == "NFC", "tokenizer: ", src, ": normalizer '", nt, "' is not supported (NFC only)");
        nfc = true;
    }
    bool split = false, byte_level = false;
    const nlohmann::json& pre = j.at("pre_tokenizer");
    auto visit = [&](const nlohmann::json& p) {
        const std::string pt = p.value("type", std::string());
        if (pt == "Split" && p.contains("pattern") && p["pattern"].contains("Regex") &&
            p["pattern"]["Regex"].is_string() &&
            p["pattern"]["Regex"].get<std::string>() == kQwen2Pattern &&
            p.value("behavior", std::string()) == "Isolated" &&
            !p.value("invert", false)) {
            split = true;
        } else if (pt == "ByteLevel" && !p.value("use_regex", true) && !p.value("add_prefix_space", false)) {
            byte_level = true;
        } else {
            fail("tokenizer: ", src, ": pre_tokenizer ", p.dump(), " is not supported (expected the Qwen2 Split "
                 "regex followed by ByteLevel with use_regex=false)");
        }
    };
    if (pre.is_object() && pre.value("type", std::string()) == "Sequence") {
        for (const auto& p : pre.at("pretokenizers")) visit(p);
    } else if (pre.is_object()) {
        visit(pre);
    }
    FASTVLM_CHECK(split && byte_level, "tokenizer: ", src,
                  ": pre_tokenizer is not Qwen2's (Split with the Qwen2 regex + ByteLevel)");
}

// added_tokens_decoder (tokenizer_config.json) carries the special flags; tokens only listed in
// added_tokens.json are special when special_tokens_map.json / tokenizer_config.json name them.
inline void read_folder_added_tokens(const std::filesystem::path& dir, Builder& b, const io::LoadLimits& limits) {
    namespace fs = std::filesystem;
    const fs::path cfg_file = dir / "tokenizer_config.json", at_file = dir / "added_tokens.json",
                   stm_file = dir / "special_tokens_map.json";
    std::unordered_set<std::string> named_special;
    auto collect_named = [&](const nlohmann::json& j) {
        for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"}) {
            if (!j.contains(key)) continue;
            const nlohmann::json& v = j[key];
            auto one = [&](const nlohmann::json& x) {
                if (x.is_string()) named_special.insert(x.get<std::string>());
                else if (x.is_object() && x.contains("content") && x["content"].is_string())
                    named_special.insert(x["content"].get<std::string>());
            };
            if (v.is_array())
                for (const auto& x : v) one(x);
            else
                one(v);
        }
    };
    std::string sources;
    try {
        if (io::present(cfg_file)) {
            const nlohmann::json cfg = read_json(cfg_file, limits);
            const std::string src = cfg_file.string();
            FASTVLM_CHECK(cfg.is_object(), "tokenizer: ", src, " is not a JSON object");
            if (cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string()) {
                const std::string cls = cfg["tokenizer_class"].get<std::string>();
                FASTVLM_CHECK(cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast", "tokenizer: ", src,
                              ": tokenizer_class '", cls, "' is not supported (Qwen2Tokenizer)");
            }
            if (cfg.contains("added_tokens_decoder")) {
                const nlohmann::json& d = cfg["added_tokens_decoder"];
                FASTVLM_CHECK(d.is_object(), "tokenizer: ", src, ": added_tokens_decoder is not an object");
                for (const auto& [key, t] : d.items()) b.added.push_back(parse_added(t, nlohmann::json(key), src));
            }
            collect_named(cfg);
            sources = src;
        }
        if (io::present(stm_file)) {
            const nlohmann::json stm = read_json(stm_file, limits);
            FASTVLM_CHECK(stm.is_object(), "tokenizer: ", stm_file.string(), " is not a JSON object");
            collect_named(stm);
        }
        if (io::present(at_file)) {
            const nlohmann::json at = read_json(at_file, limits);
            const std::string src = at_file.string();
            FASTVLM_CHECK(at.is_object(), "tokenizer: ", src, " is not a JSON object {token: id}");
            std::unordered_map<std::string, std::size_t> known;  // content -> index in b.added
            for (std::size_t i = 0; i < b.added.size(); ++i) known.emplace(b.added[i].content, i);
            for (const auto& item : at.items()) {
                const std::string& content = item.key();  // no structured binding: clang < 16
                nlohmann::json t = {{"content", content}};
                AddedToken a = parse_added(t, item.value(), src);
                a.special = named_special.count(content) > 0;
                const auto k = known.find(content);
                if (k != known.end()) {
                    const AddedToken* same = &b.added[k->second];
                    FASTVLM_CHECK(same->id == a.id, "tokenizer: ", src, ": '", content, "' has id ", a.id,
                                  " but ", sources, " gives ", same->id);
                    continue;
                }
                known.emplace(content, b.added.size());
                b.added.push_back(std::move(a));
            }
            sources = sources.empty() ? src : sources + " / " + src;
        }
    } catch (const nlohmann::json::exception& e) {
        fail("tokenizer: unexpected content in the added-token files of ", dir.string(), ": ", e.what());
    }
    b.added_src = sources.empty() ? dir.string() : sources;
}

// tokenizer.json: model.vocab / model.merges / added_tokens.
inline Builder read_tokenizer_json(const std::filesystem::path& file, const io::LoadLimits& limits) {
    const std::string src = file.string();
    Builder b;
    b.max_added = limits.max_added_tokens;
    b.vocab_src = b.merges_src = b.added_src = src;
    VocabJsonReader r(b.vocab, b.merges, {"model", "vocab"}, {"model", "merges"}, src, kMaxId, limits.max_json_depth);
    {
        const std::string data = read_file(file, limits.max_tokenizer_file_bytes);
        b.vocab.reserve(160000), b.merges.reserve(160000);
        nlohmann::json::sax_parse(data, &r);
    }
    const nlohmann::json& j = r.root;
    try {
        FASTVLM_CHECK(j.is_object() && j.contains("model") && r.saw_vocab && r.saw_merges, "tokenizer: ", src,
                      ": no model.vocab object / model.merges array");
        check_tokenizer_json_pipeline(j, src, b.nfc);
        if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
            FASTVLM_CHECK(j["added_tokens"].is_array(), "tokenizer: ", src, ": added_tokens is not an array");
            for (const auto& t : j["added_tokens"]) b.added.push_back(parse_added(t, t.at("id"), src));
        }
    } catch (const nlohmann::json::exception& e) {
        fail("tokenizer: ", src, ": unexpected content: ", e.what());
    }
    return b;
}

// vocab.json + merges.txt + the added-token files of the folder.
inline Builder read_vocab_merges(const std::filesystem::path& dir, const io::LoadLimits& limits) {
    namespace fs = std::filesystem;
    Builder b;
    b.max_added = limits.max_added_tokens;
    const fs::path vocab_file = dir / "vocab.json", merges_file = dir / "merges.txt";
    b.vocab_src = vocab_file.string(), b.merges_src = merges_file.string();
    {
        std::vector<std::pair<std::string, std::string>> no_merges;
        VocabJsonReader r(b.vocab, no_merges, {}, {"-"}, b.vocab_src, kMaxId, limits.max_json_depth);
        const std::string data = read_file(vocab_file, limits.max_tokenizer_file_bytes);
        b.vocab.reserve(160000);
        nlohmann::json::sax_parse(data, &r);
        FASTVLM_CHECK(r.saw_vocab, "tokenizer: ", b.vocab_src, ": the vocabulary is not a JSON object");
    }
    {
        const std::string text = read_file(merges_file, limits.max_tokenizer_file_bytes);
        check_utf8(text, b.merges_src);
        // Qwen2Tokenizer: strip each line, skip blanks and a first-line "#version:" header.
        std::size_t line_no = 0;
        for (std::size_t pos = 0; pos < text.size();) {
            std::size_t eol = text.find('\n', pos);
            if (eol == std::string::npos) eol = text.size();
            std::string_view line(text.data() + pos, eol - pos);
            pos = eol + 1;
            ++line_no;
            auto is_ws = [](char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f'; };
            while (!line.empty() && is_ws(line.front())) line.remove_prefix(1);
            while (!line.empty() && is_ws(line.back())) line.remove_suffix(1);
            if (line.empty() || (line_no == 1 && line.starts_with("#version:"))) continue;
            std::size_t sp = 0;
            while (sp < line.size() && !is_ws(line[sp])) ++sp;
            std::size_t r = sp;
            while (r < line.size() && is_ws(line[r])) ++r;
            const std::string_view right = line.substr(r);
            FASTVLM_CHECK(sp > 0 && !right.empty() && std::none_of(right.begin(), right.end(), is_ws),
                          "tokenizer: ", b.merges_src, ":", line_no, ": expected two tokens separated by a space");
            b.merges.emplace_back(std::string(line.substr(0, sp)), std::string(right));
            b.merge_lines.push_back(line_no);
        }
    }
    read_folder_added_tokens(dir, b, limits);
    return b;
}

}  // namespace fastvlm::text::detail
