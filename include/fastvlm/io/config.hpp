// fastvlm/io/config.hpp — the model folder's config.json (FastVLM / LLaVA-Qwen2 schema, spec §4, §1.2,
// model-dir.md). Shapes come from here at run time; every value is checked and an error names
// config.json and the key.
#pragma once
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/json.hpp"

namespace fastvlm::io {

// FastViTHD hyper-parameters (model-dir.md `vision_config`); defaults = mobileclip_l_1024 (spec §1.2).
struct VisionConfig {
    static constexpr int kStages = 5;
    static constexpr int kStemStride = 4;  // two stride-2 MobileOne blocks (spec §1.4)

    int image_size = 1024;
    std::vector<int> layers{2, 12, 24, 4, 2};
    std::vector<int> embed_dims{96, 192, 384, 768, 1536};
    std::vector<double> mlp_ratios{4, 4, 4, 4, 4};
    std::vector<std::string> token_mixers{"repmixer", "repmixer", "repmixer", "attention", "attention"};
    std::vector<int> pos_emb_kernel_sizes{0, 0, 0, 7, 7};  // RepCPE before the stage; 0 = none
    int down_patch_size = 7, down_stride = 2, repmixer_kernel_size = 3, head_dim = 32;
    double cls_ratio = 2.0, se_reduction_ratio = 0.0625, layer_norm_eps = 1e-5, batch_norm_eps = 1e-5;

    // conv_exp channels = int(cls_ratio * embed_dims[4]) (= mm_hidden_size; 3072).
    int out_channels() const { return int(std::floor(cls_ratio * embed_dims.at(4) + 1e-6)); }
    // stem 4 x down_stride^4 (64).
    int total_stride() const {
        int s = kStemStride;
        for (int i = 1; i < kStages; ++i) s *= down_stride;
        return s;
    }
    int out_hw() const { return image_size / total_stride(); }  // 16
    int num_tokens() const { return out_hw() * out_hw(); }       // 256
    // ConvFFN hidden = int(mlp_ratio * C).
    int mlp_hidden(int stage) const { return int(std::floor(mlp_ratios.at(stage) * embed_dims.at(stage) + 1e-6)); }
    int num_heads(int stage) const { return embed_dims.at(stage) / head_dim; }
    // conv_exp squeeze-excite hidden = int(out_channels * se_reduction_ratio) (192).
    int se_channels() const { return int(std::floor(out_channels() * se_reduction_ratio + 1e-6)); }
    bool is_attention(int stage) const { return token_mixers.at(stage) == "attention"; }

    // `source` names the file in error messages.
    void validate(const std::string& source = "vision_config") const;
    // Overrides every key present in a `vision_config` object (model-dir.md); does not validate.
    void apply_json(const nlohmann::json& vision_config, const std::string& source);
    // Defaults (mobileclip_l_1024) + the keys of a `vision_config` object, validated.
    static VisionConfig from_json(const nlohmann::json& vision_config, const std::string& source);
};

// Qwen2 decoder (spec §4). head_dim = hidden_size / num_attention_heads unless config.json gives it.
struct TextConfig {
    int hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0, num_key_value_heads = 0, intermediate_size = 0,
        vocab_size = 0;
    int head_dim = 0;
    double rope_theta = 1e6, rms_norm_eps = 1e-6;
    bool tie_word_embeddings = false;
    int max_position_embeddings = 32768;
    std::vector<std::int32_t> eos_token_ids;
    std::optional<std::int32_t> bos_token_id;
    int tokenizer_model_max_length = 8192;  // inputs_embeds are truncated to this (spec §5.3)

    int kv_dim() const { return num_key_value_heads * head_dim; }
    void validate(const std::string& source = "config.json") const;
};

struct ModelConfig {
    TextConfig text;
    VisionConfig vision;
    int mm_hidden_size = 3072;
    std::string mm_projector_type = "mlp2x_gelu";
    std::string mm_vision_tower;
    std::string image_aspect_ratio = "pad";  // "pad" = expand2square (spec §6.1); other values: no padding
    // The llava IMAGE_TOKEN_INDEX placeholder in input_ids (spec §5.1). Always -200: predict.py uses the
    // constant; a config's own `image_token_index` (151646 in exported folders) is kept below, unused.
    std::int32_t image_token_index = -200;
    std::optional<std::int64_t> config_image_token_index;
    std::string source;  // the config.json path (or name) it came from

    // A model folder (reads <dir>/config.json) or the config.json file itself.
    // Throws unless the file is within `limits` (size, JSON depth, image_size ≤ limits.max_image_size).
    static ModelConfig load(const std::filesystem::path& model_dir_or_config_json, const LoadLimits& limits = {});
    static ModelConfig from_json(const nlohmann::json& j, const std::string& source_name);
    void validate() const;
};

// ---- implementation ---------------------------------------------------------------------------------
namespace detail {

// Typed access to one JSON object; errors read "<source>: key '<prefix><key>': ...".
class JsonFields {
public:
    JsonFields(const nlohmann::json& j, std::string source, std::string prefix)
        : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

    const nlohmann::json* find(const char* key) const {
        auto it = j_.find(key);
        return it == j_.end() ? nullptr : &*it;
    }
    // Present and not null.
    bool has(const char* key) const {
        const auto* v = find(key);
        return v && !v->is_null();
    }
    [[noreturn]] void bad(const char* key, const std::string& what) const {
        fail(source_, ": key '", prefix_, key, "': ", what);
    }
    const nlohmann::json& need(const char* key) const {
        const auto* v = find(key);
        if (!v || v->is_null()) bad(key, "missing");
        return *v;
    }

    std::int64_t as_int(const char* key, const nlohmann::json& v) const {
        if (!v.is_number_integer()) bad(key, "expected an integer, got " + json_type(v) + " " + brief_json(v));
        if (v.is_number_unsigned()) {
            const auto u = v.get<std::uint64_t>();
            if (u > std::uint64_t(std::numeric_limits<std::int32_t>::max())) bad(key, "value " + brief_json(v) + " is out of range");
            return std::int64_t(u);
        }
        const auto s = v.get<std::int64_t>();
        if (s < std::numeric_limits<std::int32_t>::min() || s > std::numeric_limits<std::int32_t>::max())
            bad(key, "value " + brief_json(v) + " is out of range");
        return s;
    }
    double as_double(const char* key, const nlohmann::json& v) const {
        if (!v.is_number()) bad(key, "expected a number, got " + json_type(v) + " " + brief_json(v));
        const double d = v.get<double>();
        if (!std::isfinite(d)) bad(key, "value is not finite");
        return d;
    }

    void get(const char* key, int& out) const { if (has(key)) out = int(as_int(key, *find(key))); }
    void get(const char* key, double& out) const { if (has(key)) out = as_double(key, *find(key)); }
    void get(const char* key, bool& out) const {
        if (!has(key)) return;
        const auto& v = *find(key);
        if (!v.is_boolean()) bad(key, "expected true or false, got " + json_type(v) + " " + brief_json(v));
        out = v.get<bool>();
    }
    void get(const char* key, std::string& out) const {
        if (!has(key)) return;
        const auto& v = *find(key);
        if (!v.is_string()) bad(key, "expected a string, got " + json_type(v) + " " + brief_json(v));
        out = v.get<std::string>();
    }
    template <class T>
    void get(const char* key, std::vector<T>& out) const {
        if (!has(key)) return;
        const auto& v = *find(key);
        if (!v.is_array()) bad(key, "expected a list, got " + json_type(v) + " " + brief_json(v));
        std::vector<T> r;
        for (const auto& e : v) {
            if constexpr (std::is_same_v<T, int>) r.push_back(int(as_int(key, e)));
            else if constexpr (std::is_same_v<T, double>) r.push_back(as_double(key, e));
            else {
                if (!e.is_string()) bad(key, "expected a list of strings, got element " + brief_json(e));
                r.push_back(e.get<std::string>());
            }
        }
        out = std::move(r);
    }
    template <class T>
    void require(const char* key, T& out) const {
        need(key);
        get(key, out);
    }

private:
    const nlohmann::json& j_;
    std::string source_, prefix_;
};

inline std::string join(const std::vector<int>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

inline bool near_integer(double x) { return std::fabs(x - std::round(x)) < 1e-6; }

}  // namespace detail

inline void VisionConfig::validate(const std::string& source) const {
    auto bad = [&](const char* key, const auto&... what) { fail(source, ": key 'vision_config.", key, "': ", what...); };
    constexpr int kMaxDim = 1 << 16, kMaxImage = 1 << 14, kMaxKernel = 63, kMaxLayers = 1024;
    auto check_len = [&](const char* key, std::size_t n) {
        if (n != std::size_t(kStages)) bad(key, "expected ", kStages, " entries (one per stage), got ", n);
    };
    check_len("layers", layers.size());
    check_len("embed_dims", embed_dims.size());
    check_len("mlp_ratios", mlp_ratios.size());
    check_len("token_mixers", token_mixers.size());
    check_len("pos_emb_kernel_sizes", pos_emb_kernel_sizes.size());
    if (head_dim < 1 || head_dim > kMaxDim) bad("head_dim", head_dim, " is not in 1..", kMaxDim);
    for (int i = 0; i < kStages; ++i) {
        if (layers[i] < 1 || layers[i] > kMaxLayers) bad("layers", "stage ", i, " has ", layers[i], " blocks; expected 1..", kMaxLayers);
        if (embed_dims[i] < 1 || embed_dims[i] > kMaxDim) bad("embed_dims", "stage ", i, " width ", embed_dims[i], " is not in 1..", kMaxDim);
        if (i > 0 && embed_dims[i] % embed_dims[i - 1] != 0)
            bad("embed_dims", "embed_dims[", i, "] = ", embed_dims[i], " is not a multiple of embed_dims[", i - 1, "] = ", embed_dims[i - 1],
                " (the downsample conv is grouped by input channels)");
        const double hidden = mlp_ratios[i] * embed_dims[i];
        if (!(mlp_ratios[i] > 0) || !detail::near_integer(hidden) || hidden > double(kMaxDim) * 16)
            bad("mlp_ratios", "stage ", i, ": mlp_ratio ", mlp_ratios[i], " x width ", embed_dims[i], " is not a positive whole number of channels");
        if (token_mixers[i] != "repmixer" && token_mixers[i] != "attention")
            bad("token_mixers", "stage ", i, ": unknown token mixer '", token_mixers[i], "' (expected \"repmixer\" or \"attention\")");
        if (token_mixers[i] == "attention" && embed_dims[i] % head_dim != 0)
            bad("head_dim", "stage ", i, " width ", embed_dims[i], " is not a multiple of head_dim ", head_dim);
        const int k = pos_emb_kernel_sizes[i];
        if (k < 0 || k > kMaxKernel || (k != 0 && k % 2 == 0))
            bad("pos_emb_kernel_sizes", "stage ", i, ": kernel ", k, " must be 0 (none) or odd in 1..", kMaxKernel);
    }
    if (down_patch_size < 1 || down_patch_size > kMaxKernel || down_patch_size % 2 == 0)
        bad("down_patch_size", down_patch_size, " must be odd in 1..", kMaxKernel);
    if (down_stride < 1 || down_stride > 8) bad("down_stride", down_stride, " is not in 1..8");
    if (repmixer_kernel_size < 1 || repmixer_kernel_size > kMaxKernel || repmixer_kernel_size % 2 == 0)
        bad("repmixer_kernel_size", repmixer_kernel_size, " must be odd in 1..", kMaxKernel);
    const int stride = total_stride();
    if (image_size < 1 || image_size > kMaxImage) bad("image_size", image_size, " is not in 1..", kMaxImage);
    if (image_size % stride != 0) bad("image_size", image_size, " is not a multiple of the total stride ", stride, " (stem 4 x down_stride^4)");
    const double oc = cls_ratio * embed_dims[4];
    if (!(cls_ratio > 0) || !detail::near_integer(oc) || oc > double(kMaxDim) * 4 || out_channels() % embed_dims[4] != 0)
        bad("cls_ratio", cls_ratio, " x embed_dims[4] ", embed_dims[4], " must be a positive whole multiple of embed_dims[4] (conv_exp is grouped)");
    if (!(se_reduction_ratio > 0) || se_reduction_ratio > 1 || se_channels() < 1)
        bad("se_reduction_ratio", se_reduction_ratio, " gives ", se_channels(), " squeeze-excite channels; expected >= 1");
    if (!(layer_norm_eps > 0) || layer_norm_eps > 1) bad("layer_norm_eps", layer_norm_eps, " is not in (0, 1]");
    if (!(batch_norm_eps > 0) || batch_norm_eps > 1) bad("batch_norm_eps", batch_norm_eps, " is not in (0, 1]");
}

inline void VisionConfig::apply_json(const nlohmann::json& j, const std::string& source) {
    if (!j.is_object()) fail(source, ": key 'vision_config': expected an object, got ", detail::json_type(j));
    const detail::JsonFields g(j, source, "vision_config.");
    g.get("image_size", image_size);
    g.get("layers", layers);
    g.get("embed_dims", embed_dims);
    g.get("mlp_ratios", mlp_ratios);
    g.get("token_mixers", token_mixers);
    g.get("pos_emb_kernel_sizes", pos_emb_kernel_sizes);
    g.get("down_patch_size", down_patch_size);
    g.get("down_stride", down_stride);
    g.get("repmixer_kernel_size", repmixer_kernel_size);
    g.get("head_dim", head_dim);
    g.get("cls_ratio", cls_ratio);
    g.get("se_reduction_ratio", se_reduction_ratio);
    g.get("layer_norm_eps", layer_norm_eps);
    g.get("batch_norm_eps", batch_norm_eps);
}

inline VisionConfig VisionConfig::from_json(const nlohmann::json& j, const std::string& source) {
    VisionConfig v;
    v.apply_json(j, source);
    v.validate(source);
    return v;
}

inline void TextConfig::validate(const std::string& source) const {
    auto bad = [&](const char* key, const auto&... what) { fail(source, ": key '", key, "': ", what...); };
    constexpr int kMax = 1 << 20;
    auto positive = [&](const char* key, int v, int max) {
        if (v < 1 || v > max) bad(key, v, " is not in 1..", max);
    };
    positive("hidden_size", hidden_size, kMax);
    positive("num_hidden_layers", num_hidden_layers, 4096);
    positive("num_attention_heads", num_attention_heads, 4096);
    positive("num_key_value_heads", num_key_value_heads, 4096);
    positive("intermediate_size", intermediate_size, kMax);
    positive("vocab_size", vocab_size, 1 << 24);
    positive("head_dim", head_dim, 4096);
    positive("max_position_embeddings", max_position_embeddings, 1 << 24);
    positive("tokenizer_model_max_length", tokenizer_model_max_length, 1 << 24);
    if (num_attention_heads % num_key_value_heads != 0)
        bad("num_key_value_heads", "num_attention_heads ", num_attention_heads, " is not a multiple of num_key_value_heads ", num_key_value_heads);
    if (head_dim % 2 != 0) bad("head_dim", head_dim, " is odd (rotate-half RoPE needs an even head size)");
    if (!(rope_theta > 1)) bad("rope_theta", rope_theta, " must be > 1");
    if (!(rms_norm_eps > 0) || rms_norm_eps > 1) bad("rms_norm_eps", rms_norm_eps, " is not in (0, 1]");
    for (auto id : eos_token_ids)
        if (id < 0) bad("eos_token_id", id, " is negative");
    if (bos_token_id && *bos_token_id < 0) bad("bos_token_id", *bos_token_id, " is negative");
}

inline void ModelConfig::validate() const {
    const std::string& src = source.empty() ? std::string("config.json") : source;
    text.validate(src);
    vision.validate(src);
    if (mm_projector_type != "mlp2x_gelu")
        fail(src, ": key 'mm_projector_type': '", mm_projector_type, "' is not supported (only \"mlp2x_gelu\")");
    if (mm_hidden_size != vision.out_channels())
        fail(src, ": key 'mm_hidden_size': ", mm_hidden_size, " disagrees with the vision tower's output width ", vision.out_channels(),
             " (cls_ratio ", vision.cls_ratio, " x embed_dims[4] ", vision.embed_dims[4], ")");
    if (image_aspect_ratio == "anyres" || image_aspect_ratio.starts_with("anyres"))
        fail(src, ": key 'image_aspect_ratio': '", image_aspect_ratio, "' is not supported (FastVLM uses \"pad\")");
}

inline ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& src) {
    if (!j.is_object()) fail(src, ": expected a JSON object, got ", j.type_name());
    detail::JsonFields f(j, src, "");
    ModelConfig c;
    c.source = src;

    if (f.has("model_type")) {
        std::string mt;
        f.get("model_type", mt);
        if (mt != "llava_qwen2" && mt != "llava_qwen")
            fail(src, ": key 'model_type': '", mt, "' is not a FastVLM model (expected \"llava_qwen2\")");
    }
    if (f.has("hidden_act")) {
        std::string act;
        f.get("hidden_act", act);
        if (act != "silu") f.bad("hidden_act", "'" + act + "' is not supported (Qwen2 uses \"silu\")");
    }
    if (const auto* rs = f.find("rope_scaling"); rs && !rs->is_null()) {
        const bool plain = rs->is_object() && ((rs->contains("type") && (*rs)["type"] == "default") ||
                                               (rs->contains("rope_type") && (*rs)["rope_type"] == "default"));
        if (!plain) f.bad("rope_scaling", brief_json(*rs) + " is not supported (plain RoPE only)");
    }
    if (f.has("mm_use_im_start_end")) {
        bool b = false;
        f.get("mm_use_im_start_end", b);
        if (b) f.bad("mm_use_im_start_end", "true is not supported (FastVLM uses false)");
    }

    // ---- decoder
    TextConfig& t = c.text;
    f.require("hidden_size", t.hidden_size);
    f.require("num_hidden_layers", t.num_hidden_layers);
    f.require("num_attention_heads", t.num_attention_heads);
    f.require("intermediate_size", t.intermediate_size);
    f.require("vocab_size", t.vocab_size);
    t.num_key_value_heads = t.num_attention_heads;  // HF default: no GQA
    f.get("num_key_value_heads", t.num_key_value_heads);
    if (f.has("head_dim")) f.get("head_dim", t.head_dim);
    else {
        if (t.num_attention_heads < 1) f.bad("num_attention_heads", std::to_string(t.num_attention_heads) + " is not positive");
        if (t.hidden_size % t.num_attention_heads != 0)
            f.bad("hidden_size", std::to_string(t.hidden_size) + " is not a multiple of num_attention_heads " +
                                     std::to_string(t.num_attention_heads));
        t.head_dim = t.hidden_size / t.num_attention_heads;
    }
    f.get("rope_theta", t.rope_theta);
    f.get("rms_norm_eps", t.rms_norm_eps);
    f.get("tie_word_embeddings", t.tie_word_embeddings);
    f.get("max_position_embeddings", t.max_position_embeddings);
    f.get("tokenizer_model_max_length", t.tokenizer_model_max_length);
    if (f.has("eos_token_id")) {  // int or list of ints
        const auto& v = f.need("eos_token_id");
        if (v.is_array()) {
            for (const auto& e : v) t.eos_token_ids.push_back(std::int32_t(f.as_int("eos_token_id", e)));
        } else {
            t.eos_token_ids.push_back(std::int32_t(f.as_int("eos_token_id", v)));
        }
    }
    if (f.has("bos_token_id")) t.bos_token_id = std::int32_t(f.as_int("bos_token_id", f.need("bos_token_id")));

    // ---- vision tower: mobileclip_l_<size> defaults, then vision_config overrides
    f.require("mm_vision_tower", c.mm_vision_tower);
    const std::string& tower = c.mm_vision_tower;
    std::optional<int> suffix_size;
    if (auto us = tower.rfind('_'); us != std::string::npos && us + 1 < tower.size() && tower.size() - us <= 6) {
        const std::string tail = tower.substr(us + 1);
        if (tail.find_first_not_of("0123456789") == std::string::npos) suffix_size = std::stoi(tail);
    }
    VisionConfig& v = c.vision;
    const nlohmann::json* vc = f.find("vision_config");
    if (vc && !vc->is_null()) {
        if (!vc->is_object()) f.bad("vision_config", "expected an object, got " + detail::json_type(*vc));
        if (suffix_size) v.image_size = *suffix_size;
        v.apply_json(*vc, src);
        const detail::JsonFields g(*vc, src, "vision_config.");
        if (suffix_size && g.has("image_size") && *suffix_size != v.image_size)
            g.bad("image_size", std::to_string(v.image_size) + " disagrees with the size " + std::to_string(*suffix_size) +
                                    " in mm_vision_tower '" + tower + "'");
    } else {
        // Without vision_config only the official tower family is known (llava: mobileclip_l.json).
        if (!tower.starts_with("mobileclip_l_") || !suffix_size)
            f.bad("mm_vision_tower", "'" + tower + "' is unknown; expected \"mobileclip_l_<size>\" (e.g. mobileclip_l_1024) or a vision_config object");
        v.image_size = *suffix_size;
    }

    v.validate(src);  // before anything derived from the tower

    // ---- projector and glue
    f.require("mm_projector_type", c.mm_projector_type);
    c.mm_hidden_size = v.out_channels();  // derived when absent; checked below when present
    f.get("mm_hidden_size", c.mm_hidden_size);
    f.get("image_aspect_ratio", c.image_aspect_ratio);
    if (f.has("image_token_index")) c.config_image_token_index = f.as_int("image_token_index", f.need("image_token_index"));

    c.validate();
    return c;
}

// The vision tower's work and memory grow with image_size²: a config that asks for more than the limit is refused.
inline void check_image_size(const VisionConfig& v, const std::string& src, const LoadLimits& limits) {
    if (v.image_size > limits.max_image_size)
        fail(src, ": key 'image_size': ", v.image_size, " is larger than the ", limits.max_image_size,
             " limit (LoadLimits::max_image_size; the vision tower's work grows with its square)");
}

// Another input side than the config's (LoadOptions::image_size, --image-size): a positive multiple of the
// tower's total stride, within LoadLimits::max_image_size. `what` names the setting in errors.
inline void set_image_size(VisionConfig& v, int size, const LoadLimits& limits, const std::string& what) {
    const int stride = v.total_stride();
    if (size <= 0 || size % stride != 0)
        fail(what, " = ", size, " is not a positive multiple of the vision tower's total stride ", stride, " (stem 4 x down_stride^4)");
    if (size > limits.max_image_size)
        fail(what, " = ", size, " is larger than the ", limits.max_image_size,
             " limit (LoadLimits::max_image_size; the vision tower's work grows with its square)");
    v.image_size = size;
}

inline ModelConfig ModelConfig::load(const std::filesystem::path& p, const LoadLimits& limits) {
    std::error_code ec;
    const std::filesystem::path file = std::filesystem::is_directory(p, ec) ? p / "config.json" : p;
    const std::string text = read_file(file, limits.max_json_file_bytes);
    const std::string src = file.string();
    ModelConfig c = from_json(parse_json(text, src, {.max_depth = limits.max_json_depth}), src);
    check_image_size(c.vision, src, limits);
    return c;
}

}  // namespace fastvlm::io
