// FastViTHD against golden data: ../shared/golden (the original apple/ml-fastvlm code, fused and
// unfused weights), tests/data/vision_* (fastvlm's own PyTorch reference) and tiny-vlm's tower.
// fp32 tolerance: max|err| ≤ 1e-4 × max|ref| on every intermediate (issue 3).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "fastvlm/vision/fastvithd.hpp"

namespace fastvlm::vision {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = fs::path(FASTVLM_SHARED_DIR) / "golden";
const fs::path kData = fs::path(FASTVLM_TEST_DATA_DIR);

struct Err {
    double max_err = 0, max_ref = 0;
    double rel() const { return max_ref > 0 ? max_err / max_ref : max_err; }
};

Err compare(std::span<const float> got, std::span<const float> ref) {
    Err e;
    EXPECT_EQ(got.size(), ref.size());
    for (std::size_t i = 0; i < std::min(got.size(), ref.size()); ++i) {
        e.max_ref = std::max(e.max_ref, double(std::fabs(ref[i])));
        const double d = std::fabs(double(got[i]) - double(ref[i]));
        e.max_err = std::isfinite(got[i]) ? std::max(e.max_err, d) : INFINITY;
    }
    return e;
}

struct Result {
    Tensor<float, 2> tokens;
    std::map<std::string, Tensor<float, 3>> stages;  // CHW
};

// chunked: every ConvFFN in row chunks of ≈37 pixels (the path the full-size model takes in stages 0–1).
template <class P>
Result run(const io::TensorStore& weights, const io::VisionConfig& cfg, const std::string& prefix, const io::TensorStore& io_store,
        bool* unfused = nullptr, bool chunked = false, unsigned threads = 2) {
    ThreadPool pool(threads);
    auto model = FastViTHD<P>::load(weights, cfg, prefix, &pool);
    if (chunked) model.set_options({0, 37});
    if (unfused) *unfused = model.loaded_unfused();
    const Index s = cfg.image_size;
    const auto px = io_store.load_tensor<4>("pixel_values", {1, 3, s, s});
    Result r;
    r.tokens = model.forward(TensorView<const float, 3>(px.data(), {3, s, s}), &pool,
                             [&](const std::string& name, TensorView<const float, 3> hwc) { r.stages[name] = hwc_to_chw(hwc); });
    return r;
}

// Compares every stored intermediate that the run produced and the tokens with `features_name`.
// Returns the worst relative error; prints each.
double check_all(const Result& r, const io::TensorStore& io_store, const std::string& features_name, double tol,
                 const std::string& label) {
    double worst = 0;
    int compared = 0;
    for (const auto& name : io_store.names()) {
        auto it = r.stages.find(name);
        if (it == r.stages.end()) continue;
        const auto& ref = io_store.at(name);
        if (ref.shape.size() != 4) { ADD_FAILURE() << name; continue; }
        const auto refv = io_store.load_f32(name, std::span<const Index>(ref.shape));
        EXPECT_EQ(it->second.dim(0), ref.shape[1]) << name;
        EXPECT_EQ(it->second.dim(1), ref.shape[2]) << name;
        EXPECT_EQ(it->second.dim(2), ref.shape[3]) << name;
        const Err e = compare(it->second.span(), refv);
        EXPECT_LE(e.max_err, tol * e.max_ref) << label << " " << name << ": max|err| " << e.max_err << " max|ref| " << e.max_ref;
        worst = std::max(worst, e.rel());
        ++compared;
    }
    const auto& fr = io_store.at(features_name);
    const auto fv = io_store.load_f32(features_name, std::span<const Index>(fr.shape));
    EXPECT_EQ(fr.shape[1], r.tokens.dim(0));
    EXPECT_EQ(fr.shape[2], r.tokens.dim(1));
    const Err e = compare(r.tokens.span(), fv);
    EXPECT_LE(e.max_err, tol * e.max_ref) << label << " " << features_name;
    std::printf("[ %-34s ] %2d intermediates, worst rel err %.3g; %s: max|err| %.3g, max|ref| %.3g, rel %.3g\n",
                label.c_str(), compared, worst, features_name.c_str(), e.max_err, e.max_ref, e.rel());
    EXPECT_GT(compared, 10) << label << ": too few intermediates matched by name";
    return std::max(worst, e.rel());
}

io::VisionConfig shared_config() { return load_vision_config(kShared / "fastvithd_small_config.json"); }

// ---- ../shared/golden ---------------------------------------------------------------------------------
TEST(FastViTHDGolden, SharedFusedFp32) {
    const auto io_store = io::TensorStore::open(kShared / "fastvithd_small_io.safetensors");
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    bool unfused = true;
    const Result r = run<policy::fp32>(w, shared_config(), "", io_store, &unfused);
    EXPECT_FALSE(unfused);
    check_all(r, io_store, "image_features_fused", 1e-4, "shared fused fp32");
}

TEST(FastViTHDGolden, SharedUnfusedFp32) {
    const auto io_store = io::TensorStore::open(kShared / "fastvithd_small_io.safetensors");
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights.safetensors");
    bool unfused = false;
    const Result r = run<policy::fp32>(w, shared_config(), "", io_store, &unfused);
    EXPECT_TRUE(unfused);
    check_all(r, io_store, "image_features", 1e-4, "shared unfused fp32");
}

TEST(FastViTHDGolden, SharedFusedFp32ChunkedFfn) {
    const auto io_store = io::TensorStore::open(kShared / "fastvithd_small_io.safetensors");
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    for (unsigned threads : {1u, 3u}) {
        const Result r = run<policy::fp32>(w, shared_config(), "", io_store, nullptr, true, threads);
        check_all(r, io_store, "image_features_fused", 1e-4, "shared fused fp32 chunked " + std::to_string(threads) + "T");
    }
}

TEST(FastViTHDGolden, SharedTinyVlmTowerWithPrefix) {
    const auto io_store = io::TensorStore::open(kShared / "tiny_vlm_io.safetensors");
    const auto w = io::TensorStore::open(kShared / "tiny-vlm");
    const auto cfg = io::ModelConfig::load(kShared / "tiny-vlm").vision;
    EXPECT_EQ(detect_prefix(w), kCheckpointPrefix);
    const Result r = run<policy::fp32>(w, cfg, kCheckpointPrefix, io_store);
    check_all(r, io::TensorStore::open(kShared / "fastvithd_small_io.safetensors"), "image_features_fused", 1e-4,
              "tiny-vlm tower fp32 (stages)");
    const auto& fr = io_store.at("image_features");
    const Err e = compare(r.tokens.span(), io_store.load_f32("image_features", std::span<const Index>(fr.shape)));
    EXPECT_LE(e.max_err, 1e-4 * e.max_ref);
}

// Lower precisions: the 1×1 convs / MHSA projections run with rounded weights and activations
// (bf16: 8-bit mantissa; int8: Q8 blocks of 32). Measured worst relative error over all intermediates:
// bf16 4.7e-3, int8 7.6e-3 (docs/vision.md); the tolerances leave ≈3× margin.
TEST(FastViTHDGolden, SharedFusedBf16) {
    const auto io_store = io::TensorStore::open(kShared / "fastvithd_small_io.safetensors");
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    const Result r = run<policy::bf16>(w, shared_config(), "", io_store);
    check_all(r, io_store, "image_features_fused", 1.5e-2, "shared fused bf16");
}

TEST(FastViTHDGolden, SharedFusedInt8) {
    const auto io_store = io::TensorStore::open(kShared / "fastvithd_small_io.safetensors");
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    const Result r = run<policy::int8>(w, shared_config(), "", io_store);
    check_all(r, io_store, "image_features_fused", 2.5e-2, "shared fused int8");
}

// ---- tests/data (fastvlm's own reference, other shapes) --------------------------------------------------
TEST(FastViTHDOwnGolden, VisionSmallFusedAndUnfused) {
    const fs::path d = kData / "vision_small";
    const auto cfg = load_vision_config(d / "config.json");
    const auto io_store = io::TensorStore::open(d / "io.safetensors");
    const Result f = run<policy::fp32>(io::TensorStore::open(d / "weights_fused.safetensors"), cfg, "", io_store);
    check_all(f, io_store, "image_features_fused", 1e-4, "vision_small fused fp32");
    const Result u = run<policy::fp32>(io::TensorStore::open(d / "weights_unfused.safetensors"), cfg, "", io_store);
    check_all(u, io_store, "image_features", 1e-4, "vision_small unfused fp32");
    const Result b = run<policy::bf16>(io::TensorStore::open(d / "weights_fused.safetensors"), cfg, "", io_store);
    check_all(b, io_store, "image_features_fused", 1.5e-2, "vision_small fused bf16");
    const Result q = run<policy::int8>(io::TensorStore::open(d / "weights_fused.safetensors"), cfg, "", io_store);
    check_all(q, io_store, "image_features_fused", 2.5e-2, "vision_small fused int8");
}

TEST(FastViTHDOwnGolden, Vision192Fused) {
    const fs::path d = kData / "vision_192";
    const auto cfg = load_vision_config(d / "config.json");
    const auto io_store = io::TensorStore::open(d / "io.safetensors");
    const Result f = run<policy::fp32>(io::TensorStore::open(d / "weights_fused.safetensors"), cfg, "", io_store);
    check_all(f, io_store, "image_features_fused", 1e-4, "vision_192 fused fp32");
    const Result c = run<policy::fp32>(io::TensorStore::open(d / "weights_fused.safetensors"), cfg, "", io_store, nullptr, true);
    check_all(c, io_store, "image_features_fused", 1e-4, "vision_192 fused fp32 chunked");
}

}  // namespace
}  // namespace fastvlm::vision

namespace fastvlm::vision {
namespace {

// Copies the golden fused weights to `path`, dropping `drop` and giving `reshape` a wrong shape.
void write_modified(const fs::path& path, const std::string& drop, const std::string& reshape) {
    const auto src = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    std::vector<io::WriteTensor> ts;
    for (const auto& name : src.names()) {
        if (name == drop) continue;
        const auto& t = src.at(name);
        io::WriteTensor w{name, t.dtype, t.shape, t.data};
        if (name == reshape) w.shape = {t.numel()};
        ts.push_back(w);
    }
    io::write_safetensors(path, std::span<const io::WriteTensor>(ts));
}

std::string load_error(const fs::path& file) {
    try {
        const auto store = io::TensorStore::open(file);
        (void)FastViTHD<policy::fp32>::load(store, shared_config(), "");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(FastViTHDErrors, MissingTensorNamesTensorAndFile) {
    const fs::path p = fs::path(FASTVLM_BINARY_DIR) / "fastvithd_missing.safetensors";
    write_modified(p, "network.4.1.convffn.fc2.bias", "");
    const std::string msg = load_error(p);
    EXPECT_NE(msg.find("network.4.1.convffn.fc2.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("fastvithd_missing.safetensors"), std::string::npos) << msg;
}

TEST(FastViTHDErrors, WrongShapeNamesTensorAndShapes) {
    const fs::path p = fs::path(FASTVLM_BINARY_DIR) / "fastvithd_badshape.safetensors";
    write_modified(p, "", "network.7.0.token_mixer.qkv.weight");
    const std::string msg = load_error(p);
    EXPECT_NE(msg.find("network.7.0.token_mixer.qkv.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[192, 64]"), std::string::npos) << msg;  // expected shape [3C, C]
}

TEST(FastViTHDErrors, NoStemAndConfigMismatch) {
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    EXPECT_THROW((void)FastViTHD<policy::fp32>::load(w, shared_config(), "model.vision_tower.vision_tower.model."), Error);
    io::VisionConfig wrong = shared_config();
    wrong.embed_dims = {8, 16, 32, 64, 256};  // weights hold 128 channels in stage 4
    EXPECT_THROW((void)FastViTHD<policy::fp32>::load(w, wrong, ""), Error);
}

TEST(FastViTHDErrors, BadPixelShape) {
    const auto w = io::TensorStore::open(kShared / "fastvithd_small_weights_fused.safetensors");
    const auto m = FastViTHD<policy::fp32>::load(w, shared_config(), "");
    Tensor<float, 3> px = Tensor<float, 3>::zeros({4, 64, 64});
    EXPECT_THROW((void)m.forward(px.view(), nullptr), Error);
    // Any other size works: (S/64)² tokens, here 128 → 2×2 (the conv arithmetic of spec §1.3).
    Tensor<float, 3> small = Tensor<float, 3>::zeros({3, 128, 128});
    const auto out = m.forward(small.view(), nullptr);
    EXPECT_EQ(out.dim(0), 4);
    EXPECT_EQ(out.dim(1), 256);
    // Odd, non-square and tiny maps: every stage still has ≥ 1 pixel (conv_out_size of k/2 padding).
    ThreadPool pool(2);
    for (auto [h, w] : {std::pair<Index, Index>{1, 1}, {70, 45}, {3, 200}}) {
        Tensor<float, 3> p = Tensor<float, 3>::zeros({3, h, w});
        for (Index i = 0; i < p.size(); ++i) p.data()[i] = float(i % 17) / 17.f;
        const auto o = m.forward(p.view(), &pool);
        Index hh = h, ww = w;
        for (int i = 0; i < 6; ++i) hh = conv_out_size(hh, i < 2 ? 3 : 7, 2), ww = conv_out_size(ww, i < 2 ? 3 : 7, 2);
        EXPECT_EQ(o.dim(0), hh * ww) << h << "x" << w;
        for (float v : o.span()) ASSERT_TRUE(std::isfinite(v));
    }
}

}  // namespace
}  // namespace fastvlm::vision
