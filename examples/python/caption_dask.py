#!/usr/bin/python3
"""Distributed batch captioning with fastvlm on Dask's distributed scheduler.

  caption_dask.py --model DIR --jsonl FILE --out FILE
                  [--scheduler ADDRESS | --local-workers N] [--threads-per-worker T]
                  [--precision P] [--max-tokens N] [--chunk-size N] [--parallel N] [--module-dir DIR]

Input: `fastvlm-cli batch`'s JSONL ({"image": "a.png" | [...], "prompt", "id", "max_tokens",
"temperature", "top_k", "top_p", "seed"}; image paths relative to the JSONL's folder). Output: one
line per input line, in input order, exactly what `fastvlm-cli batch --out` writes ("text", or
"error" for a line that failed). Every worker loads the model once (a worker plugin); chunks of lines
are mapped over the workers; a chunk whose worker dies is run again elsewhere (Dask reschedules it),
and a chunk that still fails gets one "error" line per input line, so no line is ever lost.

With --scheduler the job runs on an existing cluster (dask-scheduler + dask-worker on any machines):
the model folder, the images (same absolute paths) and the fastvlm module must be reachable on every
worker (see docs/python.md). Without it a LocalCluster of --local-workers processes on 127.0.0.1.
"""
import argparse
import json
import os
import sys
import time

from dask.distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker


class FastVLMPlugin(WorkerPlugin):
    """Loads the model once per worker process; tasks find it as worker.fastvlm_model."""

    name = "fastvlm"

    def __init__(self, model, precision="int8", threads=0, parallel=8, module_dir=None, model_options=None):
        self.model, self.precision, self.threads = model, precision, threads
        self.parallel, self.module_dir = parallel, module_dir
        self.model_options = dict(model_options or {})  # further fastvlm.Model keywords (e.g. image_cache_mb)

    def setup(self, worker):
        if self.module_dir and self.module_dir not in sys.path:
            sys.path.insert(0, self.module_dir)
        import fastvlm

        # 0 threads: as many compute threads as the worker runs tasks (dask-worker --nthreads).
        threads = self.threads or max(1, worker.state.nthreads)
        worker.fastvlm_model = fastvlm.Model(self.model, precision=self.precision, threads=threads, parallel=self.parallel,
                                             **self.model_options)

    def teardown(self, worker):
        worker.__dict__.pop("fastvlm_model", None)


def caption_chunk(chunk, base_dir, max_tokens):
    """Runs [(line_number, text), ...] on this worker's model; returns the output lines."""
    model = getattr(get_worker(), "fastvlm_model", None)
    if model is None:
        raise RuntimeError("the fastvlm worker plugin is not set up on this worker")
    return model.batch_jsonl(chunk, base_dir, max_tokens)


def read_jsonl(path):
    """(line_number, bytes) for every non-blank line, as `fastvlm-cli batch` reads them (raw bytes:
    invalid UTF-8 is reported by the line's parser, as batch does)."""
    lines = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            s = raw[:-1] if raw.endswith(b"\n") else raw
            if n == 1 and s.startswith(b"\xef\xbb\xbf"):
                s = s[3:]
            if s.strip(b" \t\r\n"):
                lines.append((n, s))
    return lines


def error_line(n, text, message):
    """The output of a line whose chunk could not be run: its id (as batch would report it) and the error."""
    try:
        j = json.loads(text)
        ident = j["id"] if isinstance(j, dict) and "id" in j else n
    except ValueError:
        ident = n
    return json.dumps({"error": message, "id": ident}, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class Progress:
    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.errors, self.stream = total, 0, 0, stream
        self.tty, self.t0, self.last = stream.isatty(), time.monotonic(), 0.0

    def add(self, lines):
        self.done += len(lines)
        self.errors += sum(1 for s in lines if "error" in json.loads(s))
        now = time.monotonic()
        if self.tty:
            w = 30
            k = int(w * self.done / max(1, self.total) + 0.5)
            self.stream.write(f"\rcaption [{'#' * k}{' ' * (w - k)}] {self.done}/{self.total}  {now - self.t0:.1f} s  errors {self.errors}")
            self.stream.flush()
        elif now - self.last >= 5 or self.done == self.total:
            self.stream.write(f"caption: {self.done}/{self.total} lines, {now - self.t0:.1f} s, errors {self.errors}\n")
            self.stream.flush()
            self.last = now

    def close(self):
        if self.tty:
            self.stream.write("\n")


def run(client, lines, base_dir, out, max_tokens=256, chunk_size=16, retries=2, progress=None, on_chunk_done=None):
    """Maps the lines over the cluster in chunks; writes the output lines to `out` in input order.
    Returns the number of lines written."""
    chunks = [lines[i:i + chunk_size] for i in range(0, len(lines), chunk_size)]
    futures = {}
    for k, c in enumerate(chunks):
        f = client.submit(caption_chunk, c, base_dir, max_tokens, retries=retries, pure=False, key=f"caption-chunk-{k}-{id(chunks)}")
        futures[f] = k
    results, next_out, written = {}, 0, 0
    for f in as_completed(list(futures)):
        k = futures[f]
        try:
            res = f.result()
            if len(res) != len(chunks[k]):
                raise RuntimeError(f"chunk {k}: {len(res)} output lines for {len(chunks[k])} input lines")
        except Exception as e:  # the chunk failed on every try (e.g. its workers kept dying)
            res = [error_line(n, t, f"chunk failed on the cluster: {type(e).__name__}: {e}") for n, t in chunks[k]]
        results[k] = res
        if progress:
            progress.add(res)
        if on_chunk_done:
            on_chunk_done(k)
        while next_out in results:
            for s in results.pop(next_out):
                out.write(s + "\n")
                written += 1
            out.flush()
            next_out += 1
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (the same path on every worker)")
    ap.add_argument("--jsonl", required=True, help="requests, `fastvlm-cli batch` format")
    ap.add_argument("--out", required=True, help="output JSONL (one line per input line, in order)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask-scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--local-workers", type=int, default=2, help="worker processes of a local cluster (default 2)")
    ap.add_argument("--threads-per-worker", type=int, default=1, help="tasks (and compute threads) per local worker (default 1)")
    ap.add_argument("--precision", default="int8", help="fp32, bf16, fp16, int8 (default), int8_int4, int4")
    ap.add_argument("--max-tokens", type=int, default=256, help="default maximum new tokens per line (a line's max_tokens wins)")
    ap.add_argument("--chunk-size", type=int, default=16, help="lines per task (default 16)")
    ap.add_argument("--parallel", type=int, default=8, help="sequences each worker's engine decodes together (default 8)")
    ap.add_argument("--model-threads", type=int, default=0, help="compute threads per worker (default: the worker's task threads)")
    ap.add_argument("--module-dir", help="folder holding the fastvlm module when it is not installed (e.g. build/release/python)")
    a = ap.parse_args(argv)
    if a.chunk_size < 1 or a.parallel < 1 or a.threads_per_worker < 1 or (a.local_workers or 1) < 1:
        ap.error("--chunk-size, --parallel, --threads-per-worker and --local-workers must be >= 1")
    if not os.path.isdir(a.model):
        ap.error(f"--model {a.model}: not a folder")
    jsonl = os.path.abspath(a.jsonl)
    try:
        lines = read_jsonl(jsonl)
    except OSError as e:
        ap.error(f"--jsonl {a.jsonl}: {e.strerror}")
    if not lines:
        ap.error(f"{a.jsonl}: no requests (expected one {{\"image\", \"prompt\"}} object per line)")
    module_dir = os.path.abspath(a.module_dir) if a.module_dir else None
    if module_dir:  # local worker processes inherit it; remote ones get it from the plugin
        os.environ["PYTHONPATH"] = module_dir + os.pathsep + os.environ.get("PYTHONPATH", "")

    cluster = None
    if a.scheduler:
        client = Client(a.scheduler)
    else:
        cluster = LocalCluster(n_workers=a.local_workers, threads_per_worker=a.threads_per_worker, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    try:
        plugin = FastVLMPlugin(os.path.abspath(a.model), a.precision, a.model_threads, a.parallel, module_dir)
        client.register_worker_plugin(plugin, name="fastvlm")
        t0 = time.monotonic()
        progress = Progress(len(lines))
        with open(a.out, "w", encoding="utf-8") as out:
            n = run(client, lines, os.path.dirname(jsonl), out, a.max_tokens, a.chunk_size, progress=progress)
        progress.close()
        wall = time.monotonic() - t0
        workers = len(client.scheduler_info()["workers"])
        print(f"{n} lines in {wall:.2f} s ({n / wall:.2f} lines/s) on {workers} workers, errors {progress.errors}", file=sys.stderr)
    finally:
        client.close()
        if cluster:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
