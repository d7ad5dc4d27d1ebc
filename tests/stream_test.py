#!/usr/bin/python3
"""`fastvlm-cli stream` end to end on a real video pipe (Debian ffmpeg):

  scenes (tools/make_scenes.py) -> 320x240 frames, each scene held for 5 frames -> video.mp4 (mpeg4)
  -> `ffmpeg -i video.mp4 -f image2pipe -vcodec mjpeg -` -> fastvlm-cli stream

1. --every-frame: one answer per frame, in order, each equal to `fastvlm-cli batch` on the same frame
   written as a file by ffmpeg's image2 muxer; frames byte-identical to an earlier one hit the cache.
2. latest frame wins: frames written at 50 frames/s into stdin with --fps-limit 5: frames are skipped,
   numbers increase, the last frame is answered, answered + skipped + errors = frames.
3. bad input: garbage between frames, a frame cut in the middle, a truncated last frame: each is
   reported and skipped, every other frame is answered as in 1.

  tests/stream_test.py --cli fastvlm-cli --model DIR --work DIR
Exit 0 on success, 1 on a failure, 77 when ffmpeg is missing.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def run_stream(a, data, extra, pace=None):
    """fastvlm-cli stream --json on `data` (bytes, or a list of frames written `pace` s apart)."""
    cmd = [a.cli, "stream", "--model", a.model, "--threads", "2", "--max-tokens", "48", "--json"] + extra
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = {}

    def drain(name, f):
        got[name] = f.read()

    readers = [threading.Thread(target=drain, args=("out", p.stdout)), threading.Thread(target=drain, args=("err", p.stderr))]
    for t in readers:
        t.start()
    try:
        if pace is None:
            p.stdin.write(data)
        else:
            for f in data:
                p.stdin.write(f)
                p.stdin.flush()
                time.sleep(pace)
    finally:
        p.stdin.close()
    try:
        p.wait(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("stream did not end within 300 s")
    for t in readers:
        t.join()
    err = got["err"].decode(errors="replace")
    if p.returncode != 0:
        fail(f"stream exited {p.returncode}: {err}")
    return [json.loads(s) for s in got["out"].decode().splitlines()], err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    if not shutil.which("ffmpeg"):
        print("SKIP: ffmpeg not found (Debian: ffmpeg)")
        return 77
    from PIL import Image

    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    scenes = os.path.join(a.work, "scenes")
    subprocess.run([sys.executable, os.path.join(SOURCE, "tools", "make_scenes.py"), "--seed", "540000", "--count", "4",
                    "--out", scenes], check=True, capture_output=True)
    imgs = sorted({json.loads(s)["image"] for s in open(os.path.join(scenes, "answers.jsonl")) if s.strip()})
    src = os.path.join(a.work, "src")
    os.makedirs(src)
    k = 0
    for name in imgs:
        im = Image.open(os.path.join(scenes, name)).convert("RGB")
        im.thumbnail((320, 240))
        canvas = Image.new("RGB", (320, 240), (235, 235, 235))
        canvas.paste(im, ((320 - im.width) // 2, (240 - im.height) // 2))
        for _ in range(5):
            canvas.save(os.path.join(src, f"s_{k:03d}.png"))
            k += 1
    video = os.path.join(a.work, "video.mp4")
    ff = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run(ff + ["-framerate", "10", "-i", os.path.join(src, "s_%03d.png"), "-c:v", "mpeg4", "-q:v", "2", video], check=True)
    mjpeg = subprocess.run(ff + ["-i", video, "-f", "image2pipe", "-vcodec", "mjpeg", "-q:v", "3", "-"], check=True,
                           capture_output=True).stdout
    fdir = os.path.join(a.work, "frames")
    os.makedirs(fdir)
    subprocess.run(ff + ["-i", video, "-vcodec", "mjpeg", "-q:v", "3", os.path.join(fdir, "f_%03d.jpg")], check=True)
    files = sorted(glob.glob(os.path.join(fdir, "f_*.jpg")))
    frames = [open(f, "rb").read() for f in files]
    n = len(frames)
    if n != k or b"".join(frames) != mjpeg:
        fail(f"ffmpeg gave {n} frame files for {k} frames, or they differ from the pipe's bytes")
    dup = sum(1 for i in range(1, n) if frames[i] in frames[:i])

    # The reference: fastvlm-cli batch on the frame files.
    jl = os.path.join(a.work, "frames.jsonl")
    with open(jl, "w") as f:
        for i, p in enumerate(files):
            f.write(json.dumps({"id": i, "image": p}) + "\n")
    r = subprocess.run([a.cli, "batch", "--model", a.model, "--jsonl", jl, "--threads", "2", "--max-tokens", "48",
                        "--parallel", "4"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        fail(f"batch: {r.stderr}")
    want = [json.loads(s)["text"] for s in r.stdout.splitlines()]

    # 1. every frame
    got, err = run_stream(a, mjpeg, ["--every-frame"])
    if [g["frame"] for g in got] != list(range(n)):
        fail(f"--every-frame answered frames {[g['frame'] for g in got]}")
    bad = [i for i in range(n) if got[i].get("text") != want[i]]
    if bad:
        fail(f"frames {bad} differ from batch: {got[bad[0]]} vs {want[bad[0]]!r}")
    hits = sum(1 for g in got if g.get("cached"))
    if hits < dup:
        fail(f"{dup} frames repeat an earlier frame's bytes but only {hits} cache hits")
    print(f"every frame: {n} frames equal batch's answers; {hits} cache hits ({dup} byte-identical repeats); {err.strip()}")

    # 2. latest frame wins
    got, err = run_stream(a, frames, ["--fps-limit", "5"], pace=0.02)
    nums = [g["frame"] for g in got]
    # (The first frames may queue up in the pipe while the model loads, so frame 0 may be skipped too.)
    if not nums or nums != sorted(set(nums)) or nums[-1] != n - 1:
        fail(f"latest-wins answered frames {nums}")
    skipped = sum(g["skipped"] for g in got)
    if skipped == 0 or len(got) + skipped != n:
        fail(f"{len(got)} answered + {skipped} skipped != {n} frames")
    for g in got:
        if g.get("text") != want[g["frame"]]:
            fail(f"frame {g['frame']}: {g} vs {want[g['frame']]!r}")
    print(f"latest wins at 50 fps in, --fps-limit 5: answered {nums}, skipped {skipped}; {err.strip()}")

    # 3. bad input
    cut = frames[7][: len(frames[7]) // 2]
    data = frames[0] + b"garbage between frames" + b"".join(frames[1:7]) + cut + b"".join(frames[8:]) + frames[0][:100]
    got, err = run_stream(a, data, ["--every-frame"])
    errors = [g for g in got if "error" in g]
    answered = {g["frame"]: g["text"] for g in got if "text" in g}
    if "neither JPEG nor PNG" not in err:
        fail(f"garbage not reported: {err}")
    if len(errors) < 2 or not any("truncated" in g["error"] for g in errors):
        fail(f"broken/truncated frames not reported: {errors}")
    # Frame numbers count the broken frames; every intact frame has its answer.
    intact = [frames[0]] + frames[1:7] + frames[8:]
    if len(answered) != len(intact):
        fail(f"{len(answered)} answers for {len(intact)} intact frames: {got}")
    ok_texts = [answered[k] for k in sorted(answered)]
    want_texts = [want[0]] + want[1:7] + want[8:]
    if ok_texts != want_texts:
        fail(f"answers around broken frames differ: {ok_texts} vs {want_texts}")
    print(f"bad input: {len(errors)} broken frames reported, {len(answered)} intact frames answered as batch; {err.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
