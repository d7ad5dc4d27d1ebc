#!/usr/bin/python3
"""Python-side benchmarks (docs/python.md, bench/README.md "Python").

  bench/python_bench.py overhead --model DIR [--calls 300] [--module-dir build/release/python]
      Python overhead per call: wall time of Model.describe() in Python minus the engine's own
      submit-to-result time (Result.timings["total_ms"]), median over --calls calls, for a text-only
      prompt, an image path, PNG bytes and a numpy array.

  bench/python_bench.py dask --model DIR --images IMG... [--lines 16] [--precision int8] [--max-tokens 32]
                             [--chunk-size 2] [--module-dir ...]
      examples/python/caption_dask.py's run() on a LocalCluster of 1 worker x 1 thread, then 2 workers x 1
      thread (127.0.0.1), each worker with a 1-thread model: images/s of the captioning (model load and
      cluster start excluded) and the ratio 2 workers / 1 worker, in the same run.
Prints one JSON object.
"""
import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)


def overhead(a):
    import fastvlm
    import numpy as np
    from PIL import Image

    m = fastvlm.Model(a.model, precision="fp32", threads=2, parallel=8)
    imgdir = os.path.join(a.model, "images")
    img = os.path.join(imgdir, sorted(f for f in os.listdir(imgdir) if f.endswith((".png", ".jpg")))[0])
    buf = io.BytesIO()
    Image.open(img).save(buf, "PNG")
    png = buf.getvalue()
    arr = np.asarray(Image.open(img).convert("RGB"))
    cases = {"text_only": dict(image=None, prompt="Hi", max_tokens=1), "image_path": dict(image=img, max_tokens=1),
             "png_bytes": dict(image=png, max_tokens=1), "numpy": dict(image=arr, max_tokens=1)}
    out = {"calls": a.calls, "image_size": list(arr.shape)}
    for name, kw in cases.items():
        for _ in range(10):
            m.describe(**kw)
        extra, wall = [], []
        for _ in range(a.calls):
            t0 = time.perf_counter()
            r = m.describe(**kw)
            w = (time.perf_counter() - t0) * 1e3
            wall.append(w)
            extra.append(w - r.timings["total_ms"])
        out[name] = {"wall_ms_median": statistics.median(wall), "overhead_ms_median": statistics.median(extra),
                     "overhead_ms_p95": sorted(extra)[int(0.95 * len(extra)) - 1]}
    return out


def worker_cpu_s():
    """CPU seconds (user + system) of this worker process, all its threads."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def dask(a):
    sys.path.insert(0, os.path.join(SOURCE, "examples", "python"))
    import caption_dask
    import distributed

    if a.module_dir:
        os.environ["PYTHONPATH"] = os.path.abspath(a.module_dir) + os.pathsep + os.environ.get("PYTHONPATH", "")
    tmp = tempfile.mkdtemp(prefix="fastvlm_dask_bench_")
    jl = os.path.join(tmp, "req.jsonl")
    with open(jl, "w") as f:
        for k in range(a.lines):
            f.write(json.dumps({"id": k, "image": os.path.abspath(a.images[k % len(a.images)]), "prompt": "Describe the image."}) + "\n")
    lines = caption_dask.read_jsonl(jl)
    out = {"lines": a.lines, "images": len(a.images), "precision": a.precision, "max_tokens": a.max_tokens,
           "chunk_size": a.chunk_size, "image_cache_mb": a.image_cache_mb, "cpus": os.cpu_count()}
    texts = {}
    for workers in (1, 2):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None)
        client = distributed.Client(cluster)
        try:
            t0 = time.monotonic()
            client.register_worker_plugin(caption_dask.FastVLMPlugin(os.path.abspath(a.model), a.precision, 1, 8,
                                                                     os.path.abspath(a.module_dir) if a.module_dir else None,
                                                                     {"image_cache_mb": a.image_cache_mb}),
                                          name="fastvlm")
            load_s = time.monotonic() - t0
            res = io.StringIO()
            cpu0 = sum(client.run(worker_cpu_s).values())
            t0 = time.monotonic()
            caption_dask.run(client, lines, tmp, res, max_tokens=a.max_tokens, chunk_size=a.chunk_size)
            wall = time.monotonic() - t0
            cpu = sum(client.run(worker_cpu_s).values()) - cpu0
        finally:
            client.close()
            cluster.close()
        got = [json.loads(s) for s in res.getvalue().splitlines()]
        texts[workers] = [g.get("text", g.get("error")) for g in got]
        out[f"workers_{workers}"] = {"wall_s": wall, "images_per_s": a.lines / wall, "plugin_setup_s": load_s,
                                     "worker_cpu_s": cpu, "cores_busy": cpu / wall,
                                     "errors": sum("error" in g for g in got)}
    out["speedup_2_vs_1"] = out["workers_2"]["images_per_s"] / out["workers_1"]["images_per_s"]
    out["same_text"] = texts[1] == texts[2]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "dask"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--module-dir", default=os.path.join(SOURCE, "build", "release", "python"))
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--lines", type=int, default=16)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=2)
    ap.add_argument("--image-cache-mb", type=float, default=0, help="worker models' image-feature cache (default 0: off, "
                    "so repeated images are encoded each time)")
    a = ap.parse_args()
    sys.path.insert(0, a.module_dir)
    if a.what == "dask" and not a.images:
        ap.error("dask needs --images")
    print(json.dumps(overhead(a) if a.what == "overhead" else dask(a), indent=1))


if __name__ == "__main__":
    main()
