// server/server.hpp — fastvlm-server's HTTP side (cpp-httplib): routes, API key, limits, streaming
// (SSE), request logs. The protocol itself is server/openai.hpp; the model runs in fastvlm::Engine.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <httplib.h>

#include "fastvlm/any_model.hpp"
#include "openai.hpp"

namespace fastvlm::server {

struct ServerOptions {
    std::string host = "127.0.0.1";
    int port = 8080;                     // 0 = any free port (printed)
    std::string api_key;                 // empty = no authentication
    std::size_t max_body_bytes = 32u << 20;
    int http_threads = 64;               // connections served at once (streams hold one each)
    std::string model_name = "fastvlm";  // `model` in responses and /v1/models
    Limits limits;
    bool quiet = false;  // no per-request log lines
};

class Server {
public:
    explicit Server(ServerOptions opt) : opt_(std::move(opt)) {
        const std::size_t n = std::size_t(std::max(4, opt_.http_threads));
        http_.new_task_queue = [n] { return new httplib::ThreadPool(n); };
        http_.set_payload_max_length(opt_.max_body_bytes);
        http_.set_read_timeout(30, 0);
        http_.set_write_timeout(30, 0);
        http_.set_keep_alive_max_count(1000);
        http_.set_tcp_nodelay(true);  // else header and body writes meet the client's delayed ACK: +40 ms per request
        http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
            if (ready()) reply(res, 200, {{"status", "ok"}});
            else if (failed_.load()) reply(res, 503, {{"status", "error"}, {"error", load_error_}});
            else reply(res, 503, {{"status", "loading"}});
        });
        http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
            if (!ready()) return reply_error(res, ApiError(503, "the model is still loading", "server_error", "loading"));
            res.set_content(engine_->metrics().to_prometheus("fastvlm_"), "text/plain; version=0.0.4; charset=utf-8");
        });
        http_.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
            if (!authorized(req, res)) return;
            reply(res, 200,
                  {{"object", "list"},
                   {"data", json::array({{{"id", opt_.model_name}, {"object", "model"}, {"created", started_}, {"owned_by", "fastvlm"}}})}});
        });
        http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { chat(req, res); });
        // A Content-Length over the limit is answered before the body is read: httplib would first read and
        // discard that many bytes (a lying 10^20 holds the connection until the read timeout). One that is
        // not a plain decimal number (negative, overflowing, "12abc") is a bad request.
        http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            if (!req.has_header("Content-Length")) return httplib::Server::HandlerResponse::Unhandled;
            const std::string v = req.get_header_value("Content-Length");
            const bool number = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
            if (number && v.size() <= 18 && std::stoull(v) <= opt_.max_body_bytes) return httplib::Server::HandlerResponse::Unhandled;
            res.status = number ? 413 : 400;
            const std::string msg = res.status == 413 ? "the request body (Content-Length " + v.substr(0, 24) +
                                                            ") is larger than the limit of " + std::to_string(opt_.max_body_bytes) +
                                                            " bytes (--max-body-mb)"
                                                      : "the Content-Length header is not a byte count";
            res.set_header("Connection", "close");
            res.set_content(error_body(res.status, msg, "invalid_request_error", res.status == 413 ? "body_too_large" : "bad_header").dump(),
                            "application/json");
            return httplib::Server::HandlerResponse::Handled;
        });
        // Errors httplib itself produces (404, 413 body too large, 400 bad request line …) in OpenAI's shape.
        http_.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty()) return;
            std::string msg = "HTTP " + std::to_string(res.status);
            if (res.status == 404) msg = "no route for " + req.method + " " + req.path;
            if (res.status == 413) msg = "the request body is larger than the limit of " + std::to_string(opt_.max_body_bytes) + " bytes (--max-body-mb)";
            res.set_content(error_body(res.status, msg, "invalid_request_error", res.status == 413 ? "body_too_large" : "").dump(),
                            "application/json");
        });
        http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string msg = "internal error";
            try {
                std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                msg += std::string(": ") + e.what();
            } catch (...) {
            }
            res.status = 500;
            res.set_content(error_body(500, msg, "server_error", "internal_error").dump(), "application/json");
        });
    }

    // Binds (before the model is loaded: /health answers 503 "loading" meanwhile). Returns the port.
    int bind() {
        port_ = opt_.port == 0 ? http_.bind_to_any_port(opt_.host) : (http_.bind_to_port(opt_.host, opt_.port) ? opt_.port : -1);
        if (port_ < 0) fail("cannot listen on ", opt_.host, ":", opt_.port, " (address in use or not allowed)");
        return port_;
    }
    // Serves until stop(); call bind() first. A stop() from another thread before the listening loop has
    // started (a model that fails to load at once) is not lost: httplib's own stop() only ends a running loop.
    void serve() {
        std::atomic<bool> done{false};
        std::thread guard([&] {
            while (!done.load() && !http_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
            if (stop_requested_.load()) http_.stop();
        });
        if (!stop_requested_.load()) http_.listen_after_bind();
        done.store(true);
        guard.join();
    }
    void stop() {
        stop_requested_.store(true);
        http_.stop();
    }

    // The engine to serve with (after loading); /health turns 200.
    void set_engine(std::unique_ptr<AnyModel> model, std::unique_ptr<Engine> engine) {
        model_ = std::move(model);
        engine_ = std::move(engine);
        ready_.store(true);
    }
    void set_load_error(std::string e) {
        load_error_ = std::move(e);
        failed_.store(true);
    }
    bool ready() const { return ready_.load(); }
    Engine* engine() { return engine_.get(); }

private:
    static void reply(httplib::Response& res, int status, const json& body) {
        res.status = status;
        res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
    }
    static void reply_error(httplib::Response& res, const ApiError& e) {
        if (e.status() == 429) res.set_header("Retry-After", "1");
        if (e.status() == 401) res.set_header("WWW-Authenticate", "Bearer");
        reply(res, e.status(), error_body(e));
    }
    bool authorized(const httplib::Request& req, httplib::Response& res) {
        if (opt_.api_key.empty()) return true;
        const std::string h = req.get_header_value("Authorization");
        const std::string want = "Bearer " + opt_.api_key;
        // Compare in constant time over the expected length.
        unsigned diff = h.size() != want.size();
        for (std::size_t i = 0; i < want.size(); ++i) diff |= unsigned(i < h.size() ? h[i] : 0) ^ unsigned(want[i]);
        if (diff == 0) return true;
        reply_error(res, ApiError(401, h.empty() ? "missing API key (send 'Authorization: Bearer KEY')" : "invalid API key",
                                  "authentication_error", "invalid_api_key"));
        return false;
    }
    std::string next_id() {
        static constexpr char hex[] = "0123456789abcdef";
        std::uint64_t x = (std::uint64_t(started_) << 20) ^ (counter_.fetch_add(1) * 0x9E3779B97F4A7C15ull);
        std::string s = "chatcmpl-";
        for (int i = 0; i < 16; ++i, x >>= 4) s += hex[x & 15];
        return s;
    }
    void log(const std::string& id, int status, const Result* r, double ms, bool stream) const {
        if (opt_.quiet) return;
        if (r)
            std::fprintf(stderr, "%s %d %s prompt=%lld completion=%zu ttft=%.0fms total=%.0fms%s%s\n", id.c_str(), status,
                         stream ? "stream" : "json", (long long)r->prompt_tokens, r->ids.size(), r->timings.ttft_ms, ms,
                         r->ok() ? "" : " error=", r->ok() ? "" : to_string(r->error_kind));
        else
            std::fprintf(stderr, "%s %d %s total=%.0fms\n", id.c_str(), status, stream ? "stream" : "json", ms);
    }

    // What a request's callbacks hand to the HTTP thread.
    struct Channel {
        std::mutex mu;
        std::condition_variable cv;
        std::string text;  // streamed, not yet sent
        bool token = false, finished = false;
        Result result;
    };

    void chat(const httplib::Request& req, httplib::Response& res) {
        const auto t0 = std::chrono::steady_clock::now();
        auto elapsed = [&] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
        const std::string id = next_id();
        if (!authorized(req, res)) return log(id, res.status, nullptr, elapsed(), false);
        if (!ready()) {
            reply_error(res, ApiError(503, "the model is still loading", "server_error", "loading"));
            return log(id, res.status, nullptr, elapsed(), false);
        }
        ChatRequest cr;
        try {
            const std::string ct = req.get_header_value("Content-Type");
            if (!ct.empty() && ct.find("application/json") == std::string::npos)
                throw ApiError(400, "Content-Type must be application/json, got '" + ct + "'", "invalid_request_error", "invalid_content_type");
            cr = parse_chat_request(req.body, opt_.limits);
        } catch (const ApiError& e) {
            reply_error(res, e);
            return log(id, res.status, nullptr, elapsed(), false);
        }
        auto ch = std::make_shared<Channel>();
        cr.req.id = id;
        cr.req.on_token = [ch](std::int32_t tok, std::string_view piece) {
            std::lock_guard lk(ch->mu);
            ch->text += piece;
            if (tok >= 0) ch->token = true;
            ch->cv.notify_all();
        };
        cr.req.on_finish = [ch](const Result& r) {
            std::lock_guard lk(ch->mu);
            ch->finished = true;
            ch->result = r;
            ch->cv.notify_all();
        };
        RequestHandle h;
        try {
            h = engine_->submit(std::move(cr.req));
        } catch (const EngineError& e) {
            reply_error(res, api_error(e.kind(), e.what()));
            return log(id, res.status, nullptr, elapsed(), cr.stream);
        }
        const std::int64_t created = std::int64_t(std::time(nullptr));
        if (!cr.stream) {
            const Result r = h.wait();
            if (r.ok()) reply(res, 200, completion_json(id, created, opt_.model_name, r));
            else reply_error(res, api_error(r.error_kind, r.error));
            return log(id, res.status, &r, elapsed(), false);
        }
        // Streaming: the status is chosen once the first token (or a failure) is known, so a bad
        // image or a prompt over the context still gets its 4xx.
        {
            std::unique_lock lk(ch->mu);
            ch->cv.wait(lk, [&] { return ch->token || ch->finished; });
            if (ch->finished && !ch->result.ok() && !ch->token) {
                reply_error(res, api_error(ch->result.error_kind, ch->result.error));
                return log(id, res.status, &ch->result, elapsed(), true);
            }
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_header("X-Accel-Buffering", "no");
        auto sent_role = std::make_shared<bool>(false);
        const std::string model = opt_.model_name;
        const bool usage = cr.include_usage;
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, ch, h, id, created, model, usage, sent_role, t0](std::size_t, httplib::DataSink& sink) {
                auto send = [&](const std::string& s) {
                    if (sink.write(s.data(), s.size())) return true;
                    h.cancel();  // the client went away: free its slot and KV pages now
                    return false;
                };
                if (!*sent_role) {
                    *sent_role = true;
                    return send(sse(chunk_json(id, created, model, {{"role", "assistant"}, {"content", ""}})));
                }
                std::string piece;
                bool finished = false;
                Result r;
                {
                    std::unique_lock lk(ch->mu);
                    while (ch->text.empty() && !ch->finished) {
                        ch->cv.wait_for(lk, std::chrono::milliseconds(250));
                        if (ch->text.empty() && !ch->finished && !sink.is_writable()) {
                            lk.unlock();
                            h.cancel();
                            return false;
                        }
                    }
                    piece.swap(ch->text);
                    finished = ch->finished;
                    if (finished) r = ch->result;
                }
                if (!piece.empty() && !send(sse(chunk_json(id, created, model, {{"content", piece}})))) return false;
                if (!finished) return true;
                std::string tail;
                if (r.ok()) {
                    tail = sse(chunk_json(id, created, model, json::object(), finish_reason(r)));
                    if (usage) {
                        json u = chunk_json(id, created, model, json::object());
                        u["choices"] = json::array();
                        u["usage"] = usage_json(r);
                        u["timings"] = timings_json(r);
                        tail += sse(u);
                    }
                } else {
                    tail = sse(error_body(api_error(r.error_kind, r.error)));  // e.g. a timeout mid-stream
                }
                tail += "data: [DONE]\n\n";
                if (!send(tail)) return false;
                log(id, r.ok() ? 200 : api_error(r.error_kind, r.error).status(), &r,
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(), true);
                sink.done();
                return true;
            },
            [h](bool success) {
                if (!success) h.cancel();
            });
    }

    ServerOptions opt_;
    httplib::Server http_;
    std::unique_ptr<AnyModel> model_;
    std::unique_ptr<Engine> engine_;
    std::atomic<bool> ready_{false}, failed_{false}, stop_requested_{false};
    std::string load_error_;
    std::atomic<std::uint64_t> counter_{0};
    std::int64_t started_ = std::int64_t(std::time(nullptr));
    int port_ = -1;
};

}  // namespace fastvlm::server
