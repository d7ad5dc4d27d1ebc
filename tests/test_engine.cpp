// The Engine (engine.hpp): continuous batching gives every request the tokens it gets alone through
// a Session (greedy and seeded sampling, one or several images, chunked prefill mixed with decode
// rows); bad requests (never fits, image count, undecodable image, context, options) fail alone with
// their own error and free their KV pages; queue full, cancel, timeout, shutdown; several threads
// submitting and cancelling (run under ThreadSanitizer by scripts/test.sh); metrics.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "fastvlm/fastvlm.hpp"
#include "model_support.hpp"
#include "support.hpp"

using namespace fastvlm;
using namespace test_support;
namespace fs = std::filesystem;

namespace {

// The tiny golden model with the test tokenizer, loaded once per process.
const Model<>& tiny() { return tiny_text_model("test_engine_"); }

const std::vector<io::Image>& images() {
    static const std::vector<io::Image> v = {test_image(40, 30, 1), test_image(17, 64, 2), test_image(64, 64, 3),
                                             test_image(9, 9, 4)};
    return v;
}

struct Ref {
    std::vector<std::int32_t> ids;
    std::string text;
    StopReason stop;
};

// What a Session generates for `user` (with "<image>\n" per image in front when it has none).
Ref session_ref(const Model<>& m, const std::string& user, const std::vector<const io::Image*>& imgs, int max_new,
                const SamplingOptions& sampling = {}, std::optional<text::KVType> kv = {}) {
    Session s(m, {.kv_type = kv});
    std::string content = user;
    if (content.find("<image>") == std::string::npos)
        for (std::size_t i = 0; i < imgs.size(); ++i) content = "<image>\n" + content;
    const text::ChatMessage msg{"user", content};
    const auto prompt = text::chat_prompt(std::span(&msg, 1));
    const auto ids = text::tokenize_with_image(prompt, [&](const std::string& c) { return m.tokenizer().encode(c); });
    std::vector<Tensor<float, 2>> toks;
    std::vector<TensorView<const float, 2>> views;
    for (const auto* im : imgs) toks.push_back(m.project(m.encode_image(m.preprocess(*im).view())));
    for (const auto& t : toks) views.push_back(t.view());
    s.prefill(ids, views);
    text::Sampler sampler(sampling);
    Ref r{{}, {}, StopReason::max_tokens};
    std::vector<float> logits(s.logits().begin(), s.logits().end());
    for (int i = 0; i < max_new; ++i) {
        const auto id = sampler.sample(logits, std::size_t(m.valid_vocab()));
        if (std::find(m.stop_ids().begin(), m.stop_ids().end(), id) != m.stop_ids().end()) {
            r.stop = StopReason::eos;
            break;
        }
        r.ids.push_back(id);
        if (i + 1 < max_new) {
            const auto l = s.step(id);
            logits.assign(l.begin(), l.end());
        }
    }
    r.text = m.tokenizer().decode(r.ids, true);
    return r;
}

Request request(const std::string& prompt, const std::vector<const io::Image*>& imgs, int max_new) {
    Request q;
    q.prompt = prompt;
    for (const auto* im : imgs) q.images.push_back(ImageInput::decoded(*im));
    q.max_new_tokens = max_new;
    return q;
}

struct Case {
    std::string prompt;
    std::vector<const io::Image*> imgs;
    int max_new;
    SamplingOptions sampling = {};
};

std::vector<Case> mixed_cases() {
    const auto& im = images();
    return {
        {"Describe the image.", {&im[0]}, 14},
        {"hello there, what is this?", {}, 11},
        {"<image>\nCompare it with <image> please.", {&im[1], &im[2]}, 12},
        {"What colour?", {&im[3]}, 9},
        {"Three: <image> <image> <image>", {&im[0], &im[2], &im[1]}, 10},
        {"a b c d e f g h i j k l m n o p q r s t u v w x y z", {}, 13},
        {"sample me", {&im[2]}, 12, {.temperature = 0.9f, .top_k = 40, .top_p = 0.95f, .seed = 7}},
        {"sample me too", {}, 12, {.temperature = 1.3f, .seed = 99}},
    };
}

void expect_same(const Result& r, const Ref& ref, const std::string& what) {
    EXPECT_TRUE(r.ok()) << what << ": " << r.error;
    EXPECT_EQ(r.ids, ref.ids) << what;
    EXPECT_EQ(r.text, ref.text) << what;
    EXPECT_EQ(r.stop, ref.stop) << what;
}

// Nothing runs: the only KV pages in use or reserved are the prefix cache's.
void expect_only_cached_pages(const EngineStats& st) {
    EXPECT_EQ(st.kv_pages_used, st.prefix_cache.pages);
    EXPECT_EQ(st.kv_pages_reserved, st.prefix_cache.pages);
}

}  // namespace

// Eight requests at once (one to three images, text only, seeded sampling) with short prefill
// chunks, so prefill rows of new requests share steps with decode rows of running ones; and with
// prefill_first (batch work), where no step carries both.
TEST(Engine, BatchedRequestsEqualSessionTokens) {
    const auto& m = tiny();
    for (auto kv : {text::KVType::bf16, text::KVType::f32}) {
        SCOPED_TRACE(kv == text::KVType::bf16 ? "bf16 KV" : "f32 KV");
        const auto cases = mixed_cases();
        for (auto [chunk, prefill_first] : {std::pair{Index(7), false}, {Index(256), false}, {Index(7), true}}) {
            SCOPED_TRACE(prefill_first ? "prefill first" : "decode rows in every step");
            Engine e(m, {.max_running = 5, .kv_type = kv, .prefill_chunk = chunk, .prefill_first = prefill_first});
            std::vector<RequestHandle> hs;
            for (const auto& c : cases) {
                auto q = request(c.prompt, c.imgs, c.max_new);
                q.sampling = c.sampling;
                hs.push_back(e.submit(std::move(q)));
            }
            for (std::size_t i = 0; i < cases.size(); ++i) {
                const auto& c = cases[i];
                const Ref ref = session_ref(m, c.prompt, c.imgs, c.max_new, c.sampling, kv);
                const Result r = hs[i].wait();
                expect_same(r, ref, "case " + std::to_string(i) + " chunk " + std::to_string(chunk));
                EXPECT_EQ(r.prompt_tokens, r.timings.prefill_tokens + r.timings.cached_tokens);
                EXPECT_GT(r.timings.total_ms, 0);
            }
            e.drain();
            const auto st = e.stats();
            EXPECT_EQ(st.requests_ok, cases.size());
            EXPECT_EQ(st.images, 8u);
            expect_only_cached_pages(st);
            EXPECT_EQ(st.running, 0);
            EXPECT_GT(st.decode_only_tokens, 0u);
            // prefill_first: every step with decode rows is a decode-only step (the same sums, added in the same order)
            if (prefill_first) EXPECT_EQ(st.decode_busy_s, st.decode_only_s);
        }
    }
}

// The same request alone and among others: same tokens (its sampler is its own).
TEST(Engine, OneAtATimeEqualsBatched) {
    const auto& m = tiny();
    const auto cases = mixed_cases();
    std::vector<Result> alone, together;
    {
        Engine e(m, {.max_running = 1});
        for (const auto& c : cases) {
            auto q = request(c.prompt, c.imgs, c.max_new);
            q.sampling = c.sampling;
            alone.push_back(e.run(std::move(q)));
        }
    }
    {
        Engine e(m, {.max_running = 8, .prefill_chunk = 16});
        std::vector<RequestHandle> hs;
        for (const auto& c : cases) {
            auto q = request(c.prompt, c.imgs, c.max_new);
            q.sampling = c.sampling;
            hs.push_back(e.submit(std::move(q)));
        }
        for (auto& h : hs) together.push_back(h.wait());
    }
    for (std::size_t i = 0; i < cases.size(); ++i) {
        EXPECT_TRUE(alone[i].ok() && together[i].ok());
        EXPECT_EQ(alone[i].ids, together[i].ids) << "case " << i;
    }
}

TEST(Engine, StreamingAndStopStrings) {
    const auto& m = tiny();
    const auto& im = images();
    Engine e(m);
    std::string streamed;
    int calls = 0;
    auto q = request("Describe the image.", {&im[0]}, 20);
    q.on_token = [&](std::int32_t, std::string_view t) {
        streamed += t;
        ++calls;
    };
    const Result r = e.run(std::move(q));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(streamed, r.text);
    EXPECT_EQ(calls, int(r.ids.size()) + 1);  // one per token and the final −1
    ASSERT_GE(r.text.size(), 6u) << "the tiny model's answer is too short for this test: " << r.text;
    // A stop string from the middle of that answer: generation ends before it, the streamed text too.
    const std::string stop = r.text.substr(3, 2);
    const std::string expect = r.text.substr(0, r.text.find(stop));
    std::string streamed2;
    auto q2 = request("Describe the image.", {&im[0]}, 20);
    q2.stop_strings = {"never appears in this text \x01", stop};
    q2.on_token = [&](std::int32_t, std::string_view t) { streamed2 += t; };
    const Result r2 = e.run(std::move(q2));
    ASSERT_TRUE(r2.ok()) << r2.error;
    EXPECT_EQ(r2.text, expect);
    EXPECT_EQ(streamed2, expect);
    EXPECT_EQ(r2.stop, StopReason::eos);
    EXPECT_LE(r2.ids.size(), r.ids.size());
}

TEST(Engine, StopTextHoldsBackPrefixes) {
    detail::StopText s({"END", "xy"});
    EXPECT_EQ(s.push("abcE"), "abc");  // "E" may start END
    EXPECT_EQ(s.push("N"), "");
    EXPECT_EQ(s.push("Dzzz"), "");  // hit
    EXPECT_TRUE(s.hit());
    EXPECT_EQ(s.text(), "abc");
    detail::StopText t({"END"});
    EXPECT_EQ(t.push("aEN"), "a");
    EXPECT_EQ(t.push("d"), "ENd");
    EXPECT_EQ(t.flush(), "");
    EXPECT_FALSE(t.hit());
    EXPECT_EQ(t.text(), "aENd");
}

// Every kind of bad request ends alone, with its own error, and frees its pages; the good requests
// submitted around them produce exactly what they produce alone.
TEST(Engine, BadRequestsFailAloneWithClearErrors) {
    const auto& m = tiny();
    const auto& im = images();
    const auto good0 = session_ref(m, "Describe the image.", {&im[0]}, 12);
    const auto good1 = session_ref(m, "hello there", {}, 12);
    // KV budget: 64 pages of 4 positions = 256 positions (each good request needs < 60).
    const std::size_t per_pos = text::KVPool::bytes_per_position(m.decoder().kv_shape(), text::KVType::bf16);
    Engine e(m, {.max_running = 4, .kv_budget_bytes = 64 * 4 * per_pos, .kv_page = 4});

    std::vector<std::pair<Request, std::pair<ErrorKind, std::string>>> bad;
    bad.push_back({request("one <image> two <image>", {&im[0]}, 8), {ErrorKind::invalid_request, "2 image placeholders"}});
    bad.push_back({request("no slots", {}, 8), {ErrorKind::none, ""}});  // replaced below
    bad.back().first.prompt_ids = {1, 2, text::kImageTokenIndex, 3};
    bad.back().second = {ErrorKind::invalid_request, "1 image placeholder"};
    {
        Request q = request("what is it?", {}, 8);
        q.images.push_back(ImageInput::encoded("this is not an image at all", "junk.png"));
        bad.push_back({q, {ErrorKind::invalid_request, "junk.png"}});
    }
    bad.push_back({request("Describe.", {&im[1]}, 400), {ErrorKind::too_large, "KV budget"}});
    bad.push_back({request("Describe.", {}, 100000), {ErrorKind::too_large, "context of 8192"}});
    {
        Request q = request("x", {}, 8);
        q.sampling.top_p = 0;
        bad.push_back({q, {ErrorKind::invalid_request, "top_p"}});
    }
    {
        Request q = request("x", {}, 8);
        q.prompt_ids = {1, 2, 100000};
        bad.push_back({q, {ErrorKind::invalid_request, "outside the vocabulary"}});
    }
    bad.push_back({request("x", {}, -1), {ErrorKind::invalid_request, "max_new_tokens"}});
    {
        Request q = request("x", {}, 8);
        q.images.push_back(ImageInput::file("/nonexistent/dir/cat.png"));
        bad.push_back({q, {ErrorKind::invalid_request, "/nonexistent/dir/cat.png"}});
    }

    auto h0 = e.submit(request("Describe the image.", {&im[0]}, 12));
    std::vector<RequestHandle> hb;
    for (auto& [q, _] : bad) hb.push_back(e.submit(q));
    auto h1 = e.submit(request("hello there", {}, 12));
    for (std::size_t i = 0; i < bad.size(); ++i) {
        const Result r = hb[i].wait();
        const auto& [kind, needle] = bad[i].second;
        EXPECT_EQ(r.error_kind, kind) << "bad request " << i << ": " << r.error;
        EXPECT_NE(r.error.find(needle), std::string::npos) << "bad request " << i << ": '" << r.error << "' lacks '" << needle << "'";
        EXPECT_EQ(r.stop, StopReason::error);
        EXPECT_TRUE(r.ids.empty());
    }
    expect_same(h0.wait(), good0, "good request before the bad ones");
    expect_same(h1.wait(), good1, "good request after the bad ones");
    e.drain();
    const auto st = e.stats();
    expect_only_cached_pages(st);
    EXPECT_EQ(st.requests_ok, 2u);
    EXPECT_EQ(st.requests_failed, bad.size());
    const auto j = e.metrics_json();
    EXPECT_EQ(j["counters"]["requests_total"]["status=too_large"], 2);  // KV budget, context
    EXPECT_EQ(j["counters"]["requests_total"]["status=invalid_request"], int(bad.size()) - 2);
}

// A request whose worst case does not fit the pages left waits for them (admission control).
TEST(Engine, AdmissionWaitsForKvPages) {
    const auto& m = tiny();
    const std::size_t per_pos = text::KVPool::bytes_per_position(m.decoder().kv_shape(), text::KVType::bf16);
    // Room for one request of ~40 positions at a time.
    Engine e(m, {.max_running = 4, .kv_budget_bytes = 24 * 4 * per_pos, .kv_page = 4});
    std::vector<RequestHandle> hs;
    std::vector<Ref> refs;
    for (int i = 0; i < 3; ++i) {
        const std::string p = "request number " + std::to_string(i);
        hs.push_back(e.submit(request(p, {}, 16)));
        refs.push_back(session_ref(m, p, {}, 16));
    }
    for (int i = 0; i < 3; ++i) expect_same(hs[std::size_t(i)].wait(), refs[std::size_t(i)], "request " + std::to_string(i));
    EXPECT_GT(hs[2].wait().timings.queue_ms, 0);
    expect_only_cached_pages(e.stats());
}

// Holds an engine's only running slot: its request ("block the only slot", `tokens` tokens) waits
// in its first on_token call until release().
struct SlotBlocker {
    std::promise<void> go;
    std::shared_future<void> released = go.get_future().share();
    std::atomic<int> tokens{0};
    RequestHandle h;
    SlotBlocker(Engine& e, int n) {
        auto r = request("block the only slot", {}, n);
        r.on_token = [this](std::int32_t, std::string_view) {
            if (tokens++ == 0) released.wait();
        };
        h = e.submit(r);
        while (tokens.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Result release() {
        go.set_value();
        return h.wait();
    }
};

// max_queued = 0: a request for a free slot is accepted, one more while it runs is refused.
TEST(Engine, ZeroQueueAcceptsWhileASlotIsFree) {
    const auto& m = tiny();
    Engine e(m, {.max_running = 1, .max_queued = 0});
    EXPECT_TRUE(e.run(request("hello there", {}, 3)).ok());
    SlotBlocker block(e, 4);
    try {
        e.submit(request("no room", {}, 3));
        ADD_FAILURE() << "submit with the only slot taken and max_queued = 0 did not throw";
    } catch (const EngineError& err) {
        EXPECT_EQ(err.kind(), ErrorKind::queue_full);
        EXPECT_NE(std::string(err.what()).find("max_queued = 0"), std::string::npos) << err.what();
    }
    EXPECT_TRUE(block.release().ok());
    EXPECT_TRUE(e.run(request("hello again", {}, 3)).ok());
}

// Queue full, cancel while queued, timeout while queued, cancel while running.
TEST(Engine, QueueFullCancelAndTimeout) {
    const auto& m = tiny();
    Engine e(m, {.max_running = 1, .max_queued = 3});
    SlotBlocker block(e, 6);
    // The slot is taken: three wait, the fourth is refused.
    auto hq1 = e.submit(request("queued one", {}, 5));
    auto q2 = request("queued two", {}, 5);
    q2.timeout_s = 0.02;
    auto hq2 = e.submit(q2);
    auto hq3 = e.submit(request("queued three", {}, 5));
    try {
        e.submit(request("one too many", {}, 5));
        ADD_FAILURE() << "submit beyond max_queued did not throw";
    } catch (const EngineError& err) {
        EXPECT_EQ(err.kind(), ErrorKind::queue_full);
        EXPECT_NE(std::string(err.what()).find("max_queued"), std::string::npos) << err.what();
    }
    hq1.cancel();
    std::this_thread::sleep_for(std::chrono::milliseconds(40));  // past hq2's deadline
    const Result rb = block.release(), r1 = hq1.wait(), r2 = hq2.wait(), r3 = hq3.wait();
    EXPECT_TRUE(rb.ok()) << rb.error;
    EXPECT_EQ(rb.ids, session_ref(m, "block the only slot", {}, 6).ids);
    EXPECT_EQ(r1.error_kind, ErrorKind::cancelled) << r1.error;
    EXPECT_EQ(r1.stop, StopReason::cancelled);
    EXPECT_EQ(r2.error_kind, ErrorKind::timeout) << r2.error;
    EXPECT_EQ(r2.stop, StopReason::timeout);
    EXPECT_NE(r2.error.find("timed out"), std::string::npos);
    expect_same(r3, session_ref(m, "queued three", {}, 5), "the request behind the failed ones");

    // Cancel while running: the request ends at the next step with what it has.
    std::promise<RequestHandle> self;
    std::shared_future<RequestHandle> me = self.get_future().share();
    std::atomic<int> n{0};
    auto qc = request("cancel me after three tokens", {}, 40);
    qc.stop_ids = {-5};  // never stops by itself
    qc.on_token = [&](std::int32_t, std::string_view) {
        if (++n == 3) me.get().cancel();
    };
    self.set_value(e.submit(qc));
    const Result rc = me.get().wait();
    EXPECT_EQ(rc.error_kind, ErrorKind::cancelled);
    EXPECT_EQ(rc.ids.size(), 3u);
    e.drain();
    expect_only_cached_pages(e.stats());
}

TEST(Engine, TimeoutWhileRunningAndThrowingCallback) {
    const auto& m = tiny();
    Engine e(m, {.max_running = 2});
    auto q = request("slow consumer", {}, 200);
    q.stop_ids = {-5};
    q.timeout_s = 0.05;
    q.on_token = [](std::int32_t, std::string_view) { std::this_thread::sleep_for(std::chrono::milliseconds(5)); };
    auto ht = e.submit(q);
    auto qt = request("throwing consumer", {}, 20);
    qt.stop_ids = {-5};
    qt.on_token = [](std::int32_t, std::string_view) { throw std::runtime_error("client went away"); };
    auto hx = e.submit(qt);
    auto hg = e.submit(request("bystander", {}, 10));
    const Result rt = ht.wait(), rx = hx.wait(), rg = hg.wait();
    EXPECT_EQ(rt.error_kind, ErrorKind::timeout) << rt.error;
    EXPECT_GT(rt.ids.size(), 0u);
    EXPECT_LT(rt.ids.size(), 200u);
    EXPECT_EQ(rx.error_kind, ErrorKind::invalid_request);
    EXPECT_NE(rx.error.find("client went away"), std::string::npos) << rx.error;
    EXPECT_EQ(rx.ids.size(), 1u);
    expect_same(rg, session_ref(m, "bystander", {}, 10), "bystander");
}

// Several threads submit and cancel at once (the ThreadSanitizer target).
TEST(Engine, ManyThreadsSubmitAndCancel) {
    const auto& m = tiny();
    Engine e(m, {.max_running = 4, .prefill_chunk = 8});
    const int threads = 4, per = 5;
    std::vector<std::vector<Result>> out(threads);
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
            for (int i = 0; i < per; ++i) {
                auto q = request("thread " + std::to_string(t) + " request " + std::to_string(i), {}, 8);
                auto h = e.submit(q);
                if ((t + i) % 3 == 0) h.cancel();
                out[std::size_t(t)].push_back(h.wait());
            }
        });
    for (auto& t : ts) t.join();
    for (int t = 0; t < threads; ++t)
        for (int i = 0; i < per; ++i) {
            const Result& r = out[std::size_t(t)][std::size_t(i)];
            if ((t + i) % 3 == 0) {
                EXPECT_TRUE(r.ok() || r.error_kind == ErrorKind::cancelled) << r.error;
            } else {
                expect_same(r, session_ref(m, "thread " + std::to_string(t) + " request " + std::to_string(i), {}, 8),
                            "thread " + std::to_string(t) + " request " + std::to_string(i));
            }
        }
    e.drain();
    expect_only_cached_pages(e.stats());
}

// SlicedRunner (engine/sliced_runner.hpp): a function runs in slices between resume() calls, its
// exception comes back through error(), and abandon() unwinds it at its next break point (its locals'
// destructors run) whether it is suspended or not started yet; the runner is reusable afterwards.
TEST(SlicedRunner, SlicesErrorsAndAbandon) {
    SlicedRunner r;
    int steps = 0;
    bool unwound = false;
    struct Guard {
        bool* flag;
        ~Guard() { *flag = true; }
    };
    auto counting = [&](int n) {
        return [&, n](const SlicedRunner::Yield& yield) {
            Guard g{&unwound};
            for (int i = 0; i < n; ++i) {
                ++steps;
                yield();
            }
        };
    };
    EXPECT_FALSE(r.busy());
    r.start(counting(5));
    EXPECT_TRUE(r.busy());
    int resumes = 1;
    while (!r.resume(std::chrono::nanoseconds(0))) {
        EXPECT_EQ(steps, resumes);  // one break point per slice with a zero budget
        ++resumes;
    }
    EXPECT_EQ(resumes, 6);
    EXPECT_EQ(steps, 5);
    EXPECT_TRUE(unwound);
    EXPECT_FALSE(r.error());
    EXPECT_FALSE(r.busy());

    steps = 0;
    r.start(counting(50));
    EXPECT_TRUE(r.resume(SlicedRunner::Clock::duration::max()));  // no budget limit: to the end at once
    EXPECT_EQ(steps, 50);

    r.start([](const SlicedRunner::Yield& yield) {
        yield();
        fail("bad pixels in ", "slice 2");
    });
    EXPECT_FALSE(r.resume(std::chrono::nanoseconds(0)));
    EXPECT_TRUE(r.resume(std::chrono::nanoseconds(0)));
    ASSERT_TRUE(r.error());
    try {
        std::rethrow_exception(r.error());
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("bad pixels in slice 2"), std::string::npos) << e.what();
    }

    steps = 0, unwound = false;
    r.start(counting(100));
    EXPECT_FALSE(r.resume(std::chrono::nanoseconds(0)));
    EXPECT_FALSE(r.resume(std::chrono::nanoseconds(0)));
    r.abandon();  // suspended at its second break point
    EXPECT_FALSE(r.busy());
    EXPECT_TRUE(unwound);
    EXPECT_EQ(steps, 2);

    steps = 0;
    r.start(counting(3));
    r.abandon();  // never resumed: never runs
    EXPECT_EQ(steps, 0);
    r.start(counting(3));
    EXPECT_TRUE(r.resume(SlicedRunner::Clock::duration::max()));
    EXPECT_EQ(steps, 3);

    unwound = false;
    {
        SlicedRunner d;
        d.start(counting(10));
        EXPECT_FALSE(d.resume(std::chrono::nanoseconds(0)));
    }  // destroyed while suspended
    EXPECT_TRUE(unwound);
}

// While a sequence decodes, a new request's image goes through the tower in slices (one block per
// slice with a vision_slice_ms of 1 µs): the running stream keeps getting tokens meanwhile, and the image
// request gets the tokens it gets alone. A request cancelled while its image may be half encoded ends
// alone; the next image request is unaffected; every page comes back.
TEST(Engine, VisionRunsInSlicesBetweenDecodeSteps) {
    const auto& m = tiny();
    const auto& im = images();
    EngineOptions o;
    o.max_running = 4;
    o.vision_slice_ms = 1e-3;
    o.image_cache_bytes = 0;
    o.prefix_cache_bytes = 0;
    Engine e(m, o);
    std::mutex mu;
    int streamed = 0, cancel_at = -1;
    RequestHandle to_cancel;
    auto ql = request("keep talking", {}, 3000);
    ql.stop_ids = {-5};  // no stop id: it runs until cancelled
    ql.on_token = [&](std::int32_t id, std::string_view) {
        if (id < 0) return;
        std::lock_guard lk(mu);
        if (++streamed == cancel_at) to_cancel.cancel();
        std::this_thread::sleep_for(std::chrono::microseconds(500));  // a slow stream: it outlasts the test
    };
    auto hl = e.submit(ql);
    auto tokens = [&] {
        std::lock_guard lk(mu);
        return streamed;
    };
    while (tokens() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));

    const int at_submit = tokens();
    int at_first = -1;
    auto qi = request("Describe the image.", {&im[2]}, 8);
    qi.on_token = [&](std::int32_t, std::string_view) {
        std::lock_guard lk(mu);
        if (at_first < 0) at_first = streamed;
    };
    expect_same(e.submit(qi).wait(), session_ref(m, "Describe the image.", {&im[2]}, 8), "image request beside a stream");
    const int during = at_first - at_submit;
    EXPECT_GE(during, 8) << "tokens of the running stream while the image was encoded and prefilled";

    auto qc = request("Describe the image.", {&im[0]}, 8);
    {
        std::lock_guard lk(mu);
        cancel_at = streamed + std::max(1, during / 2);
        to_cancel = e.submit(qc);
    }
    const Result rc = to_cancel.wait();
    EXPECT_TRUE(rc.ok() || rc.error_kind == ErrorKind::cancelled) << rc.error;

    expect_same(e.submit(request("What colour?", {&im[3]}, 9)).wait(), session_ref(m, "What colour?", {&im[3]}, 9),
                "image request after the cancelled one");
    hl.cancel();
    EXPECT_EQ(hl.wait().error_kind, ErrorKind::cancelled);
    e.drain();
    expect_only_cached_pages(e.stats());
}

TEST(Engine, ShutdownEndsEveryRequest) {
    const auto& m = tiny();
    std::vector<RequestHandle> hs;
    {
        Engine e(m, {.max_running = 1});
        for (int i = 0; i < 6; ++i) {
            auto q = request("long " + std::to_string(i), {}, 100);
            q.stop_ids = {-5};
            hs.push_back(e.submit(q));
        }
    }  // destroyed with work left
    for (auto& h : hs) {
        ASSERT_TRUE(h.done());
        const Result r = h.wait();
        EXPECT_TRUE(r.ok() || r.error_kind == ErrorKind::shutdown) << r.error;
    }
    EXPECT_EQ(hs.back().wait().error_kind, ErrorKind::shutdown);
}

TEST(Engine, MetricsCountWhatRan) {
    const auto& m = tiny();
    const auto& im = images();
    std::atomic<int> anomalies{0};
    Engine e(m, {.on_anomaly = [&](const metrics::Anomaly&) { ++anomalies; }});
    std::uint64_t generated = 0, prompt = 0;
    for (int i = 0; i < 4; ++i) {
        const Result r = e.run(request("Describe the image.", {&im[std::size_t(i)]}, 6));
        ASSERT_TRUE(r.ok()) << r.error;
        generated += r.ids.size();
        prompt += std::uint64_t(r.prompt_tokens);
        EXPECT_GT(r.timings.ttft_ms, 0);
        EXPECT_GT(r.timings.vision_ms, 0);
        EXPECT_GE(r.timings.ttft_ms, r.timings.vision_ms);
    }
    const auto st = e.stats();
    EXPECT_EQ(st.generated_tokens, generated);
    EXPECT_EQ(st.prompt_tokens, prompt);
    EXPECT_EQ(st.images, 4u);
    EXPECT_EQ(st.requests_ok, 4u);
    EXPECT_EQ(st.stages.at("e2e").count, 4u);
    EXPECT_EQ(st.stages.at("vision").count, 4u);
    EXPECT_EQ(st.stages.at("ttft").count, 4u);
    EXPECT_GT(st.stages.at("ttft").p50, 0);
    EXPECT_GT(st.weight_bytes, 0u);
    EXPECT_GT(st.peak_rss_bytes, 0u);
    EXPECT_GT(st.kv_pages_total, 0);
    EXPECT_EQ(st.kv_bytes_per_position, 2u * 2u * 32u * 2u);  // K+V × 2 layers × kv_dim 32 × bf16
    EXPECT_GT(st.decode_busy_s, 0);
    const auto j = e.metrics_json();
    EXPECT_EQ(j["histograms"]["ttft_seconds"]["count"], 4);
    EXPECT_EQ(j["counters"]["generated_tokens_total"], generated);
    const std::string prom = e.metrics().to_prometheus();
    EXPECT_NE(prom.find("fastvlm_ttft_seconds_bucket"), std::string::npos);
    EXPECT_NE(prom.find("fastvlm_requests_total{status=\"ok\"} 4"), std::string::npos) << prom;
}

// Half the KV bytes per position with the bf16 cache.
TEST(Engine, KvBytesPerPositionHalveWithBf16) {
    const auto& m = tiny();
    Engine a(m, {.kv_type = text::KVType::f32});
    Engine b(m, {.kv_type = text::KVType::bf16});
    EXPECT_EQ(a.stats().kv_bytes_per_position, 2 * b.stats().kv_bytes_per_position);
}

// Two and three images in one prompt against the PyTorch reference (tests/reference/
// make_multi_image_goldens.py, float64) on tests/data/tiny_vlm2: Session and Engine.
// The image-feature cache: a repeated image skips vision (and gives the same tokens as a Session);
// distinct images never share an entry; the LRU holds its byte budget; 0 turns it off.
TEST(Engine, ImageCacheSkipsVisionWithSameTokens) {
    const auto& m = tiny();
    const auto& im = images();
    const std::size_t entry = std::size_t(m.config().vision.num_tokens() * m.decoder().hidden_size()) * sizeof(float) + 128;
    {
        Engine e(m, {.max_running = 4, .prefix_cache_bytes = 0});  // the image cache alone
        const Result a = e.run(request("Describe the image.", {&im[0]}, 10));
        const Result b = e.run(request("What colour?", {&im[0]}, 10));
        expect_same(a, session_ref(m, "Describe the image.", {&im[0]}, 10), "first");
        expect_same(b, session_ref(m, "What colour?", {&im[0]}, 10), "repeat");
        EXPECT_EQ(a.timings.image_cache_hits, 0);
        EXPECT_GT(a.timings.vision_ms, 0);
        EXPECT_EQ(b.timings.image_cache_hits, 1);
        EXPECT_EQ(b.timings.vision_ms, 0);
        const Result c = e.run(request("<image> and <image>", {&im[1], &im[0]}, 8));
        expect_same(c, session_ref(m, "<image> and <image>", {&im[1], &im[0]}, 8), "one cached of two");
        EXPECT_EQ(c.timings.image_cache_hits, 1);
        // Six at once of one new image: every one equals the Session; each lookup is a hit or a miss.
        std::vector<RequestHandle> hs;
        for (int i = 0; i < 6; ++i) hs.push_back(e.submit(request("Describe the image.", {&im[2]}, 6)));
        const Ref ref = session_ref(m, "Describe the image.", {&im[2]}, 6);
        for (auto& h : hs) expect_same(h.wait(), ref, "same image at once");
        const auto st = e.stats().image_cache;
        EXPECT_EQ(st.hits + st.misses, 10u);
        EXPECT_GE(st.hits, 2u + 1u);
        EXPECT_EQ(st.entries, 3u);
        EXPECT_EQ(st.bytes, 3 * entry);
        EXPECT_EQ(e.stats().images, 10u);
        const auto j = e.metrics_json().dump();
        EXPECT_NE(j.find("image_cache_hits_total"), std::string::npos);
    }
    {  // Off: nothing is cached or counted, results unchanged.
        Engine e(m, {.max_running = 2, .image_cache_bytes = 0, .prefix_cache_bytes = 0});
        for (int i = 0; i < 2; ++i) {
            const Result r = e.run(request("Describe the image.", {&im[0]}, 10));
            expect_same(r, session_ref(m, "Describe the image.", {&im[0]}, 10), "cache off");
            EXPECT_EQ(r.timings.image_cache_hits, 0);
        }
        const auto st = e.stats().image_cache;
        EXPECT_EQ(st.hits + st.misses + st.entries + st.bytes, 0u);
    }
    for (std::size_t n : {std::size_t(1), std::size_t(2)}) {  // LRU: room for n entries; A, B, A
        Engine e(m, {.max_running = 1, .image_cache_bytes = n * entry, .prefix_cache_bytes = 0});
        for (int k : {0, 1, 0}) EXPECT_TRUE(e.run(request("x", {&im[std::size_t(k)]}, 2)).ok());
        const auto st = e.stats().image_cache;
        EXPECT_EQ(st.hits, n == 1 ? 0u : 1u) << n;
        EXPECT_EQ(st.evictions, n == 1 ? 2u : 0u) << n;
        EXPECT_LE(st.bytes, n * entry);
    }
}

// ---- prefix KV reuse (engine/prefix_cache.hpp) ----------------------------------------------------

// The cache on its own: a sequence's pages are kept after it ends (its reservation for them handed
// over), a later sequence adopts the whole pages of the longest common prefix and a copy of the part
// of the next page it shares, and sees their contents; a position differing keeps everything after it
// out; eviction returns pages and reservations; the pool frees a shared page only when its last
// holder drops it.
TEST(PrefixCache, KeepsAdoptsAndEvictsPages) {
    auto pool = std::make_shared<text::KVPool>(text::KVShape{2, 8}, text::KVType::f32, 64 * text::KVPool::bytes_per_position({2, 8}, text::KVType::f32), 4);
    PrefixCache cache(pool, 16);
    std::vector<std::uint64_t> keys(14);
    for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = token_position_key(std::int32_t(100 + i));
    // Positions a match covers (whole pages and the copied part of one); the partial page is given back.
    auto covered = [&](PrefixCache& c, std::span<const std::uint64_t> k, Index limit) {
        const auto m = c.match(k, limit);
        c.release(m);
        return m.positions(4);
    };
    {
        text::KVSeq a(pool, 20);  // 5 pages reserved
        a.ensure(14);
        a.advance(14);
        for (Index p = 0; p < 14; ++p) *a.k<float>(1, p) = float(p) + 0.5f;
        cache.insert(keys, a);  // 3 whole pages and the last one with 2 positions
    }
    EXPECT_EQ(cache.stats().pages, 4);
    EXPECT_EQ(pool->used_pages(), 4);
    EXPECT_EQ(pool->reserved_pages(), 4);
    {
        auto b_keys = keys;
        b_keys[9] = token_position_key(7);  // differs in the third page, after its first position
        const auto m = cache.match(b_keys, 100);
        ASSERT_EQ(m.pages.size(), 2u);
        ASSERT_NE(m.partial, nullptr);
        EXPECT_EQ(m.partial_len, 1);
        text::KVSeq b(pool, 12);
        b.adopt_prefix(m.pages);
        b.adopt_partial(m.partial, m.partial_len);
        cache.done_with(m.partial);
        EXPECT_EQ(b.size(), 9);
        for (Index p = 0; p < 9; ++p) EXPECT_EQ(*b.k<float>(1, p), float(p) + 0.5f) << p;
        EXPECT_EQ(pool->sharers(m.pages[0]), 1);
        EXPECT_EQ(pool->sharers(m.partial), 0);  // copied, not shared
        // Evicting everything while b holds two of the pages: those stay in use until b ends.
        while (cache.evict_one()) {
        }
        EXPECT_EQ(pool->used_pages(), 3);  // 2 shared + b's own copy
        EXPECT_EQ(pool->sharers(m.pages[0]), 0);
        EXPECT_EQ(covered(cache, keys, 100), 0);
    }
    EXPECT_EQ(pool->used_pages(), 0);
    EXPECT_EQ(pool->reserved_pages(), 0);
    // The limit: never more than `limit` positions, and a miss when the first position differs.
    {
        text::KVSeq a(pool, 16);
        a.ensure(16);
        a.advance(16);
        cache.insert(keys, a);  // keys name 14 positions: 3 whole pages + 2
    }
    EXPECT_EQ(covered(cache, keys, 13), 13);
    EXPECT_EQ(covered(cache, keys, 11), 11);
    EXPECT_EQ(covered(cache, keys, 100), 14);
    auto other = keys;
    other[0] = token_position_key(1);
    EXPECT_EQ(covered(cache, other, 100), 0);
    const auto st = cache.stats();
    EXPECT_EQ(st.hits, 4u);
    EXPECT_EQ(st.misses, 2u);
    EXPECT_EQ(st.hit_positions, 9u + 13u + 11u + 14u);
    EXPECT_EQ(pool->used_pages(), 4);  // the partial pages of the matches were given back
    // A cap of 2 pages: the least recently used leaves go first, the root stays reachable.
    PrefixCache small(pool, 2);
    {
        text::KVSeq a(pool, 16);
        a.ensure(16);
        a.advance(16);
        small.insert(keys, a);
    }
    EXPECT_EQ(small.stats().pages, 2);
    EXPECT_EQ(covered(small, keys, 100), 8);
    EXPECT_NE(image_position_key({1, 2}, 0), image_position_key({1, 2}, 1));
    EXPECT_NE(image_position_key({1, 2}, 0), image_position_key({1, 3}, 0));
    EXPECT_GE(image_position_key({1, 2}, 0), std::uint64_t(1) << 63);  // never a token key
}

// A second question about an image adopts the KV of the system prompt and the image tokens: no
// vision, a prefill of the new tokens only, and the tokens a Session gives (every page size, with
// and without the image-feature cache).
TEST(Engine, PrefixCacheSecondQuestionSkipsVisionAndPrefill) {
    const auto& m = tiny();
    const auto& im = images();
    for (Index page : {Index(1), Index(4), Index(16)}) {
        for (std::size_t img_cache : {std::size_t(0), std::size_t(64) << 20}) {
            SCOPED_TRACE("page " + std::to_string(page) + " image cache " + std::to_string(img_cache));
            Engine e(m, {.max_running = 2, .kv_page = page, .image_cache_bytes = img_cache});
            const Result a = e.run(request("Describe the image.", {&im[0]}, 10));
            const Result b = e.run(request("What colour is it?", {&im[0]}, 10));
            expect_same(a, session_ref(m, "Describe the image.", {&im[0]}, 10), "first");
            expect_same(b, session_ref(m, "What colour is it?", {&im[0]}, 10), "second");
            EXPECT_EQ(a.timings.cached_tokens, 0);
            EXPECT_GT(a.timings.vision_ms, 0);
            const Index shared = Index(m.config().vision.num_tokens()) + 10;  // at least the image and the system prompt
            EXPECT_GE(b.timings.cached_tokens, shared);
            EXPECT_EQ(b.timings.cached_tokens + b.timings.prefill_tokens, b.prompt_tokens);
            // The image is needed only when the adopted pages end before its last token.
            const text::ChatMessage msg{"user", "<image>\nWhat colour is it?"};
            const auto ids = text::tokenize_with_image(text::chat_prompt(std::span(&msg, 1)),
                                                       [&](const std::string& c) { return m.tokenizer().encode(c); });
            const Index image_end = Index(std::find(ids.begin(), ids.end(), text::kImageTokenIndex) - ids.begin()) +
                                    Index(m.config().vision.num_tokens());
            if (b.timings.cached_tokens >= image_end) {
                EXPECT_EQ(b.timings.vision_ms, 0);
                EXPECT_EQ(b.timings.image_cache_hits, 0);
            } else {
                ADD_FAILURE() << "the adopted prefix (" << b.timings.cached_tokens << ") ends before the image (" << image_end << ")";
            }
            const auto st = e.stats();
            EXPECT_EQ(st.prefix_cache.hits, 1u);
            EXPECT_EQ(st.prefix_cache.misses, 1u);
            EXPECT_EQ(st.prefix_cache.hit_positions, std::uint64_t(b.timings.cached_tokens));
            expect_only_cached_pages(st);
            EXPECT_NE(e.metrics_json().dump().find("prefix_cache_positions_total"), std::string::npos);
        }
    }
}

// A chat that goes on: each turn's prompt starts with the previous turn's prompt and answer, whose
// KV (prompt positions from prefill, answer positions from decode steps) is adopted; the answers
// equal those of an engine without the cache, turn by turn, for both KV types.
TEST(Engine, PrefixCacheChatTurnsEqualNoCache) {
    const auto& m = tiny();
    const auto& im = images();
    for (auto kv : {text::KVType::bf16, text::KVType::f32}) {
        SCOPED_TRACE(kv == text::KVType::bf16 ? "bf16 KV" : "f32 KV");
        Engine on(m, {.max_running = 2, .kv_type = kv, .kv_page = 4});
        Engine off(m, {.max_running = 2, .kv_type = kv, .prefix_cache_bytes = 0});
        std::vector<text::ChatMessage> msgs;
        const char* questions[] = {"<image>\nDescribe the image.", "What colour is it?", "And the shape?", "Say more.", "Why?", "Thanks."};
        Index prev_positions = 0;
        for (int turn = 0; turn < 6; ++turn) {
            msgs.push_back({"user", questions[turn]});
            Request q;
            q.messages = msgs;
            q.images.push_back(ImageInput::decoded(im[1]));
            q.max_new_tokens = 8;
            const Result a = on.run(q), b = off.run(q);
            ASSERT_TRUE(a.ok() && b.ok()) << a.error << b.error;
            EXPECT_EQ(a.ids, b.ids) << "turn " << turn;
            EXPECT_EQ(a.text, b.text) << "turn " << turn;
            EXPECT_EQ(b.timings.cached_tokens, 0);
            if (turn > 0) {
                // Everything up to the previous answer is adopted (the positions the previous turn fed
                // through the decoder), and no vision runs.
                EXPECT_GE(a.timings.cached_tokens, prev_positions) << "turn " << turn;
                EXPECT_EQ(a.timings.vision_ms, 0) << "turn " << turn;
            }
            prev_positions = a.prompt_tokens;
            msgs.push_back({"assistant", a.text});
        }
        const auto st = off.stats();
        EXPECT_EQ(st.prefix_cache.hits + st.prefix_cache.misses + std::uint64_t(st.prefix_cache.pages), 0u);
        EXPECT_EQ(st.kv_pages_used, 0);
    }
}

// Sequences that share a prefix at once (adopted pages held by several), the mixed cases twice over,
// and a KV budget so small that cached pages must be evicted to admit requests: every answer equals
// the Session's, and what is left in use is the cache's alone.
TEST(Engine, PrefixCacheSharedAtOnceAndEvictedUnderSmallBudget) {
    const auto& m = tiny();
    const auto& im = images();
    {
        Engine e(m, {.max_running = 6, .kv_page = 4, .prefill_chunk = 9});
        EXPECT_TRUE(e.run(request("Describe the image.", {&im[2]}, 4)).ok());  // warms the prefix
        std::vector<RequestHandle> hs;
        std::vector<std::string> qs;
        for (int i = 0; i < 6; ++i) {
            qs.push_back("Question " + std::to_string(i) + " about it?");
            hs.push_back(e.submit(request(qs.back(), {&im[2]}, 7)));
        }
        for (int i = 0; i < 6; ++i) {
            const Result r = hs[std::size_t(i)].wait();
            expect_same(r, session_ref(m, qs[std::size_t(i)], {&im[2]}, 7), qs[std::size_t(i)]);
            EXPECT_GT(r.timings.cached_tokens, 0);
        }
        for (int round = 0; round < 2; ++round) {
            std::vector<RequestHandle> mh;
            const auto cases = mixed_cases();
            for (const auto& c : cases) {
                auto q = request(c.prompt, c.imgs, c.max_new);
                q.sampling = c.sampling;
                mh.push_back(e.submit(std::move(q)));
            }
            for (std::size_t i = 0; i < cases.size(); ++i)
                expect_same(mh[i].wait(), session_ref(m, cases[i].prompt, cases[i].imgs, cases[i].max_new, cases[i].sampling),
                            "round " + std::to_string(round) + " case " + std::to_string(i));
        }
        e.drain();
        EXPECT_GT(e.stats().prefix_cache.hits, 6u);
        expect_only_cached_pages(e.stats());
    }
    {  // Room for about one request: the cache gives its pages back whenever admission needs them.
        const std::size_t per_pos = text::KVPool::bytes_per_position(m.decoder().kv_shape(), text::KVType::bf16);
        Engine e(m, {.max_running = 3, .kv_budget_bytes = 100 * per_pos, .kv_page = 4});
        std::vector<RequestHandle> hs;
        std::vector<std::pair<std::string, std::size_t>> qs;
        for (int i = 0; i < 8; ++i) {
            qs.emplace_back("q" + std::to_string(i), std::size_t(i % 3));
            hs.push_back(e.submit(request(qs.back().first, {&im[qs.back().second]}, 6)));
        }
        for (int i = 0; i < 8; ++i)
            expect_same(hs[std::size_t(i)].wait(), session_ref(m, qs[std::size_t(i)].first, {&im[qs[std::size_t(i)].second]}, 6),
                        "small budget " + std::to_string(i));
        e.drain();
        const auto st = e.stats();
        EXPECT_GT(st.prefix_cache.evictions, 0u);
        expect_only_cached_pages(st);
    }
    {  // A byte cap below the budget: never more pages than it allows.
        Engine e(m, {.max_running = 2, .kv_page = 4, .prefix_cache_bytes = 0});
        const std::size_t page_bytes = e.stats().kv_page_bytes;
        Engine c(m, {.max_running = 2, .kv_page = 4, .prefix_cache_bytes = 5 * page_bytes});
        for (int i = 0; i < 3; ++i) EXPECT_TRUE(c.run(request("cap " + std::to_string(i), {&im[std::size_t(i)]}, 4)).ok());
        EXPECT_LE(c.stats().prefix_cache.pages, 5);
        EXPECT_EQ(c.stats().prefix_cache.max_pages, 5);
    }
}

// Hits racing evictions (run under ThreadSanitizer by scripts/test.sh): threads look up, adopt and
// insert while others evict, in caches with room for only a few entries. Whatever a lookup returns is
// what was stored under its key, and every page and reservation is back in the pool at the end.
TEST(PrefixCache, HitsRaceEvictionsAcrossThreads) {
    auto pool = std::make_shared<text::KVPool>(text::KVShape{1, 4}, text::KVType::f32, 4096 * text::KVPool::bytes_per_position({1, 4}, text::KVType::f32), 2);
    {
        PrefixCache prefix(pool, 6);
        ImageFeatureCache images(3 * (16 * sizeof(float) + 128));
        std::atomic<int> bad{0}, hits{0};
        auto worker = [&](int t) {
            for (int it = 0; it < 300; ++it) {
                const int variant = (it * 7 + t) % 5;  // few distinct prefixes: hits and evictions both happen
                std::vector<std::uint64_t> keys(8);
                for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = token_position_key(std::int32_t(i < 4 ? 1 : variant));
                auto seq = text::KVSeq::try_create(pool, 10);
                if (!seq) continue;
                const auto m = prefix.match(keys, 7);
                seq->adopt_prefix(m.pages);
                if (m.partial) seq->adopt_partial(m.partial, m.partial_len);
                prefix.done_with(m.partial);
                if (seq->size() > 0) {
                    ++hits;
                    for (Index p = 0; p < seq->size(); ++p)
                        if (*seq->k<float>(0, p) != float(keys[std::size_t(p)])) ++bad;
                }
                seq->ensure(8);
                for (Index p = seq->size(); p < 8; ++p) *seq->k<float>(0, p) = float(keys[std::size_t(p)]);
                seq->advance(8 - seq->size());
                if (it % 3 == 0) prefix.evict_one();
                prefix.insert(keys, *seq);
                // The image-feature cache: a hit holds the value stored under its key.
                const ImageKey k{std::uint64_t(variant), 0};
                if (auto tok = images.get(k)) {
                    if ((*tok)(0, 0) != float(variant)) ++bad;
                } else {
                    auto v = std::make_shared<Tensor<float, 2>>(std::array<Index, 2>{4, 4});
                    std::fill_n(v->data(), 16, float(variant));
                    images.put(k, v);
                }
            }
        };
        std::vector<std::thread> ts;
        for (int t = 0; t < 4; ++t) ts.emplace_back(worker, t);
        for (auto& th : ts) th.join();
        EXPECT_EQ(bad.load(), 0);
        EXPECT_GT(hits.load(), 0);
        EXPECT_GT(prefix.stats().evictions, 0u);
        EXPECT_LE(prefix.stats().pages, 6);
        EXPECT_EQ(pool->used_pages(), prefix.stats().pages);
    }
    EXPECT_EQ(pool->used_pages(), 0);
    EXPECT_EQ(pool->reserved_pages(), 0);
}

TEST(ImageCache, KeysSeparatePixelsSizesAndPresets) {
    Tensor<float, 3> a({3, 8, 8}), b({3, 8, 8}), c({3, 4, 4});
    for (Index i = 0; i < a.size(); ++i) a.data()[i] = b.data()[i] = float(i) / 192.f;
    for (Index i = 0; i < c.size(); ++i) c.data()[i] = float(i) / 192.f;
    EXPECT_EQ(image_key(a.view(), "fp32"), image_key(b.view(), "fp32"));
    EXPECT_NE(image_key(a.view(), "fp32"), image_key(a.view(), "int8"));
    EXPECT_NE(image_key(a.view(), "fp32"), image_key(c.view(), "fp32"));
    b.data()[77] = std::nextafter(b.data()[77], 1.f);  // one ulp of one pixel
    EXPECT_NE(image_key(a.view(), "fp32"), image_key(b.view(), "fp32"));
    ImageFeatureCache cache(1 << 20);
    EXPECT_EQ(cache.get(image_key(a.view(), "fp32")), nullptr);
    auto t = std::make_shared<const Tensor<float, 2>>(Shape<2>{4, 4});
    cache.put(image_key(a.view(), "fp32"), t);
    EXPECT_EQ(cache.get(image_key(a.view(), "fp32")), t);
    EXPECT_EQ(cache.get(image_key(b.view(), "fp32")), nullptr);
    ImageFeatureCache tiny(16);  // smaller than one entry: never stores
    tiny.put(image_key(a.view(), "fp32"), t);
    EXPECT_EQ(tiny.stats().entries, 0u);
}

TEST(MultiImage, MatchesPyTorchReference) {
    const auto dir = fs::path(FASTVLM_TEST_DATA_DIR);
    const auto io = io::TensorStore::open(dir / "multi_image_io.safetensors");
    const auto m = Model<>::load(dir / "tiny_vlm2", {.threads = 2, .kv_type = text::KVType::f32});
    const auto& pv = io.at("pixel_values");
    const Index S = pv.shape[2];
    const auto all_px = io.load_f32("pixel_values", pv.shape);
    auto pixels = [&](Index i) {
        Tensor<float, 3> t({3, S, S});
        std::copy_n(all_px.begin() + i * 3 * S * S, 3 * S * S, t.data());
        return t;
    };
    Engine e(m, {.kv_type = text::KVType::f32});
    for (const std::string c : {"two", "three"}) {
        SCOPED_TRACE(c);
        std::vector<std::int32_t> ids;
        for (auto v : io.load_i64(c + "_input_ids")) ids.push_back(std::int32_t(v));
        const auto imgs = io.load_i64(c + "_images");
        std::vector<Tensor<float, 2>> toks;
        std::vector<TensorView<const float, 2>> views;
        Request q;
        q.prompt_ids = ids;
        q.stop_ids = {-5};
        for (auto i : imgs) {
            toks.push_back(m.project(m.encode_image(pixels(i).view())));
            q.images.push_back(ImageInput::preprocessed(pixels(i)));
        }
        for (const auto& t : toks) views.push_back(t.view());
        const auto ref_prefill = io.load_f32(c + "_prefill_logits", io.at(c + "_prefill_logits").shape);
        const auto ref_steps = io.load_f32(c + "_step_logits", io.at(c + "_step_logits").shape);
        const auto ref_ids = io.load_i64(c + "_generated_ids");
        Session s(m);
        s.prefill(ids, views);
        float scale = 0, err = 0;
        for (std::size_t i = 0; i < ref_prefill.size(); ++i) {
            scale = std::max(scale, std::fabs(ref_prefill[i]));
            err = std::max(err, std::fabs(ref_prefill[i] - s.logits()[i]));
        }
        std::printf("[%s images] prefill logits max|diff| %.3g (max|ref| %.3g)\n", c.c_str(), err, scale);
        EXPECT_LT(err, 1e-4f * scale);
        std::vector<std::int64_t> got;
        const std::size_t V = ref_prefill.size();
        for (std::size_t k = 0; k < ref_ids.size(); ++k) {
            float ek = 0;
            for (std::size_t i = 0; i < V; ++i) ek = std::max(ek, std::fabs(ref_steps[k * V + i] - s.logits()[i]));
            EXPECT_LT(ek, 1e-4f * scale) << "step " << k;
            got.push_back(text::argmax(s.logits().data(), V));
            s.step(std::int32_t(got.back()));
        }
        EXPECT_EQ(got, ref_ids);
        q.max_new_tokens = int(ref_ids.size());
        const Result r = e.run(q);
        ASSERT_TRUE(r.ok()) << r.error;
        EXPECT_EQ(std::vector<std::int64_t>(r.ids.begin(), r.ids.end()), ref_ids);
        EXPECT_EQ(r.prompt_tokens, Index(ids.size()) + Index(imgs.size()) * (Index(toks[0].dim(0)) - 1));
        // One image too few: a clear error, from the Session and from the Engine.
        views.pop_back();
        const std::string err_s = error_of([&] { s.prefill(ids, views); });
        EXPECT_NE(err_s.find("image placeholders"), std::string::npos) << err_s;
        q.images.pop_back();
        const Result bad = e.run(q);
        EXPECT_EQ(bad.error_kind, ErrorKind::invalid_request);
        EXPECT_NE(bad.error.find(std::to_string(imgs.size()) + " image placeholders"), std::string::npos) << bad.error;
    }
}
