#!/usr/bin/python3
"""fastvlm-server end to end on the shipped scene model, on 127.0.0.1 only, bounded in time.

  server_test.py --server BIN [--cli BIN] --model DIR --work DIR [--errors-only | --client-only]
                 [--node NODE --npm-prefix DIR]   (the official `openai` npm client, installed there)

1. References: `fastvlm-cli batch --parallel 1 --prefix-cache-mb 0` answers every line of the model's images/answers.jsonl
   (without --cli, as in the sanitizer build: the server's own first answer, compared after the errors).
2. Error cases (curl and raw sockets): 401 without/with a wrong key, 400 for malformed JSON, invalid
   UTF-8, wrong field types, bad base64, an undecodable image, an image over --max-image-pixels, a
   prompt over the context, n = 2, a bad image with stream = true (still a 400, not a 200 stream),
   a malformed HTTP request; 404 for an unknown route; 413 for a body over --max-body-mb; a client
   that disconnects mid-stream (its request is cancelled and its KV pages freed at once). A second
   server (--parallel 1 --max-queue 0 --timeout-s 0.1): 429 with Retry-After while it is busy, 504 on
   timeout. After all of it, the first server still answers right (and a second question about the
   first image reuses the prefix KV: cached_tokens > 0, no vision) and /metrics shows no KV page in use
   but the prefix cache's.
3. Without --errors-only: the `openai` npm client (tests/server/openai_client.cjs) — plain and
   streaming requests with base64 images, then 32 concurrent streaming clients; every answer equals
   the reference.
Exit 0 on success; every failed check is printed.
"""
import argparse
import base64
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

FAILURES = []
KEY = "test-key-123"


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)
    return cond


def png_bytes(w, h, rgb=(200, 30, 30)):
    """A valid RGB PNG of w x h pixels (one colour), without Pillow."""
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def kv_idle(m):
    """Nothing runs: the only KV pages in use are the prefix cache's (prompt prefixes kept for reuse)."""
    return m.get("fastvlm_kv_pages_used", -1) == m.get("fastvlm_prefix_cache_pages", 0)


def data_url(data, mime="image/png"):
    return "data:%s;base64,%s" % (mime, base64.b64encode(data).decode())


class Server:
    def __init__(self, binary, args, work, name):
        self.log_path = os.path.join(work, name + ".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([binary, "--port", "0", "--api-key", KEY] + args, stderr=subprocess.PIPE,
                                     stdout=self.log, text=True)
        self.port = None
        deadline = time.time() + 60
        lines = []
        while time.time() < deadline:  # "listening on http://127.0.0.1:PORT"
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise RuntimeError("server did not start: " + "".join(lines))
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        while time.time() < deadline:
            st, _, _ = self.request("GET", "/health", auth=False)
            if st == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("server not healthy within 60 s")

    def _pump(self):
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()

    def request(self, method, path, body=None, headers=None, auth=True, timeout=120):
        h = {"Content-Type": "application/json"}
        if auth:
            h["Authorization"] = "Bearer " + KEY
        h.update(headers or {})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), data
        except (ConnectionError, OSError) as e:
            return -1, {}, str(e).encode()
        finally:
            c.close()

    def chat(self, payload, **kw):
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        return self.request("POST", "/v1/chat/completions", body=body, **kw)

    def metrics(self):
        st, _, data = self.request("GET", "/metrics", auth=False)
        out = {}
        for line in data.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, val = line.rpartition(" ")
            out[name] = float(val)
        return out

    def stop(self):
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.pump.join(timeout=5)
        self.log.close()
        return rc


def curl(server, body_file=None, body=None, headers=(), path="/v1/chat/completions", method="POST"):
    """(status, headers text, body json or None) through curl."""
    cmd = ["curl", "-sS", "-o", "-", "-D", "/dev/stderr", "-X", method, "--max-time", "60",
           "http://127.0.0.1:%d%s" % (server.port, path), "-H", "Content-Type: application/json"]
    for h in headers:
        cmd += ["-H", h]
    if body_file:
        cmd += ["--data-binary", "@" + body_file]
    elif body is not None:
        cmd += ["--data-binary", "@-"]
    p = subprocess.run(cmd, input=body if isinstance(body, bytes) else (body or "").encode(), capture_output=True, timeout=90)
    head = p.stderr.decode(errors="replace")
    codes = re.findall(r"HTTP/1\.1 (\d+)", head)  # the last: after a "100 Continue"
    try:
        js = json.loads(p.stdout)
    except ValueError:
        js = None
    return (int(codes[-1]) if codes else -1), head, js


def user_msg(prompt, images=()):
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": prompt}]
    return {"role": "user", "content": parts}


def references(a, lines, images_dir):
    jl = os.path.join(a.work, "ref_in.jsonl")
    with open(jl, "w") as f:
        for i, l in enumerate(lines):
            f.write(json.dumps({"id": i, "image": os.path.join(images_dir, l["image"]), "prompt": l["prompt"]}) + "\n")
    out = os.path.join(a.work, "ref_out.jsonl")
    subprocess.run([a.cli, "batch", "--model", a.model, "--jsonl", jl, "--parallel", "1", "--precision", a.precision,
                    "--max-tokens", "64", "--threads", "2", "--prefix-cache-mb", "0", "--out", out], check=True, timeout=600)
    res = [json.loads(l) for l in open(out)]
    bad = [r for r in res if "text" not in r]
    if bad:
        raise RuntimeError("fastvlm-cli batch failed on the references: %r" % bad[0])
    return [r["text"] for r in res]


def error_cases(a, s, lines, refs, images_dir):
    img0 = open(os.path.join(images_dir, lines[0]["image"]), "rb").read()
    good = {"messages": [user_msg(lines[0]["prompt"], [data_url(img0)])], "max_tokens": 64}
    auth = ["Authorization: Bearer " + KEY]

    def expect(name, status, js, code=None, in_msg=None):
        ok = check(js is not None and isinstance(js.get("error"), dict), "%s: body is an OpenAI error object (%r)" % (name, js))
        check(status == code_status(code, status), "%s: status %s" % (name, status))
        if ok and in_msg:
            check(in_msg in js["error"]["message"], "%s: message %r lacks %r" % (name, js["error"]["message"], in_msg))

    def code_status(_, st):
        return st

    # -- authentication
    st, _, js = curl(s, body=json.dumps(good))
    check(st == 401, "no key: 401 (got %s)" % st)
    expect("no key", st, js, in_msg="API key")
    st, _, js = curl(s, body=json.dumps(good), headers=["Authorization: Bearer wrong"])
    check(st == 401, "wrong key: 401 (got %s)" % st)
    st, _, _ = curl(s, path="/v1/models", method="GET", headers=["Authorization: Bearer wrong"])
    check(st == 401, "/v1/models wrong key: 401 (got %s)" % st)
    # -- malformed bodies and fields
    cases = [
        ("malformed JSON", b'{"messages": [', "invalid_json", "not valid JSON"),
        ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "caf\xc3\x28"}]}', "invalid_json", "not valid JSON"),
        ("wrong type", json.dumps({**good, "max_tokens": "ten"}).encode(), None, "max_tokens"),
        ("temperature range", json.dumps({**good, "temperature": 9}).encode(), None, "temperature"),
        ("n = 2", json.dumps({**good, "n": 2}).encode(), None, "'n'"),
        ("bad base64", json.dumps({"messages": [user_msg("x", ["data:image/png;base64,@@@"])]}).encode(), "invalid_base64",
         "messages[0].content[0]"),
        ("undecodable image", json.dumps({"messages": [user_msg("x", [data_url(b"definitely not an image")])]}).encode(), None,
         "messages[0].content[0].image_url.url"),
        ("oversized image", json.dumps({"messages": [user_msg("x", [data_url(png_bytes(1600, 1300))])]}).encode(), None,
         "exceeds the limit"),
        ("over the context", json.dumps({**good, "max_tokens": 100000}).encode(), "context_length_exceeded", "context"),
        ("bad image, streaming", json.dumps({"messages": [user_msg("x", [data_url(b"GIF89a junk")])], "stream": True}).encode(),
         None, "messages[0].content[0]"),
    ]
    for name, body, code, needle in cases:
        st, _, js = curl(s, body=body, headers=auth)
        check(st == 400, "%s: 400 (got %s, %r)" % (name, st, js))
        expect(name, st, js, in_msg=needle)
        if code and js and isinstance(js.get("error"), dict):
            check(js["error"].get("code") == code, "%s: code %r, want %r" % (name, js["error"].get("code"), code))
    # -- body too large (--max-body-mb 1)
    big = os.path.join(a.work, "big.json")
    with open(big, "w") as f:
        json.dump({"messages": [{"role": "user", "content": "x" * (1 << 20) + "y" * 100000}]}, f)
    st, _, js = curl(s, body_file=big, headers=auth)
    check(st == 413, "body over the limit: 413 (got %s)" % st)
    expect("body over the limit", st, js, in_msg="--max-body-mb")
    # -- unknown route, malformed HTTP
    st, _, js = curl(s, path="/v2/nothing", method="GET")
    check(st == 404, "unknown route: 404 (got %s)" % st)
    expect("unknown route", st, js)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        try:
            resp = c.recv(4096)
        except OSError:
            resp = b""
        check(resp == b"" or resp.startswith(b"HTTP/1.1 4"), "malformed HTTP: a 4xx or a closed connection (%r)" % resp[:60])
    # -- a client that goes away mid-stream
    before = s.metrics()
    body = json.dumps({**good, "stream": True, "ignore_eos": True, "max_tokens": 1500}).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=60) as c:
        c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = c.recv(4096)
            if not chunk:
                break
            got += chunk
        check(b"200 OK" in got and got.count(b"data: ") >= 3, "disconnect test: the stream started (%r)" % got[:80])
    key = 'fastvlm_requests_total{status="cancelled"}'
    deadline = time.time() + 20
    m = s.metrics()
    while time.time() < deadline and not (m.get(key, 0) >= before.get(key, 0) + 1 and kv_idle(m)
                                          and m.get("fastvlm_running_sequences", 1) == 0):
        time.sleep(0.1)
        m = s.metrics()
    check(m.get(key, 0) == before.get(key, 0) + 1, "disconnect: request cancelled (%s -> %s)" % (before.get(key), m.get(key)))
    check(kv_idle(m), "disconnect: KV pages freed (%s in use, %s held by the prefix cache)"
          % (m.get("fastvlm_kv_pages_used"), m.get("fastvlm_prefix_cache_pages")))
    check(m.get("fastvlm_generated_tokens_total", 0) - before.get("fastvlm_generated_tokens_total", 0) < 1500,
          "disconnect: generation stopped early")
    # -- nothing else affected: the good request still gives the reference answer
    st, _, data = s.chat(good)
    check(st == 200 and json.loads(data)["choices"][0]["message"]["content"] == refs[0],
          "after the error cases: right answer (%s %r vs %r)" % (st, data[:200], refs[0]))
    check(st == 200 and json.loads(data)["timings"]["preset"] == a.precision, "timings.preset names the preset (%r)" % data[-200:])
    # -- prefix KV reuse: the same image with another question adopts the KV of the shared prefix
    # (system prompt and image tokens), reported as usage.prompt_tokens_details.cached_tokens, and the
    # answer is the one `fastvlm-cli batch` gives to that line (computed without reuse; without --cli, as in
    # the sanitizer build, the set's expected answer).
    for i, line in enumerate(lines[1:], 1):
        if line["image"] == lines[0]["image"] and line["prompt"] != lines[0]["prompt"]:
            st, _, data = s.chat({"messages": [user_msg(line["prompt"], [data_url(img0)])], "max_tokens": 64})
            js = json.loads(data) if st == 200 else {}
            cached = js.get("usage", {}).get("prompt_tokens_details", {}).get("cached_tokens", 0)
            want = refs[i] if i < len(refs) else line["answer"]
            check(st == 200 and js["choices"][0]["message"]["content"] == want,
                  "prefix reuse: right answer (%s %r vs %r)" % (st, data[:200], want))
            check(cached > 0 and js["timings"]["vision_ms"] == 0 and
                  js["timings"]["cached_tokens"] + js["timings"]["prefill_tokens"] == js["usage"]["prompt_tokens"],
                  "prefix reuse: cached_tokens %s, vision_ms %s" % (cached, js.get("timings", {}).get("vision_ms")))
            break
    else:
        check(False, "prefix reuse: the model's answers.jsonl has no second question about its first image")


def adaptive_cases(a, lines, refs, images_dir):
    """--precision auto:<precision>,int8: answers come from the first preset while the server is idle and say so
    (timings.preset); /metrics has the adaptive series and each preset's engine series with a preset label.
    --adaptive-pressure off: the box's CPU pressure (other tests running beside this one) must not move it."""
    spec = "auto:%s,%s" % (a.precision, "int8" if a.precision != "int8" else "int4")
    s = Server(a.server, ["--model", a.model, "--precision", spec, "--threads", "2", "--parallel", "2",
                          "--ttft-target-ms", "60000", "--adaptive-pressure", "off"], a.work, "server_adaptive")
    try:
        img0 = open(os.path.join(images_dir, lines[0]["image"]), "rb").read()
        st, _, data = s.chat({"messages": [user_msg(lines[0]["prompt"], [data_url(img0)])], "max_tokens": 64})
        js = json.loads(data) if st == 200 else {}
        check(st == 200 and js["choices"][0]["message"]["content"] == refs[0] and js["timings"]["preset"] == a.precision,
              "adaptive: first preset's answer (%s %r)" % (st, data[:300]))
        m = s.metrics()
        check(m.get('fastvlm_preset_requests_total{preset="%s"}' % a.precision) == 1 and
              m.get('fastvlm_requests_total{preset="%s",status="ok"}' % a.precision) == 1 and
              m.get("fastvlm_adaptive_level") == 0, "adaptive: /metrics per preset (%r)" %
              {k: v for k, v in m.items() if "preset" in k or "adaptive" in k})
    finally:
        check(s.stop() == 0, "adaptive server: clean exit on SIGTERM")


def busy_server_cases(a, lines, images_dir):
    """--parallel 1 --max-queue 0 --timeout-s T: six long requests at once: the first runs into its
    timeout (504), the others find no room (429 + Retry-After). T is a quarter of what the long request
    takes alone on this machine (measured first), so the timeout fires however fast the machine is."""
    img0 = open(os.path.join(images_dir, lines[0]["image"]), "rb").read()
    long_req = json.dumps({"messages": [user_msg("Describe the image.", [data_url(img0)])], "ignore_eos": True,
                           "max_tokens": 1800})
    base = ["--model", a.model, "--precision", a.precision, "--threads", "1", "--parallel", "1", "--quiet"]
    s = Server(a.server, base, a.work, "server_busy_calibrate")
    try:
        t0 = time.time()
        st, _, _ = curl(s, body=long_req, headers=["Authorization: Bearer " + KEY])
        alone_s = time.time() - t0
        check(st == 200, "busy server: the long request alone (%s)" % st)
    finally:
        check(s.stop() == 0, "calibration server: clean exit on SIGTERM")
    timeout_s = max(0.005, alone_s / 4)
    s = Server(a.server, base + ["--max-queue", "0", "--timeout-s", "%.3f" % timeout_s], a.work, "server_busy")
    try:
        results = [None] * 6
        go = threading.Barrier(len(results))

        def send(i):
            go.wait()
            results[i] = curl(s, body=long_req, headers=["Authorization: Bearer " + KEY])
        ts = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        statuses = sorted(r[0] for r in results if r)
        check(set(statuses) <= {429, 504} and 429 in statuses and 504 in statuses,
              "busy server: only 429 and 504, both seen (%s; --timeout-s %.3f, the request alone %.3f s)" %
              (statuses, timeout_s, alone_s))
        for st, head, js in (r for r in results if r):
            err = (js or {}).get("error", {})
            if st == 429:
                check(re.search(r"(?i)retry-after: *\d+", head) is not None, "queue full: Retry-After header")
                check(err.get("code") == "queue_full" and "max_queued" in err.get("message", ""), "queue full: %r" % err)
            elif st == 504:
                check(err.get("code") == "timeout" and "timed out" in err.get("message", ""), "timeout: %r" % err)
        m = s.metrics()
        check(kv_idle(m), "after the timeout: KV pages freed")
        check(m.get('fastvlm_requests_total{status="timeout"}', 0) >= 1, "timeouts counted")
        check(m.get('fastvlm_requests_total{status="queue_full"}', 0) >= 1, "queue_full counted")
    finally:
        check(s.stop() == 0, "busy server: clean exit on SIGTERM")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", help="fastvlm-cli: the references (else the server's own first answers)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--errors-only", action="store_true")
    ap.add_argument("--client-only", action="store_true")
    ap.add_argument("--node")
    ap.add_argument("--npm-prefix")
    a = ap.parse_args()
    a.model = os.path.abspath(a.model)
    os.makedirs(a.work, exist_ok=True)
    images_dir = os.path.join(a.model, "images")
    lines = [json.loads(l) for l in open(os.path.join(images_dir, "answers.jsonl")) if l.strip()]
    t0 = time.time()
    refs = references(a, lines, images_dir) if a.cli else None
    s = Server(a.server, ["--model", a.model, "--precision", a.precision, "--threads", "2", "--parallel", "8",
                          "--max-body-mb", "1", "--max-image-pixels", "2000000"], a.work, "server")
    try:
        st, _, data = s.request("GET", "/v1/models")
        check(st == 200 and json.loads(data)["data"][0]["id"] == "fastvlm-scenes", "/v1/models lists the model (%r)" % data)
        if refs is None:  # the server's own answer before the error cases is the reference for after
            img0 = open(os.path.join(images_dir, lines[0]["image"]), "rb").read()
            st, _, data = s.chat({"messages": [user_msg(lines[0]["prompt"], [data_url(img0)])], "max_tokens": 64})
            check(st == 200, "first request: 200 (got %s %r)" % (st, data[:200]))
            refs = [json.loads(data)["choices"][0]["message"]["content"] if st == 200 else None]
        if not a.client_only:
            error_cases(a, s, lines, refs, images_dir)
        if not a.errors_only:
            cases = os.path.join(a.work, "cases.json")
            with open(cases, "w") as f:
                json.dump([{"image": os.path.join(images_dir, l["image"]), "prompt": l["prompt"], "answer": r}
                           for l, r in zip(lines, refs)], f)
            env = dict(os.environ, NODE_PATH=os.path.join(a.npm_prefix, "node_modules"),
                       FASTVLM_URL="http://127.0.0.1:%d/v1" % s.port, FASTVLM_KEY=KEY, FASTVLM_CASES=cases)
            p = subprocess.run([a.node, os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_client.cjs")],
                               env=env, timeout=900)
            check(p.returncode == 0, "openai npm client checks (exit %d)" % p.returncode)
        m = s.metrics()
        check(kv_idle(m) and m.get("fastvlm_running_sequences") == 0, "idle at the end")
        check('fastvlm_ttft_seconds_count' in m, "/metrics has fastvlm_ttft_seconds")
    finally:
        check(s.stop() == 0, "server: clean exit on SIGTERM")
    if not a.client_only:
        busy_server_cases(a, lines, images_dir)
        adaptive_cases(a, lines, refs, images_dir)
    print("server tests: %d failure(s), %.1f s" % (len(FAILURES), time.time() - t0))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
