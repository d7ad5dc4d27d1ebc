// Tests for fastvlm/io/config.hpp: the golden tiny-vlm config, the official mobileclip_l_1024 defaults,
// and bad configs (every error names config.json and the key).
#include "fastvlm/io/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace fs = std::filesystem;
using namespace fastvlm;
using namespace fastvlm::io;
using nlohmann::json;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        static int counter = 0;
        path = fs::temp_directory_path() / ("fastvlm_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
                                            std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write_text(const fs::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << s;
}

// The official FastVLM-0.5B config.json (spec §4; no vision_config: the tower name selects FastViTHD).
json official_05b() {
    return json::parse(R"({
      "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2", "hidden_act": "silu",
      "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
      "num_key_value_heads": 2, "max_position_embeddings": 32768, "max_window_layers": 24, "rms_norm_eps": 1e-06,
      "rope_theta": 1000000.0, "rope_scaling": null, "sliding_window": 32768, "use_sliding_window": false,
      "tie_word_embeddings": false, "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
      "torch_dtype": "bfloat16", "use_cache": true, "image_aspect_ratio": "pad", "mm_hidden_size": 3072,
      "mm_patch_merge_type": "flat", "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": false,
      "mm_use_im_start_end": false, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
      "mm_vision_tower": "mobileclip_l_1024", "tokenizer_model_max_length": 8192, "tokenizer_padding_side": "right",
      "unfreeze_mm_vision_tower": true, "use_mm_proj": true})");
}

// A small valid config with a vision_config block (tiny-vlm shape).
json tiny() {
    json j = official_05b();
    j["hidden_size"] = 64;
    j["intermediate_size"] = 128;
    j["num_hidden_layers"] = 2;
    j["num_attention_heads"] = 4;
    j["num_key_value_heads"] = 2;
    j["vocab_size"] = 300;
    j["mm_hidden_size"] = 256;
    j["mm_vision_tower"] = "fastvithd_small";
    j["vision_config"] = json::parse(R"({"image_size": 256, "layers": [2,2,2,2,2], "embed_dims": [8,16,32,64,128]})");
    return j;
}

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

// from_json on `j` must fail naming config.json and `key`.
void expect_bad(const json& j, const std::string& key, const std::string& also = "") {
    SCOPED_TRACE(key);
    if (also.empty()) expect_error([&] { ModelConfig::from_json(j, "some/dir/config.json"); }, {"some/dir/config.json", "'" + key + "'"});
    else expect_error([&] { ModelConfig::from_json(j, "some/dir/config.json"); }, {"some/dir/config.json", "'" + key + "'", also});
}

}  // namespace

TEST(Config, DefaultsAreFastViTHD) {
    const VisionConfig v;
    EXPECT_NO_THROW(v.validate());
    EXPECT_EQ(v.total_stride(), 64);
    EXPECT_EQ(v.out_hw(), 16);
    EXPECT_EQ(v.num_tokens(), 256);
    EXPECT_EQ(v.out_channels(), 3072);
    EXPECT_EQ(v.se_channels(), 192);
    EXPECT_EQ(v.mlp_hidden(0), 384);
    EXPECT_EQ(v.mlp_hidden(4), 6144);
    EXPECT_EQ(v.num_heads(3), 24);
    EXPECT_EQ(v.num_heads(4), 48);
    EXPECT_FALSE(v.is_attention(2));
    EXPECT_TRUE(v.is_attention(3));
}

TEST(Config, Official05BWithoutVisionConfig) {
    const ModelConfig c = ModelConfig::from_json(official_05b(), "config.json");
    const TextConfig& t = c.text;
    EXPECT_EQ(t.hidden_size, 896);
    EXPECT_EQ(t.num_hidden_layers, 24);
    EXPECT_EQ(t.num_attention_heads, 14);
    EXPECT_EQ(t.num_key_value_heads, 2);
    EXPECT_EQ(t.head_dim, 64);
    EXPECT_EQ(t.kv_dim(), 128);
    EXPECT_EQ(t.intermediate_size, 4864);
    EXPECT_EQ(t.vocab_size, 151936);
    EXPECT_EQ(t.rope_theta, 1e6);
    EXPECT_EQ(t.rms_norm_eps, 1e-6);
    EXPECT_FALSE(t.tie_word_embeddings);
    EXPECT_EQ(t.eos_token_ids, std::vector<std::int32_t>{151645});
    ASSERT_TRUE(t.bos_token_id.has_value());
    EXPECT_EQ(*t.bos_token_id, 151643);
    EXPECT_EQ(t.tokenizer_model_max_length, 8192);
    EXPECT_EQ(t.max_position_embeddings, 32768);
    // Vision: the real FastViTHD.
    const VisionConfig d;
    EXPECT_EQ(c.vision.image_size, 1024);
    EXPECT_EQ(c.vision.layers, d.layers);
    EXPECT_EQ(c.vision.embed_dims, d.embed_dims);
    EXPECT_EQ(c.vision.token_mixers, d.token_mixers);
    EXPECT_EQ(c.vision.num_tokens(), 256);
    EXPECT_EQ(c.mm_hidden_size, 3072);
    EXPECT_EQ(c.mm_projector_type, "mlp2x_gelu");
    EXPECT_EQ(c.mm_vision_tower, "mobileclip_l_1024");
    EXPECT_EQ(c.image_aspect_ratio, "pad");
    EXPECT_EQ(c.image_token_index, -200);
    EXPECT_FALSE(c.config_image_token_index.has_value());
}

TEST(Config, VisionConfigFromJson) {
    const VisionConfig v = VisionConfig::from_json(json::parse(R"({"image_size": 512, "embed_dims": [16,32,64,128,256]})"), "v.json");
    EXPECT_EQ(v.image_size, 512);
    EXPECT_EQ(v.layers, (std::vector<int>{2, 12, 24, 4, 2}));  // default kept
    EXPECT_EQ(v.out_channels(), 512);
    expect_error([] { VisionConfig::from_json(json::array(), "v.json"); }, {"v.json", "'vision_config'"});
    expect_error([] { VisionConfig::from_json(json{{"layers", {1, 2}}}, "v.json"); }, {"v.json", "'vision_config.layers'"});
}

TEST(Config, TowerSuffixGivesImageSize) {
    json j = official_05b();
    j["mm_vision_tower"] = "mobileclip_l_512";
    const ModelConfig c = ModelConfig::from_json(j, "config.json");
    EXPECT_EQ(c.vision.image_size, 512);
    EXPECT_EQ(c.vision.num_tokens(), 64);
    // vision_config without image_size: the suffix still applies, other keys override.
    j = tiny();
    j["mm_vision_tower"] = "mobileclip_small_256";
    j["vision_config"].erase("image_size");
    EXPECT_EQ(ModelConfig::from_json(j, "config.json").vision.image_size, 256);
    // no suffix and no image_size: the default
    j["mm_vision_tower"] = "custom_tower";
    j["vision_config"]["image_size"] = 128;
    EXPECT_EQ(ModelConfig::from_json(j, "config.json").vision.image_size, 128);
}

TEST(Config, OtherKeyForms) {
    json j = official_05b();
    j["eos_token_id"] = {151645, 151643};
    j["bos_token_id"] = nullptr;
    j.erase("num_key_value_heads");
    j["image_token_index"] = 151646;
    j["head_dim"] = 128;  // explicit head_dim overrides hidden / heads
    const ModelConfig c = ModelConfig::from_json(j, "config.json");
    EXPECT_EQ(c.text.eos_token_ids, (std::vector<std::int32_t>{151645, 151643}));
    EXPECT_FALSE(c.text.bos_token_id.has_value());
    EXPECT_EQ(c.text.num_key_value_heads, 14);
    EXPECT_EQ(c.text.head_dim, 128);
    EXPECT_EQ(c.image_token_index, -200);  // the llava constant; the config's value is kept aside
    EXPECT_EQ(c.config_image_token_index, 151646);
    j.erase("mm_hidden_size");  // derived
    j.erase("eos_token_id");
    const ModelConfig d = ModelConfig::from_json(j, "config.json");
    EXPECT_EQ(d.mm_hidden_size, 3072);
    EXPECT_TRUE(d.text.eos_token_ids.empty());
    j["rope_scaling"] = {{"rope_type", "default"}};
    EXPECT_NO_THROW(ModelConfig::from_json(j, "config.json"));
}

TEST(Config, GoldenTinyVlm) {
    const fs::path dir = fs::path(FASTVLM_SHARED_DIR) / "golden" / "tiny-vlm";
    if (!fs::exists(dir / "config.json")) GTEST_SKIP() << "golden data not found at " << dir;
    for (const fs::path& p : {dir, dir / "config.json"}) {
        const ModelConfig c = ModelConfig::load(p);
        EXPECT_EQ(c.source, (dir / "config.json").string());
        EXPECT_EQ(c.text.hidden_size, 64);
        EXPECT_EQ(c.text.intermediate_size, 128);
        EXPECT_EQ(c.text.num_hidden_layers, 2);
        EXPECT_EQ(c.text.num_attention_heads, 4);
        EXPECT_EQ(c.text.num_key_value_heads, 2);
        EXPECT_EQ(c.text.head_dim, 16);
        EXPECT_EQ(c.text.vocab_size, 300);
        EXPECT_TRUE(c.text.tie_word_embeddings);
        EXPECT_EQ(c.text.rope_theta, 1e6);
        EXPECT_EQ(c.text.rms_norm_eps, 1e-6);
        EXPECT_EQ(c.vision.image_size, 256);
        EXPECT_EQ(c.vision.layers, (std::vector<int>{2, 2, 2, 2, 2}));
        EXPECT_EQ(c.vision.embed_dims, (std::vector<int>{8, 16, 32, 64, 128}));
        EXPECT_EQ(c.vision.pos_emb_kernel_sizes, (std::vector<int>{0, 0, 0, 7, 7}));
        EXPECT_EQ(c.vision.out_channels(), 256);
        EXPECT_EQ(c.vision.se_channels(), 16);
        EXPECT_EQ(c.vision.num_tokens(), 16);
        EXPECT_EQ(c.vision.num_heads(3), 2);
        EXPECT_EQ(c.vision.num_heads(4), 4);
        EXPECT_EQ(c.mm_hidden_size, 256);
        EXPECT_EQ(c.image_token_index, -200);
    }
    // The golden vision-only config uses the same vision_config schema.
    const fs::path small = fs::path(FASTVLM_SHARED_DIR) / "golden" / "fastvithd_small_config.json";
    if (fs::exists(small)) {
        std::ifstream in(small);
        const json g = json::parse(in);
        json j = tiny();
        j["vision_config"] = g.at("vision_config");
        const ModelConfig c = ModelConfig::from_json(j, small.string());
        EXPECT_EQ(c.vision.out_channels(), g.at("vision").at("conv_exp_out_channels").get<int>());
        EXPECT_EQ(c.vision.se_channels(), g.at("vision").at("conv_exp_se_reduced_channels").get<int>());
        EXPECT_EQ(c.vision.num_tokens(), g.at("vision").at("num_image_tokens").get<int>());
        const VisionConfig v = VisionConfig::from_json(g.at("vision_config"), small.string());
        EXPECT_EQ(v.embed_dims, c.vision.embed_dims);
        EXPECT_EQ(v.image_size, 256);
        EXPECT_EQ(v.num_heads(4), g.at("vision").at("mhsa_num_heads_stage3_stage4").at(1).get<int>());
    }
}

TEST(Config, LoadErrors) {
    TempDir dir;
    expect_error([&] { ModelConfig::load(dir.path); }, {(dir.path / "config.json").string(), "no such file"});
    write_text(dir.path / "config.json", "{\"hidden_size\": 64,");
    expect_error([&] { ModelConfig::load(dir.path); }, {"config.json", "not valid JSON"});
    write_text(dir.path / "config.json", "[1, 2]");
    expect_error([&] { ModelConfig::load(dir.path); }, {"config.json", "expected a JSON object"});
    write_text(dir.path / "config.json", R"({"hidden_size": 64, "hidden_size": 65})");
    expect_error([&] { ModelConfig::load(dir.path); }, {"config.json", "duplicate JSON key 'hidden_size'"});
    write_text(dir.path / "config.json", official_05b().dump(1));
    EXPECT_EQ(ModelConfig::load(dir.path).text.hidden_size, 896);
}

TEST(Config, BadTextKeys) {
    auto with = [](const char* key, json v) {
        json j = official_05b();
        if (v.is_discarded()) j.erase(key);
        else j[key] = std::move(v);
        return j;
    };
    const json gone = json(json::value_t::discarded);
    expect_bad(with("hidden_size", gone), "hidden_size", "missing");
    expect_bad(with("num_hidden_layers", gone), "num_hidden_layers", "missing");
    expect_bad(with("vocab_size", gone), "vocab_size", "missing");
    expect_bad(with("hidden_size", "896"), "hidden_size", "expected an integer");
    expect_bad(with("hidden_size", 896.5), "hidden_size", "expected an integer");
    expect_bad(with("hidden_size", 1e12), "hidden_size");
    expect_bad(with("hidden_size", 4294967296LL), "hidden_size", "out of range");
    expect_bad(with("hidden_size", 900), "hidden_size", "not a multiple of num_attention_heads");
    expect_bad(with("num_key_value_heads", 3), "num_key_value_heads", "not a multiple");
    expect_bad(with("num_hidden_layers", 0), "num_hidden_layers");
    expect_bad(with("intermediate_size", -5), "intermediate_size");
    expect_bad(with("rms_norm_eps", 0), "rms_norm_eps");
    expect_bad(with("rope_theta", "big"), "rope_theta", "expected a number");
    expect_bad(with("tie_word_embeddings", 1), "tie_word_embeddings", "true or false");
    expect_bad(with("eos_token_id", "151645"), "eos_token_id");
    expect_bad(with("eos_token_id", json::array({151645, -1})), "eos_token_id", "negative");
    expect_bad(with("head_dim", 63), "head_dim", "odd");
    expect_bad(with("hidden_act", "gelu"), "hidden_act");
    expect_bad(with("rope_scaling", json{{"type", "linear"}, {"factor", 2.0}}), "rope_scaling");
    expect_bad(with("model_type", "llava_llama"), "model_type");
    expect_bad(with("mm_use_im_start_end", true), "mm_use_im_start_end");
}

TEST(Config, BadMultimodalKeys) {
    json j = official_05b();
    j["mm_projector_type"] = "linear";
    expect_bad(j, "mm_projector_type", "not supported");
    j.erase("mm_projector_type");
    expect_bad(j, "mm_projector_type", "missing");
    j = official_05b();
    j["mm_hidden_size"] = 1024;
    expect_bad(j, "mm_hidden_size", "3072");
    j = official_05b();
    j.erase("mm_vision_tower");
    expect_bad(j, "mm_vision_tower", "missing");
    j["mm_vision_tower"] = "openai/clip-vit-large-patch14-336";
    expect_bad(j, "mm_vision_tower", "vision_config");
    j["mm_vision_tower"] = "mobileclip_l";
    expect_bad(j, "mm_vision_tower");
    j["mm_vision_tower"] = "mobileclip_l_1000";  // not a multiple of 64
    expect_bad(j, "vision_config.image_size", "64");
    j = official_05b();
    j["image_aspect_ratio"] = "anyres";
    expect_bad(j, "image_aspect_ratio");
}

TEST(Config, BadVisionConfig) {
    auto with = [](const char* key, json v) {
        json j = tiny();
        j["vision_config"][key] = std::move(v);
        return j;
    };
    auto bad = [&](const char* key, json v, const std::string& also = "") {
        expect_bad(with(key, std::move(v)), std::string("vision_config.") + key, also);
    };
    EXPECT_NO_THROW(ModelConfig::from_json(tiny(), "config.json"));
    bad("layers", {2, 2, 2, 2}, "5 entries");
    bad("layers", {2, 2, 0, 2, 2}, "stage 2");
    bad("layers", {2, 2, -1, 2, 2});
    bad("layers", "2,2,2,2,2", "expected a list");
    bad("layers", {2, 2.5, 2, 2, 2}, "expected an integer");
    bad("embed_dims", {8, 16, 24, 64, 128}, "not a multiple of embed_dims[1]");
    bad("embed_dims", {8, 16, 32, 64, 0});
    bad("embed_dims", {8, 16, 32, 64, 128, 256}, "5 entries");
    bad("mlp_ratios", {4, 4, 4, 4, -1}, "stage 4");
    bad("mlp_ratios", {4, 4, 4, 4, 3.3}, "whole number");
    bad("token_mixers", {"repmixer", "repmixer", "repmixer", "attention", "mamba"}, "unknown token mixer 'mamba'");
    bad("token_mixers", {"repmixer", "repmixer", "repmixer", "attention", 5}, "strings");
    bad("pos_emb_kernel_sizes", {0, 0, 0, 6, 7}, "odd");
    bad("image_size", 200, "multiple of the total stride 64");
    bad("image_size", 0);
    bad("image_size", "256", "expected an integer");
    bad("head_dim", 48, "not a multiple of head_dim");
    bad("head_dim", 0);
    bad("down_patch_size", 6, "odd");
    bad("down_stride", 0);
    bad("down_stride", 100);
    bad("repmixer_kernel_size", 4, "odd");
    bad("cls_ratio", 1.5, "multiple");
    bad("cls_ratio", 0);
    bad("cls_ratio", 1e300);
    bad("se_reduction_ratio", 0.001, "squeeze-excite");
    bad("se_reduction_ratio", 2);
    bad("layer_norm_eps", -1e-5);
    bad("batch_norm_eps", 0);
    // image_size disagreeing with the tower-name suffix
    json j = tiny();
    j["mm_vision_tower"] = "mobileclip_small_256";
    j["vision_config"]["image_size"] = 512;
    expect_bad(j, "vision_config.image_size", "mobileclip_small_256");
    j = tiny();
    j["vision_config"] = "fastvithd";
    expect_bad(j, "vision_config", "expected an object");
    // mm_hidden_size follows the vision tower
    j = tiny();
    j["vision_config"]["cls_ratio"] = 4.0;
    expect_bad(j, "mm_hidden_size", "512");
    j.erase("mm_hidden_size");
    EXPECT_EQ(ModelConfig::from_json(j, "config.json").mm_hidden_size, 512);
}

// Random values in random keys: from_json either succeeds (and every derived size is then sane) or
// throws fastvlm::Error — never a crash, division by zero or overflow (UBSan).
TEST(ConfigFuzz, RandomValuesNeverCrash) {
    const char* top[] = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                         "vocab_size", "head_dim", "rope_theta", "rms_norm_eps", "eos_token_id", "bos_token_id", "mm_hidden_size",
                         "mm_vision_tower", "tokenizer_model_max_length", "tie_word_embeddings", "max_position_embeddings"};
    const char* vis[] = {"image_size", "layers", "embed_dims", "mlp_ratios", "token_mixers", "pos_emb_kernel_sizes",
                         "down_patch_size", "down_stride", "repmixer_kernel_size", "head_dim", "cls_ratio",
                         "se_reduction_ratio", "layer_norm_eps", "batch_norm_eps"};
    const json pool[] = {0, 1, -1, 2, 3, 7, 16, 64, 256, 1024, 65536, 2147483647, -2147483648LL, 4294967296LL, 0.5, 1e300,
                         -0.0, "x", "mobileclip_l_64", "mobileclip_l_99999", true, nullptr, json::array(),
                         json::array({1, 2, 3, 4, 5}), json::array({0, 0, 0, 0, 0}), json::array({64, 32, 16, 8, 4}),
                         json::array({"attention", "attention", "attention", "attention", "attention"}), json::object()};
    std::mt19937 rng(7);
    int ok = 0, rejected = 0;
    for (int iter = 0; iter < 2000; ++iter) {
        json j = (iter % 2) ? tiny() : official_05b();
        if (iter % 2 == 0 && rng() % 2) j["vision_config"] = json::object();
        for (int k = 0, n = 1 + int(rng() % 3); k < n; ++k) {
            const json& v = pool[rng() % std::size(pool)];
            if (rng() % 2) j[top[rng() % std::size(top)]] = v;
            else if (j.contains("vision_config")) j["vision_config"][vis[rng() % std::size(vis)]] = v;
        }
        try {
            const ModelConfig c = ModelConfig::from_json(j, "config.json");
            const VisionConfig& v = c.vision;
            ASSERT_GT(v.num_tokens(), 0);
            ASSERT_EQ(v.out_hw() * v.total_stride(), v.image_size);
            ASSERT_EQ(c.mm_hidden_size, v.out_channels());
            ASSERT_GT(v.se_channels(), 0);
            for (int s = 0; s < VisionConfig::kStages; ++s) {
                ASSERT_GT(v.mlp_hidden(s), 0);
                if (v.is_attention(s)) {
                    ASSERT_GT(v.num_heads(s), 0);
                }
            }
            ASSERT_EQ(c.text.num_attention_heads % c.text.num_key_value_heads, 0);
            ASSERT_GT(c.text.kv_dim(), 0);
            ++ok;
        } catch (const fastvlm::Error& e) {
            ASSERT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
            ++rejected;
        }
    }
    EXPECT_GT(ok, 100);
    EXPECT_GT(rejected, 500);
}
