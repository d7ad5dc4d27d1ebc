#!/usr/bin/python3
"""fastvlm-server under load vs the same requests through `fastvlm-cli batch` (issue 12's table).

  bench/http_bench.py --server BIN --cli BIN --model DIR --images a.png,b.png,... [--precision int8]
                      [--threads 2] [--max-tokens 64] [--clients 1,4,8]
                      [--overhead-model models/fastvlm-scenes] [--leak-requests 1000]

1. Throughput: for each client count C, the N requests (one image each, "Describe the image.",
   exactly max-tokens new tokens: ignore_eos) — through HTTP by C concurrent streaming clients
   (server --parallel 8) and through `fastvlm-cli batch --parallel C` (the same engine without
   HTTP). Requests/s = N / wall; TTFT p50/p95 (HTTP: client-side, to the first content chunk;
   batch: the engine's); aggregate decode tok/s from the server's /metrics
   (generated_tokens_total / decode_busy_seconds, the same definition as `batch --json`).
2. HTTP overhead per request (with --overhead-model, a small model so the rest is small): client
   latency of a non-streaming request minus the engine's own submit→result time (`timings.total_ms`),
   minus nothing else — i.e. HTTP, JSON, base64 and the server's handling; the image decode happens
   inside the engine's time. Median of 200 sequential requests.
3. Leak check (same small model): the server's RSS after 10 and after --leak-requests requests.
Only 127.0.0.1; bounded by the request counts.
"""
import argparse
import base64
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start(server, args):
    p = subprocess.Popen([server, "--port", "0", "--quiet"] + args, stderr=subprocess.PIPE, text=True)
    port = None
    for line in p.stderr:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            pass
        time.sleep(0.2)
    p.kill()
    raise RuntimeError("server did not become healthy")


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def payload(img_path, max_tokens, stream):
    mime = "image/png" if img_path.endswith(".png") else "image/jpeg"
    url = "data:%s;base64,%s" % (mime, base64.b64encode(open(img_path, "rb").read()).decode())
    return json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                 {"type": "text", "text": "Describe the image."}]}],
                       "max_tokens": max_tokens, "ignore_eos": True, "stream": stream})


def stream_request(port, body):
    """(ttft_ms, total_ms) of one streaming request, client side. TTFT = the first SSE event (the role
    chunk, which the server sends when the first token is known; its text may come later when a
    token is an incomplete UTF-8 sequence)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()[:300]
    ttft = None
    buf = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        if ttft is None and b"data: " in buf:  # the first event: sent once the first token exists
            ttft = (time.perf_counter() - t0) * 1e3
        if b"data: [DONE]" in buf:
            break
    c.close()
    return ttft, (time.perf_counter() - t0) * 1e3


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def http_run(port, bodies, clients):
    m0 = metrics(port)
    res, lock, nxt = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(bodies):
                return
            r = stream_request(port, bodies[i])
            with lock:
                res.append(r)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    m1 = metrics(port)
    gen = m1["fastvlm_generated_tokens_total"] - m0["fastvlm_generated_tokens_total"]
    busy = m1["fastvlm_decode_busy_seconds"] - m0["fastvlm_decode_busy_seconds"]
    ttft = [r[0] for r in res]
    return {"wall_s": wall, "req_s": len(bodies) / wall, "ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95),
            "agg": gen / busy if busy else 0}


def batch_run(a, images, clients, work):
    jl = os.path.join(work, "req.jsonl")
    with open(jl, "w") as f:
        for i, img in enumerate(images):
            f.write(json.dumps({"id": i, "image": os.path.abspath(img), "prompt": "Describe the image.",
                                "max_tokens": a.max_tokens}) + "\n")
    # batch has no ignore_eos: synthetic weights rarely end early; generated tokens are reported.
    p = subprocess.run([a.cli, "batch", "--model", a.model, "--jsonl", jl, "--parallel", str(clients), "--precision",
                        a.precision, "--threads", str(a.threads), "--max-tokens", str(a.max_tokens), "--json", "--out",
                        os.path.join(work, "out.jsonl")], capture_output=True, text=True, check=True)
    s = json.loads(p.stdout)
    return {"wall_s": s["wall_s"], "req_s": s["requests_per_s"], "ttft_p50": s["ttft_ms"]["p50"],
            "ttft_p95": s["ttft_ms"]["p95"], "agg": s["aggregate_decode_tok_s"], "generated": s["generated_tokens"]}


def rss_kb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def overhead_and_leak(a):
    p, port = start(a.server, ["--model", a.overhead_model, "--precision", "fp32", "--threads", str(a.threads)])
    try:
        img = sorted(f for f in os.listdir(os.path.join(a.overhead_model, "images")) if f.endswith(".png"))[0]
        body = payload(os.path.join(a.overhead_model, "images", img), 8, False)
        over = []
        rss = {}
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(max(a.leak_requests, 200)):
            t0 = time.perf_counter()
            c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            lat = (time.perf_counter() - t0) * 1e3
            assert r.status == 200, data[:300]
            if i < 200:
                over.append(lat - json.loads(data)["timings"]["total_ms"])
            if i + 1 in (10, a.leak_requests):
                rss[i + 1] = rss_kb(p.pid)
        c.close()
        return statistics.median(over), pct(over, 0.95), rss, len(body)
    finally:
        p.terminate()
        p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--overhead-model")
    ap.add_argument("--leak-requests", type=int, default=1000)
    ap.add_argument("--skip-throughput", action="store_true", help="only the overhead and leak part")
    a = ap.parse_args()
    images = a.images.split(",")
    clients = [int(c) for c in a.clients.split(",")]
    work = tempfile.mkdtemp(prefix="fastvlm_http_bench_")
    print("load average at start: %s" % open("/proc/loadavg").read().split()[:3], file=sys.stderr)
    rows = []
    if not a.skip_throughput:
        p, port = start(a.server, ["--model", a.model, "--precision", a.precision, "--threads", str(a.threads), "--parallel", "8"])
        try:
            bodies = [payload(img, a.max_tokens, True) for img in images]
            stream_request(port, bodies[0])  # warm-up
            for c in clients:
                h = http_run(port, bodies, c)
                b = batch_run(a, images, c, work)
                rows.append((c, h, b))
                print("clients %d: http %s | batch %s" % (c, h, b), file=sys.stderr)
        finally:
            p.terminate()
            p.wait(timeout=60)
        print("| clients | HTTP req/s | batch req/s | HTTP TTFT p50 / p95 ms | batch TTFT p50 / p95 ms | HTTP aggregate tok/s | "
              "batch aggregate tok/s | HTTP / batch |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c, h, b in rows:
            print("| %d | %.3f | %.3f | %.0f / %.0f | %.0f / %.0f | %.1f | %.1f | %.0f %% |" %
                  (c, h["req_s"], b["req_s"], h["ttft_p50"], h["ttft_p95"], b["ttft_p50"], b["ttft_p95"], h["agg"], b["agg"],
                   100 * h["agg"] / b["agg"] if b["agg"] else 0))
    if a.overhead_model:
        med, p95, rss, nbytes = overhead_and_leak(a)
        print("\nHTTP overhead per request (%d-byte JSON body with a base64 PNG; client latency − engine time): "
              "median %.2f ms, p95 %.2f ms" % (nbytes, med, p95))
        print("server RSS after 10 requests: %.1f MB, after %d: %.1f MB (%+.2f %%)" %
              (rss[10] / 1024, a.leak_requests, rss[a.leak_requests] / 1024, 100 * (rss[a.leak_requests] / rss[10] - 1)))
    print("load average at end: %s" % open("/proc/loadavg").read().split()[:3], file=sys.stderr)


if __name__ == "__main__":
    main()
