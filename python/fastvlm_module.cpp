// python/fastvlm_module.cpp — the Python module `fastvlm` (pybind11): Model, Result, Chat, Stream.
//
//   import fastvlm
//   m = fastvlm.Model("models/fastvlm-scenes", precision="int8", threads=0)
//   r = m.describe("a.png", prompt="Describe the image.", max_tokens=64)   # r.text, r.timings
//   for piece in m.describe(img, stream=True): print(piece, end="")
//   results = m.batch([{"image": "a.png", "prompt": "..."}, ...], parallel=8)
//
// Every request of a Model goes through one Engine (continuous batching), so Python threads that
// call describe() at once share decode steps. The GIL is released while C++ runs; the waiting
// thread wakes every 50 ms to let Python handle signals, so Ctrl-C cancels the running request.
// Callbacks from engine threads never touch Python objects (they fill C++ queues).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fastvlm/batch_jsonl.hpp"
#include "fastvlm/fastvlm.hpp"

namespace py = pybind11;
using namespace fastvlm;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

// Raised for every fastvlm::Error (same message); `kind` is the engine's error kind when known.
PyObject* g_error = nullptr;

[[noreturn]] void raise_error(const std::string& msg, ErrorKind kind = ErrorKind::invalid_request) {
    py::object e = py::reinterpret_borrow<py::object>(g_error)(msg);
    e.attr("kind") = to_string(kind);
    PyErr_SetObject(g_error, e.ptr());
    throw py::error_already_set();
}

// Runs Python's signal handlers (the waiting thread holds the GIL here); true when one raised
// (KeyboardInterrupt): the caller cancels its work, waits for it, and rethrows.
bool signalled() { return PyErr_CheckSignals() != 0; }

// One running call: text pieces streamed from a C++ thread and its final result.
struct Job {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> pieces;
    bool done = false;
    Result result;
    std::exception_ptr error;
    std::function<void()> cancel;

    void push(std::string_view s) {
        if (s.empty()) return;
        {
            std::lock_guard lk(mu);
            pieces.emplace_back(s);
        }
        cv.notify_all();
    }
    void finish(Result r, std::exception_ptr e = nullptr) {
        {
            std::lock_guard lk(mu);
            result = std::move(r);
            error = e;
            done = true;
        }
        cv.notify_all();
    }
    bool is_done() {
        std::lock_guard lk(mu);
        return done;
    }
    // Waits (GIL held by the caller) until the job ends; Ctrl-C cancels it and is rethrown.
    void wait() {
        for (;;) {
            {
                py::gil_scoped_release nogil;
                std::unique_lock lk(mu);
                if (cv.wait_for(lk, kPoll, [&] { return done; })) return;
            }
            if (signalled()) {
                py::error_already_set interrupted;  // holds the KeyboardInterrupt
                abort_and_wait();
                throw interrupted;
            }
        }
    }
    void abort_and_wait() {
        if (cancel) cancel();
        py::gil_scoped_release nogil;
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return done; });
    }
    // The next streamed piece, or nothing once the job has ended and every piece was taken.
    std::optional<std::string> next_piece() {
        for (;;) {
            {
                py::gil_scoped_release nogil;
                std::unique_lock lk(mu);
                if (cv.wait_for(lk, kPoll, [&] { return done || !pieces.empty(); })) {
                    if (!pieces.empty()) {
                        std::string s = std::move(pieces.front());
                        pieces.pop_front();
                        return s;
                    }
                    return std::nullopt;
                }
            }
            if (signalled()) {
                py::error_already_set interrupted;
                abort_and_wait();
                throw interrupted;
            }
        }
    }
    // The result of a finished job; a failure becomes a fastvlm.Error (when `raise`).
    Result take(bool raise) {
        std::exception_ptr e;
        Result r;
        {
            std::lock_guard lk(mu);
            e = error;
            r = result;
        }
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                raise_error(x.what(), ErrorKind::internal);
            }
        }
        if (raise && !r.ok()) raise_error(r.error, r.error_kind);
        return r;
    }
};

// ---- images from Python -------------------------------------------------------------------------------
io::Image image_from_array(const py::array& a0, const std::string& what, const io::ImageLimits& lim) {
    if (!py::isinstance<py::array_t<std::uint8_t>>(a0))
        raise_error(what + ": a numpy image must have dtype uint8, got " + std::string(py::str(a0.dtype())));
    // Shape and size are checked on the array as given, before a contiguous copy is made: a broadcast
    // (stride-0) view can describe terabytes in a few bytes.
    if (!(a0.ndim() == 3 && a0.shape(2) == 3) && a0.ndim() != 2)
        raise_error(what + ": a numpy image must be H x W x 3 (RGB) or H x W (gray), got shape " +
                    std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(a0.shape(), a0.shape() + a0.ndim()))))));
    const py::ssize_t h = a0.shape(0), w = a0.shape(1);
    if (h <= 0 || w <= 0) raise_error(what + ": the image is empty (" + std::to_string(h) + " x " + std::to_string(w) + ")");
    if (double(h) * double(w) > double(lim.max_pixels))
        raise_error(what + ": " + std::to_string(w) + " x " + std::to_string(h) + " pixels, more than the limit of " +
                    std::to_string(lim.max_pixels) + " (ImageLimits::max_pixels)");
    auto a = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>::ensure(a0);
    if (!a) throw py::error_already_set();  // the copy failed (MemoryError)
    io::Image img;
    img.width = int(w);
    img.height = int(h);
    img.rgb.resize(std::size_t(h * w * 3));
    const std::uint8_t* p = a.data();
    if (a.ndim() == 3) {
        std::copy(p, p + img.rgb.size(), img.rgb.begin());
    } else {
        for (std::size_t i = 0; i < std::size_t(h * w); ++i) img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = p[i];
    }
    return img;
}

// A path (str / os.PathLike), encoded bytes, a PIL image or a numpy uint8 array, decoded within `lim`.
ImageInput image_input(const py::handle& obj, const std::string& what, const io::ImageLimits& lim) {
    ImageInput in = [&]() -> ImageInput {
        if (py::isinstance<py::str>(obj) || py::hasattr(obj, "__fspath__")) {
            const std::string p = py::str(py::module_::import("os").attr("fspath")(obj));
            return ImageInput::file(p);
        }
        if (py::isinstance<py::bytes>(obj)) return ImageInput::encoded(std::string(py::cast<py::bytes>(obj)), what);
        if (py::isinstance<py::bytearray>(obj) || py::isinstance<py::memoryview>(obj))
            return ImageInput::encoded(std::string(py::bytes(py::module_::import("builtins").attr("bytes")(obj))), what);
        if (py::isinstance<py::array>(obj)) return ImageInput::decoded(image_from_array(py::cast<py::array>(obj), what, lim), what);
        if (py::hasattr(obj, "convert") && py::hasattr(obj, "mode") && py::hasattr(obj, "size")) {  // PIL.Image.Image
            py::object rgb = obj.attr("convert")("RGB");
            py::array a = py::module_::import("numpy").attr("asarray")(rgb);
            return ImageInput::decoded(image_from_array(a, what, lim), what);
        }
        raise_error(what + ": expected a path, bytes, a PIL image or a numpy uint8 array, got " +
                    std::string(py::str(py::type::of(obj).attr("__name__"))));
    }();
    in.limits = lim;
    return in;
}

std::vector<ImageInput> image_inputs(const py::handle& obj, const io::ImageLimits& lim) {
    std::vector<ImageInput> v;
    if (obj.is_none()) return v;
    if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
        std::size_t i = 0;
        for (const auto& e : obj) v.push_back(image_input(e, "image " + std::to_string(++i), lim));
        return v;
    }
    v.push_back(image_input(obj, "image", lim));
    return v;
}

// ---- options ------------------------------------------------------------------------------------------
struct GenArgs {
    int max_tokens = 256;
    float temperature = 0.f;
    int top_k = 0;
    float top_p = 1.f;
    std::uint64_t seed = 0;
    std::vector<std::string> stop;
    double timeout = 0;
    bool ignore_eos = false;  // generate max_tokens (only stop strings end it earlier)

    void check() const {
        if (max_tokens < 0) raise_error("max_tokens must be >= 0, got " + std::to_string(max_tokens));
        if (!(temperature >= 0.f && temperature <= 100.f)) raise_error("temperature must be in 0..100, got " + std::to_string(temperature));
        if (top_k < 0) raise_error("top_k must be >= 0, got " + std::to_string(top_k));
        if (!(top_p > 0.f && top_p <= 1.f)) raise_error("top_p must be in (0, 1], got " + std::to_string(top_p));
        if (!(timeout >= 0)) raise_error("timeout must be >= 0 seconds");
    }
    SamplingOptions sampling() const { return {temperature, top_k, top_p, seed}; }
};

py::dict timings_dict(const Timings& t) {
    py::dict d;
    d["queue_ms"] = t.queue_ms;
    d["preprocess_ms"] = t.preprocess_ms;
    d["vision_ms"] = t.vision_ms;
    d["projector_ms"] = t.projector_ms;
    d["prefill_ms"] = t.prefill_ms;
    d["ttft_ms"] = t.ttft_ms;
    d["decode_ms"] = t.decode_ms;
    d["total_ms"] = t.total_ms;
    d["prefill_tokens"] = t.prefill_tokens;
    d["decode_tokens"] = t.decode_tokens;
    d["image_cache_hits"] = t.image_cache_hits;
    d["cached_tokens"] = t.cached_tokens;
    d["prefill_tok_s"] = t.prefill_tok_s();
    d["decode_tok_s"] = t.decode_tok_s();
    return d;
}

py::object json_to_py(const nlohmann::json& j) {
    return py::module_::import("json").attr("loads")(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// ---- the model ----------------------------------------------------------------------------------------
struct PyModel {
    std::unique_ptr<AnyModel> model;
    EngineOptions eopt;
    std::mutex engine_mu;
    std::unique_ptr<Engine> engine;  // created on first use (it starts two threads)
    std::string path;
    io::Limits limits;  // Model(limits={...})

    Engine& eng() {
        std::lock_guard lk(engine_mu);
        if (!engine) engine = model->new_engine(eopt);
        return *engine;
    }
    ~PyModel() {
        std::optional<py::gil_scoped_release> nogil;  // the engine joins its threads
        if (PyGILState_Check()) nogil.emplace();
        engine.reset();
        model.reset();
    }
};
using ModelPtr = std::shared_ptr<PyModel>;

Request make_request(const PyModel& m, const py::handle& image, const std::string& prompt, const GenArgs& g,
                     const std::optional<std::string>& system) {
    g.check();
    if (!m.model->tokenizer()) raise_error(m.path + ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
    Request q;
    q.images = image_inputs(image, m.limits.image);
    q.prompt = prompt;
    if (system) q.system = *system;
    q.max_new_tokens = g.max_tokens;
    q.sampling = g.sampling();
    q.stop_strings = g.stop;
    q.timeout_s = g.timeout;
    if (g.ignore_eos) q.stop_ids = {-1};  // no id is −1
    return q;
}

// Submits `q` with its callbacks wired to a Job.
std::shared_ptr<Job> submit(PyModel& m, Request q) {
    auto job = std::make_shared<Job>();
    q.on_token = [job](std::int32_t, std::string_view t) { job->push(t); };
    q.on_finish = [job](const Result& r) { job->finish(r); };
    RequestHandle h;
    try {
        py::gil_scoped_release nogil;
        h = m.eng().submit(std::move(q));
    } catch (const EngineError& e) {
        raise_error(e.what(), e.kind());
    }
    job->cancel = [h] { h.cancel(); };
    return job;
}

// Iterator over the text pieces of a streamed request; .result once it has ended.
struct Stream {
    std::shared_ptr<Job> job;
    std::shared_ptr<void> keep;  // what the job's thread uses (model, chat)
    bool finished = false;
    std::optional<Result> result;

    Stream(std::shared_ptr<Job> j, std::shared_ptr<void> k) : job(std::move(j)), keep(std::move(k)) {}
    Stream(Stream&&) = default;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    std::string next() {
        if (finished) throw py::stop_iteration();
        if (auto s = job->next_piece()) return *s;
        finished = true;
        result = job->take(true);
        throw py::stop_iteration();
    }
    void close() {
        if (!job->is_done()) job->abort_and_wait();
        finished = true;
    }
    ~Stream() {
        // Dropped before the end: stop the request (its pages go back to the pool).
        if (job && job->cancel && !job->is_done()) job->cancel();
    }
};

// ---- chat: a conversation with its own KV cache (a Session), run on a C++ thread ------------------------
struct PyChat {
    ModelPtr model;
    std::shared_ptr<AnySession> session;
    std::shared_ptr<Job> running;
    std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
    std::thread worker;  // the running turn
    // Held from start() (before the GIL is first released) to the end of the turn's thread: a second
    // send() from another Python thread fails instead of racing for `worker` and the Session.
    std::shared_ptr<std::atomic<bool>> busy = std::make_shared<std::atomic<bool>>(false);

    std::shared_ptr<Job> start(const std::string& text, const py::handle& image, const GenArgs& g) {
        g.check();
        if (!model->model->tokenizer()) raise_error(model->path + ": the model folder has no tokenizer files");
        if (busy->exchange(true)) raise_error("this chat is still answering the previous message (finish or close its stream first)");
        try {
            return start_turn(text, image, g);
        } catch (...) {
            busy->store(false);
            throw;
        }
    }
    std::shared_ptr<Job> start_turn(const std::string& text, const py::handle& image, const GenArgs& g) {
        std::optional<io::Image> img;
        if (!image.is_none()) {
            const ImageInput in = image_input(image, "image", model->limits.image);
            std::string err;
            {
                py::gil_scoped_release nogil;
                try {
                    img = in.load();
                } catch (const std::exception& e) {
                    err = e.what();
                }
            }
            if (!err.empty()) raise_error(err);
        }
        if (worker.joinable()) {
            py::gil_scoped_release nogil;
            worker.join();  // the previous turn has ended (checked above)
        }
        auto job = std::make_shared<Job>();
        cancel->store(false);
        job->cancel = [c = cancel] { c->store(true); };
        GenerateOptions go;
        go.max_new_tokens = g.max_tokens;
        go.sampling = g.sampling();
        go.on_token = [job](std::int32_t, std::string_view t) { job->push(t); };
        go.cancel = cancel.get();
        worker = std::thread([job, s = session, c = cancel, b = busy, text, img = std::move(img), go]() {
            Result r;
            std::exception_ptr e;
            try {
                r = s->chat(text, go, img ? &*img : nullptr);
                if (r.stop == StopReason::cancelled) {
                    r.error_kind = ErrorKind::cancelled;
                    r.error = "cancelled";
                }
            } catch (...) {
                e = std::current_exception();
            }
            b->store(false);  // before finish(): whoever sees the result may send the next turn
            job->finish(std::move(r), e);
        });
        running = job;
        return job;
    }
    ~PyChat() {
        cancel->store(true);
        if (worker.joinable()) {
            std::optional<py::gil_scoped_release> nogil;
            if (PyGILState_Check()) nogil.emplace();
            worker.join();
        }
    }
};

// Runs requests 0..n-1 on the engine with at most `window` in flight, in order: take(i) gives request
// i (nullopt: it failed before submission), done(i, r) gets its result (nullptr for those). Ctrl-C
// cancels every request in flight.
// Requests in flight for batch(): `parallel` (default and at most the engine's max_running) plus a few
// waiting, far below the engine's queue limit.
std::size_t batch_window(const PyModel& m, std::optional<int> parallel) {
    return std::size_t(std::clamp(parallel.value_or(m.eopt.max_running), 1, m.eopt.max_running)) + 4;
}

template <class Take, class Done>
void run_window(PyModel& m, std::size_t n, std::size_t window, Take take, Done done) {
    std::deque<std::pair<std::size_t, std::shared_ptr<Job>>> live;
    try {
        std::size_t next = 0;
        while (next < n || !live.empty()) {
            while (next < n && live.size() < window) {
                if (std::optional<Request> q = take(next)) live.emplace_back(next, submit(m, std::move(*q)));
                else done(next, nullptr);
                ++next;
            }
            if (live.empty()) continue;
            live.front().second->wait();
            auto [i, job] = std::move(live.front());
            live.pop_front();
            const Result r = job->take(false);
            done(i, &r);
        }
    } catch (...) {
        // Ctrl-C or a failed submission: stop every request still in flight (all first, then wait).
        for (auto& [k, j] : live)
            if (j->cancel) j->cancel();
        for (auto& [k, j] : live) j->abort_and_wait();
        throw;
    }
}

}  // namespace

PYBIND11_MODULE(fastvlm, mod) {
    mod.doc() = "fastvlm: Apple's FastVLM vision-language models on CPUs (header-only C++20 runtime). See docs/python.md.";
    static py::exception<Error> err(mod, "Error", PyExc_RuntimeError);
    g_error = err.ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const EngineError& e) {
            py::object x = py::reinterpret_borrow<py::object>(g_error)(e.what());
            x.attr("kind") = to_string(e.kind());
            PyErr_SetObject(g_error, x.ptr());
        } catch (const Error& e) {
            py::object x = py::reinterpret_borrow<py::object>(g_error)(e.what());
            x.attr("kind") = "invalid_request";
            PyErr_SetObject(g_error, x.ptr());
        }
    });
    mod.attr("__version__") = "0.5.0";
    mod.attr("PRECISIONS") = py::make_tuple("fp32", "bf16", "fp16", "int8", "int8_int4", "int4");

    py::class_<Result>(mod, "Result", "The answer to one request.")
        .def_readonly("text", &Result::text, "decoded answer (special tokens skipped)")
        .def_readonly("ids", &Result::ids, "generated token ids (the stop token excluded)")
        .def_property_readonly("stop", [](const Result& r) { return std::string(to_string(r.stop)); },
                               "why generation ended: eos, max_tokens, cancelled, timeout, error")
        .def_readonly("prompt_tokens", &Result::prompt_tokens)
        .def_readonly("preset", &Result::preset, "the precision preset that served it (varies with precision='auto:...')")
        .def_property_readonly("generated_tokens", [](const Result& r) { return r.ids.size(); })
        .def_property_readonly("timings", [](const Result& r) { return timings_dict(r.timings); }, "stage times in ms and token counts")
        .def_property_readonly("ok", &Result::ok)
        .def_property_readonly("error", [](const Result& r) -> py::object { if (r.ok()) return py::none(); return py::str(r.error); })
        .def_property_readonly("error_kind",
                               [](const Result& r) -> py::object { if (r.ok()) return py::none(); return py::str(to_string(r.error_kind)); })
        .def("__repr__", [](const Result& r) {
            if (!r.ok()) return "<fastvlm.Result error=" + std::string(py::repr(py::str(r.error))) + ">";
            return "<fastvlm.Result text=" + std::string(py::repr(py::str(r.text))) + " stop=" + to_string(r.stop) +
                   " tokens=" + std::to_string(r.ids.size()) + ">";
        });

    py::class_<Stream>(mod, "Stream", "Iterator over the text pieces of a streamed answer; .result once it has ended.")
        .def("__iter__", [](Stream& s) -> Stream& { return s; })
        .def("__next__", &Stream::next)
        .def("close", &Stream::close, "cancel the request if it is still running")
        .def("__enter__", [](Stream& s) -> Stream& { return s; })
        .def("__exit__", [](Stream& s, py::args) { s.close(); })
        .def_property_readonly("result", [](Stream& s) -> py::object {
            if (!s.result) return py::none();
            return py::cast(*s.result);
        });

    py::class_<PyChat>(mod, "Chat", "A conversation on the model: its own KV cache, turn after turn (Model.chat()).")
        .def(
            "send",
            [](PyChat& c, const std::string& text, py::object image, int max_tokens, float temperature, int top_k, float top_p,
               std::uint64_t seed, bool stream) -> py::object {
                    GenArgs g{max_tokens, temperature, top_k, top_p, seed, {}, 0};
                auto job = c.start(text, image, g);
                if (stream) return py::cast(Stream(job, c.session));
                job->wait();
                return py::cast(job->take(true));
            },
            py::arg("text"), py::arg("image") = py::none(), py::arg("max_tokens") = 256, py::arg("temperature") = 0.f,
            py::arg("top_k") = 0, py::arg("top_p") = 1.f, py::arg("seed") = 0, py::arg("stream") = false,
            py::keep_alive<0, 1>(),  // a Stream keeps its Chat (and its thread) alive
            "Next user turn (with an optional image); returns a Result, or a Stream when stream=True.")
        .def("reset", [](PyChat& c) {
            if (c.busy->exchange(true)) raise_error("this chat is still answering");
            c.session->reset();
            c.busy->store(false);
        })
        .def_property_readonly("position", [](const PyChat& c) { return c.session->position(); }, "positions in the KV cache")
        .def_property_readonly("context", [](const PyChat& c) { return c.session->context(); });

    py::class_<PyModel, ModelPtr>(mod, "Model", "A loaded FastVLM model folder (Hugging Face layout).")
        .def(py::init([](const py::object& path, const std::string& precision, unsigned threads, Index context, int parallel,
                         const std::string& kv_cache, bool load_vision, double image_cache_mb, const py::object& limits,
                         const py::object& prefix_cache_mb, int image_size, double ttft_target_ms, double vision_slice_ms,
                         bool prefill_first, bool adaptive_pressure) {
                 auto m = std::make_shared<PyModel>();
                 m->path = py::str(py::module_::import("os").attr("fspath")(path));
                 if (parallel < 1) raise_error("parallel must be >= 1, got " + std::to_string(parallel));
                 if (context < 0) raise_error("context must be >= 0, got " + std::to_string(context));
                 if (!(ttft_target_ms >= 0 && ttft_target_ms < 1e9)) raise_error("ttft_target_ms must be in 0..1e9");
                 if (!(vision_slice_ms >= 0 && vision_slice_ms < 1e9)) raise_error("vision_slice_ms must be in 0..1e9");
                 LoadOptions o;
                 o.threads = threads;
                 o.context = context;
                 o.load_vision = load_vision;
                 o.kv_type = text::parse_kv_type(kv_cache);
                 o.image_size = image_size;
                 if (!limits.is_none()) {
                     if (!py::isinstance<py::dict>(limits)) raise_error("limits must be a dict {name: value}");
                     for (auto [k, v] : py::cast<py::dict>(limits)) {
                         if (!py::isinstance<py::str>(k) || !(py::isinstance<py::int_>(v) || py::isinstance<py::str>(v)) ||
                             py::isinstance<py::bool_>(v))
                             raise_error("limits: expected str keys and int (or '16M'-style str) values");
                         io::set_limit(m->limits, py::cast<std::string>(k), py::cast<std::string>(py::str(v)));
                     }
                 }
                 o.limits = m->limits.load;
                 o.image_limits = m->limits.image;
                 {
                     py::gil_scoped_release nogil;
                     m->model = load_model(m->path, precision, o);
                 }
                 m->eopt.max_running = parallel;
                 m->eopt.max_queued = 4096;
                 m->eopt.adaptive.ttft_target_ms = ttft_target_ms;
                 if (!adaptive_pressure) m->eopt.adaptive.pressure = [] { return Pressure{}; };  // reads as no pressure
                 m->eopt.vision_slice_ms = vision_slice_ms;
                 m->eopt.prefill_first = prefill_first;
                 if (!(image_cache_mb >= 0 && image_cache_mb < 1e7)) raise_error("image_cache_mb must be in 0..1e7");
                 m->eopt.image_cache_bytes = std::size_t(image_cache_mb * 1048576.0);
                 if (!prefix_cache_mb.is_none()) {
                     const double mb = py::cast<double>(prefix_cache_mb);
                     if (!(mb >= 0 && mb < 1e7)) raise_error("prefix_cache_mb must be in 0..1e7 (or None)");
                     m->eopt.prefix_cache_bytes = std::size_t(mb * 1048576.0);
                 }
                 return m;
             }),
             py::arg("path"), py::arg("precision") = "fp32", py::arg("threads") = 0, py::arg("context") = 0, py::arg("parallel") = 8,
             py::arg("kv_cache") = "bf16", py::arg("load_vision") = true, py::arg("image_cache_mb") = 256.0,
             py::arg("limits") = py::none(), py::arg("prefix_cache_mb") = py::none(), py::arg("image_size") = 0,
             py::arg("ttft_target_ms") = 0.0, py::arg("vision_slice_ms") = 50.0, py::arg("prefill_first") = false,
             py::arg("adaptive_pressure") = true,
             "Loads a model folder. precision: fp32, bf16, fp16, int8, int8_int4, int4, or 'auto:int8,int4' (adaptive: each "
             "request served by the preset a policy picks from p95 TTFT vs ttft_target_ms, the queue and memory/CPU pressure "
             "(adaptive_pressure=False: TTFT and queue only); "
             "Result.preset names it); threads: 0 = all cores; "
             "parallel: requests decoded together by the model's engine; image_cache_mb: image-feature cache (0 = off); "
             "prefix_cache_mb: KV of ended requests reused by later ones that start the same (None = up to the KV budget, 0 = off); "
             "image_size: the vision input side, a multiple of 64 (0 = the config's, 1024; smaller is faster, less accurate); "
             "vision_slice_ms: a new image is encoded in slices of about this long between decode steps of running requests "
             "(0 = whole images, the most throughput); prefill_first: no decode step while a request is in vision or prefill, so "
             "requests admitted together decode as one batch (offline throughput; later first tokens); "
             "limits: input limits by name, e.g. {'max_image_size': 4096, 'max_pixels': '256M'} (docs/reliability.md).")
        .def_property_readonly("path", [](const PyModel& m) { return m.path; })
        .def_property_readonly("precision", [](const PyModel& m) { return std::string(m.model->precision()); })
        .def_property_readonly("weight_bytes", [](const PyModel& m) { return m.model->weight_bytes(); })
        .def_property_readonly("load_ms", [](const PyModel& m) { return m.model->load_ms(); })
        .def_property_readonly("context", [](const PyModel& m) { return m.model->context(); })
        .def_property_readonly("parallel", [](const PyModel& m) { return m.eopt.max_running; })
        .def_property_readonly("image_size", [](const PyModel& m) { return m.model->config().vision.image_size; })
        .def(
            "describe",
            [](const ModelPtr& m, py::object image, const std::string& prompt, int max_tokens, float temperature, int top_k,
               float top_p, std::uint64_t seed, std::vector<std::string> stop, double timeout, std::optional<std::string> system,
               bool ignore_eos, bool stream) -> py::object {
                GenArgs g{max_tokens, temperature, top_k, top_p, seed, std::move(stop), timeout, ignore_eos};
                auto job = submit(*m, make_request(*m, image, prompt, g, system));
                if (stream) return py::cast(Stream(job, m));
                job->wait();
                return py::cast(job->take(true));
            },
            py::arg("image") = py::none(), py::arg("prompt") = std::string(text::kDefaultQuestion), py::arg("max_tokens") = 256,
            py::arg("temperature") = 0.f, py::arg("top_k") = 0, py::arg("top_p") = 1.f, py::arg("seed") = 0,
            py::arg("stop") = std::vector<std::string>{}, py::arg("timeout") = 0.0, py::arg("system") = py::none(),
            py::arg("ignore_eos") = false, py::arg("stream") = false,
            "Answers a prompt about zero, one or several images (path, bytes, PIL image, numpy uint8 HxWx3; a list for "
            "several: each <image> in the prompt takes the next). Returns a Result, or a Stream of text pieces when "
            "stream=True. Raises fastvlm.Error when the request fails.")
        .def(
            "batch",
            [](const ModelPtr& m, const py::list& requests, std::optional<int> parallel) {
                const std::size_t window = batch_window(*m, parallel);
                std::vector<std::optional<Request>> reqs;
                std::vector<std::string> errors;
                for (std::size_t i = 0; i < requests.size(); ++i) {
                    const py::handle d = requests[i];
                    try {
                        if (!py::isinstance<py::dict>(d)) raise_error("request " + std::to_string(i) + " must be a dict");
                        auto get = [&](const char* k, py::object dflt) {
                            return d.cast<py::dict>().contains(k) ? py::reinterpret_borrow<py::object>(d[k]) : dflt;
                        };
                        GenArgs g;
                        g.max_tokens = get("max_tokens", py::int_(256)).cast<int>();
                        g.temperature = get("temperature", py::float_(0.0)).cast<float>();
                        g.top_k = get("top_k", py::int_(0)).cast<int>();
                        g.top_p = get("top_p", py::float_(1.0)).cast<float>();
                        g.seed = get("seed", py::int_(0)).cast<std::uint64_t>();
                        g.stop = get("stop", py::list()).cast<std::vector<std::string>>();
                        g.timeout = get("timeout", py::float_(0.0)).cast<double>();
                        g.ignore_eos = get("ignore_eos", py::bool_(false)).cast<bool>();
                        auto sys = get("system", py::none());
                        reqs.push_back(make_request(*m, get("image", py::none()),
                                                    get("prompt", py::str(std::string(text::kDefaultQuestion))).cast<std::string>(), g,
                                                    sys.is_none() ? std::nullopt : std::optional<std::string>(sys.cast<std::string>())));
                        errors.emplace_back();
                    } catch (py::error_already_set& e) {
                        if (e.matches(PyExc_KeyboardInterrupt)) throw;
                        reqs.push_back(std::nullopt);
                        errors.push_back(py::str(e.value()));
                    } catch (const py::cast_error& e) {
                        reqs.push_back(std::nullopt);
                        errors.push_back(std::string("request ") + std::to_string(i) + ": a field has the wrong type (" + e.what() + ")");
                    }
                }
                std::vector<Result> out(reqs.size());
                run_window(
                    *m, reqs.size(), window, [&](std::size_t i) { return std::move(reqs[i]); },
                    [&](std::size_t i, const Result* r) {
                        if (r) {
                            out[i] = *r;
                            return;
                        }
                        out[i].error_kind = ErrorKind::invalid_request;
                        out[i].error = errors[i];
                        out[i].stop = StopReason::error;
                    });
                return out;
            },
            py::arg("requests"), py::arg("parallel") = py::none(),
            "Runs a list of request dicts {image, prompt, max_tokens, temperature, top_k, top_p, seed, stop, timeout, system, "
            "ignore_eos} "
            "on the engine, at most `parallel` in flight (default and maximum: the model's parallel). Returns one Result per "
            "request, in order; a request that fails has .error set (nothing is raised for it).")
        .def(
            "batch_jsonl",
            [](const ModelPtr& m, const std::vector<std::pair<std::size_t, std::string>>& lines, const py::object& base,
               int max_tokens, std::optional<int> parallel) {
                const std::filesystem::path dir = std::string(py::str(py::module_::import("os").attr("fspath")(base)));
                if (!m->model->tokenizer()) raise_error(m->path + ": the model folder has no tokenizer files");
                const std::size_t window = batch_window(*m, parallel);
                std::vector<batch::Line> parsed;
                for (const auto& [n, s] : lines) parsed.push_back(batch::parse_line(s, n, dir, max_tokens));
                std::vector<std::string> out(parsed.size());
                run_window(
                    *m, parsed.size(), window, [&](std::size_t i) { return std::move(parsed[i].req); },
                    [&](std::size_t i, const Result* r) { out[i] = batch::dump(batch::output(parsed[i], r)); });
                return out;
            },
            py::arg("lines"), py::arg("base_dir") = ".", py::arg("max_tokens") = 256, py::arg("parallel") = py::none(),
            "Runs (line_number, text) pairs in `fastvlm-cli batch`'s JSONL input format (image paths relative to base_dir) and "
            "returns the output lines `fastvlm-cli batch` would write for them, in order (no trailing newline).")
        .def(
            "chat",
            [](const ModelPtr& m, Index context) {
                SessionOptions so;
                so.context = context;
                auto c = std::make_unique<PyChat>();
                c->model = m;
                c->session = m->model->new_session(so);
                return c;
            },
            py::arg("context") = 0, "A new conversation (its own KV cache of `context` positions; 0 = the model's).")
        .def(
            "preprocess",
            [](const ModelPtr& m, py::object image) {
                const ImageInput in = image_input(image, "image", m->limits.image);
                Tensor<float, 3> px;
                {
                    py::gil_scoped_release nogil;
                    px = m->model->preprocess(in.load());
                }
                py::array_t<float> a({px.dim(0), px.dim(1), px.dim(2)});
                std::copy_n(px.data(), px.size(), a.mutable_data());
                return a;
            },
            py::arg("image"), "The image as the vision tower sees it: float32 [3, S, S] (pad to square, bicubic resize, /255).")
        .def(
            "encode_image",
            [](const ModelPtr& m, py::object image, bool projected) {
                const ImageInput in = image_input(image, "image", m->limits.image);
                Tensor<float, 2> f;
                {
                    py::gil_scoped_release nogil;
                    const auto px = m->model->preprocess(in.load());
                    f = m->model->encode_image(px.view());
                    if (projected) f = m->model->project(f.view());
                }
                py::array_t<float> a({f.dim(0), f.dim(1)});
                std::copy_n(f.data(), f.size(), a.mutable_data());
                return a;
            },
            py::arg("image"), py::arg("projected") = true,
            "Image features as float32 [tokens, dim]: the projected image tokens the decoder reads (projected=True), or the "
            "vision tower's output.")
        .def(
            "tokenize",
            [](const ModelPtr& m, const std::string& s) {
                if (!m->model->tokenizer()) raise_error(m->path + ": the model folder has no tokenizer files");
                return m->model->tokenizer()->encode(s);
            },
            py::arg("text"))
        .def(
            "detokenize",
            [](const ModelPtr& m, const std::vector<std::int32_t>& ids, bool skip_special) {
                if (!m->model->tokenizer()) raise_error(m->path + ": the model folder has no tokenizer files");
                return py::bytes(m->model->tokenizer()->decode(ids, skip_special)).attr("decode")("utf-8", "replace");
            },
            py::arg("ids"), py::arg("skip_special") = false)
        .def(
            "metrics",
            [](const ModelPtr& m) {
                nlohmann::json j = m->eng().metrics_json();
                return json_to_py(j);
            },
            "The engine's metrics: counters, gauges, per-stage histograms with p50/p95/p99 (seconds).")
        .def("__repr__", [](const PyModel& m) {
            return "<fastvlm.Model " + std::string(py::repr(py::str(m.path))) + " precision=" + m.model->precision() + ">";
        });
}
