#!/usr/bin/python3
"""Two fastvlm-server replicas (1 thread each) behind HAProxy (server/haproxy.cfg), all on 127.0.0.1.

  scaleout_test.py --server BIN --cli BIN --haproxy BIN --model DIR --work DIR

40 requests (the model's bundled images and questions, 4 at a time) go through the balancer; after
the 16th answer one replica is killed (SIGKILL). Checks: every request succeeds with the reference
answer (fastvlm-cli batch --parallel 1), both replicas served before the kill, the survivor served
all after it. Bounded: 40 requests, 120 s.
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_test import KEY, Server, check, data_url, references, user_msg, FAILURES  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, payload, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(payload),
                  headers={"Content-Type": "application/json", "Authorization": "Bearer " + KEY})
        r = c.getresponse()
        return r.status, r.read()
    except (ConnectionError, OSError) as e:
        return -1, str(e).encode()
    finally:
        c.close()


def served(server):
    server.log.flush()
    return sum(1 for l in open(server.log_path) if re.match(r"chatcmpl-\S+ 200 ", l))


def main():
    ap = argparse.ArgumentParser()
    for k in ("--server", "--cli", "--haproxy", "--model", "--work"):
        ap.add_argument(k, required=True)
    ap.add_argument("--precision", default="fp32")
    a = ap.parse_args()
    a.model = os.path.abspath(a.model)
    os.makedirs(a.work, exist_ok=True)
    images_dir = os.path.join(a.model, "images")
    lines = [json.loads(l) for l in open(os.path.join(images_dir, "answers.jsonl")) if l.strip()]
    refs = references(a, lines, images_dir)
    t0 = time.time()
    args = ["--model", a.model, "--precision", a.precision, "--threads", "1", "--parallel", "4", "--quiet"]
    r1 = Server(a.server, args[:-1], a.work, "replica1")  # logs one line per request
    r2 = Server(a.server, args[:-1], a.work, "replica2")
    lb_port = free_port()
    env = dict(os.environ, FASTVLM_LB_ADDR="127.0.0.1:%d" % lb_port, FASTVLM_REPLICA1="127.0.0.1:%d" % r1.port,
               FASTVLM_REPLICA2="127.0.0.1:%d" % r2.port)
    cfg = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server", "haproxy.cfg")
    lb_log = open(os.path.join(a.work, "haproxy.log"), "w")
    lb = subprocess.Popen([a.haproxy, "-f", cfg, "-db"], env=env, stdout=lb_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # the balancer is up and sees a healthy replica
            try:
                c = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("haproxy did not come up (see %s)" % lb_log.name)
        time.sleep(1.2)  # both replicas pass their first health check
        images = {l["image"]: data_url(open(os.path.join(images_dir, l["image"]), "rb").read()) for l in lines}
        done = []
        lock = threading.Lock()
        killed = threading.Event()
        before_kill = {}

        def one(i):
            l = lines[i % len(lines)]
            st, body = post(lb_port, {"messages": [user_msg(l["prompt"], [images[l["image"]]])], "max_tokens": 64})
            ok = st == 200 and json.loads(body)["choices"][0]["message"]["content"] == refs[i % len(lines)]
            check(ok, "request %d through the balancer: %s %r" % (i, st, body[:200]))
            with lock:
                done.append(i)
                if len(done) == 16 and not killed.is_set():
                    before_kill.update(r1=served(r1), r2=served(r2))
                    r2.proc.send_signal(signal.SIGKILL)
                    killed.set()
            return ok

        with cf.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(40), timeout=120))
        check(all(results) and len(results) == 40, "all 40 requests answered right (%d/40)" % sum(results))
        check(before_kill.get("r1", 0) > 0 and before_kill.get("r2", 0) > 0,
              "both replicas served before the kill (%s)" % before_kill)
        after = served(r1) - before_kill.get("r1", 0)
        check(after >= 40 - 16 - 4, "the survivor served the rest (%d after the kill)" % after)
        print("scale-out: replica 1 served %d, replica 2 %d before it was killed; %.1f s" %
              (served(r1), before_kill.get("r2", 0), time.time() - t0))
    finally:
        lb.terminate()
        lb.wait(timeout=10)
        lb_log.close()
        r1.stop()
        r2.proc.kill()
        r2.stop()
    print("scale-out test: %d failure(s)" % len(FAILURES))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
