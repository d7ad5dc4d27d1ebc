"""pytest set-up for the fastvlm Python module (python/tests, run by ctest as python.pytest).

Environment (tests/CMakeLists.txt sets it): FASTVLM_PYTHON_DIR (the built module's folder),
FASTVLM_CLI (fastvlm-cli, the reference front end), FASTVLM_SOURCE (the source tree).
"""
import json
import os
import subprocess
import sys

import pytest

SOURCE = os.environ.get("FASTVLM_SOURCE", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
MODULE_DIR = os.environ.get("FASTVLM_PYTHON_DIR", os.path.join(SOURCE, "build", "release", "python"))
CLI = os.environ.get("FASTVLM_CLI", os.path.join(SOURCE, "build", "release", "examples", "fastvlm-cli"))
MODEL = os.path.join(SOURCE, "models", "fastvlm-scenes")
sys.path.insert(0, MODULE_DIR)


@pytest.fixture(scope="session")
def fastvlm():
    import fastvlm as m
    return m


@pytest.fixture(scope="session")
def model(fastvlm):
    return fastvlm.Model(MODEL, precision="fp32", threads=2, parallel=8)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """60 held-out scenes (seeds 520000..520059) with their answers.jsonl."""
    out = tmp_path_factory.mktemp("scenes")
    subprocess.run([sys.executable, os.path.join(SOURCE, "tools", "make_scenes.py"), "--seed", "520000", "--count", "60",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    with open(out / "answers.jsonl") as f:
        items = [json.loads(s) for s in f if s.strip()]
    return out, items


def cli_batch(jsonl, out, precision="fp32", parallel=8, max_tokens=64):
    """fastvlm-cli batch on `jsonl`; its output lines."""
    r = subprocess.run([CLI, "batch", "--model", MODEL, "--jsonl", str(jsonl), "--out", str(out), "--precision", precision,
                        "--parallel", str(parallel), "--threads", "2", "--max-tokens", str(max_tokens)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        return [s.rstrip("\n") for s in f]
