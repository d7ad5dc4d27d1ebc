"""Distributed captioning (examples/python/caption_dask.py) on a LocalCluster of 2 worker processes x
1 thread on 127.0.0.1: 60 scene images give the same answers as `fastvlm-cli batch`, line for line,
also when a worker is killed mid-run (its chunks are run again; no line is lost)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MODEL, MODULE_DIR, SOURCE, cli_batch

sys.path.insert(0, os.path.join(SOURCE, "examples", "python"))
distributed = pytest.importorskip("distributed")
import caption_dask  # noqa: E402


def strip_times(lines):
    return [{k: v for k, v in json.loads(s).items() if not k.endswith("_ms")} for s in lines]


@pytest.fixture(scope="module")
def job(scenes, tmp_path_factory):
    d, items = scenes
    seen, lines = set(), []
    for it in items:
        if it["image"] in seen:
            continue
        seen.add(it["image"])
        lines.append(json.dumps({"id": f"scene-{len(lines)}", "image": it["image"], "prompt": "Describe the image."}))
    assert len(lines) == 60
    lines.insert(17, '{"image": "missing.png", "id": "bad-image"}')
    lines.insert(33, "{broken json")
    jl = d / "dask.jsonl"
    jl.write_text("\n".join(lines) + "\n")
    want = cli_batch(jl, tmp_path_factory.mktemp("cli") / "out.jsonl", precision="int8", max_tokens=64)
    return d, jl, want


def test_local_cluster_with_a_killed_worker(job, tmp_path):
    d, jl, want = job
    os.environ["PYTHONPATH"] = MODULE_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    killed = []
    try:
        client.register_worker_plugin(caption_dask.FastVLMPlugin(MODEL, "int8", 1, 8, MODULE_DIR), name="fastvlm")
        pids = client.run(os.getpid)

        def kill_one(k):
            if killed:
                return
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                killed.append(pids[busy[0]])
                os.kill(pids[busy[0]], signal.SIGKILL)

        lines = caption_dask.read_jsonl(jl)
        out = tmp_path / "out.jsonl"
        with open(out, "w") as f:
            n = caption_dask.run(client, lines, str(d), f, max_tokens=64, chunk_size=3, on_chunk_done=kill_one)
        assert n == len(lines) == 62
        assert killed, "no worker was busy when the first chunk ended"
        # The nanny restarts the killed worker; the plugin loads the model there again.
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert killed[0] not in client.run(os.getpid).values()
        got = out.read_text().splitlines()
    finally:
        client.close()
        cluster.close()
    assert strip_times(got) == strip_times(want)
    assert sum("error" in json.loads(s) for s in got) == 2


def test_command_line(job, tmp_path):
    d, jl, want = job
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, os.path.join(SOURCE, "examples", "python", "caption_dask.py"), "--model", MODEL,
                        "--jsonl", str(jl), "--out", str(out), "--local-workers", "2", "--threads-per-worker", "1",
                        "--precision", "int8", "--max-tokens", "64", "--chunk-size", "8", "--module-dir", MODULE_DIR],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "62 lines in" in r.stderr and "errors 2" in r.stderr
    assert strip_times(out.read_text().splitlines()) == strip_times(want)


def test_command_line_errors(tmp_path):
    script = os.path.join(SOURCE, "examples", "python", "caption_dask.py")
    r = subprocess.run([sys.executable, script, "--model", str(tmp_path / "none"), "--jsonl", "x", "--out", "y"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a folder" in r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    r = subprocess.run([sys.executable, script, "--model", MODEL, "--jsonl", str(empty), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no requests" in r.stderr
