"""The fastvlm Python module against the C++ front ends: round trips, streaming, image inputs,
errors as exceptions, threads, batch, chat, features, metrics, Ctrl-C."""
import io
import json
import os
import pathlib
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import CLI, MODEL, cli_batch


def first_images(scenes, n):
    d, items = scenes
    seen = []
    for it in items:
        if it["image"] not in seen:
            seen.append(it["image"])
    return [str(d / name) for name in seen[:n]]


def test_load_and_properties(fastvlm, model):
    assert model.precision == "fp32"
    assert model.parallel == 8
    assert model.weight_bytes > 0 and model.context > 0
    assert "fastvlm-scenes" in repr(model)
    assert set(fastvlm.PRECISIONS) == {"fp32", "bf16", "fp16", "int8", "int8_int4", "int4"}


def test_load_errors(fastvlm, tmp_path):
    with pytest.raises(fastvlm.Error, match="no_such_folder"):
        fastvlm.Model(tmp_path / "no_such_folder")
    with pytest.raises(fastvlm.Error, match="precision|preset"):
        fastvlm.Model(MODEL, precision="int3")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(fastvlm.Error, match="config.json"):
        fastvlm.Model(tmp_path)


def test_limits(fastvlm, scenes):
    """Model(limits=...): names and values checked; the limits reach the model files and every image path."""
    for bad, msg in [({"nope": 1}, "unknown limit 'nope'"), ({"max_image_size": 1}, "outside 64..16384"),
                     ({"max_pixels": "12X"}, "not a non-negative integer"), ({"max_pixels": 1.5}, "int"),
                     ({"max_pixels": True}, "int"), ([("max_pixels", 1)], "dict")]:
        with pytest.raises(fastvlm.Error, match=msg):
            fastvlm.Model(MODEL, limits=bad)
    with pytest.raises(fastvlm.Error, match="config.json: JSON nested deeper than 1 levels"):
        fastvlm.Model(MODEL, limits={"max_json_depth": 1})
    img = first_images(scenes, 1)[0]
    small = fastvlm.Model(MODEL, threads=1, parallel=1, limits={"max-pixels": 1000, "max_image_size": "1K"})
    arr = np.zeros((40, 40, 3), np.uint8)
    for image in (img, open(img, "rb").read(), arr):
        with pytest.raises(fastvlm.Error, match="max_pixels"):
            small.describe(image, max_tokens=1)
        with pytest.raises(fastvlm.Error, match="max_pixels"):
            small.encode_image(image)
    with pytest.raises(fastvlm.Error, match="max_pixels"):
        small.chat().send("What is it?", image=img, max_tokens=1)
    assert small.describe(np.zeros((30, 30, 3), np.uint8), max_tokens=1).text is not None


def test_describe_matches_cli_run(model, scenes):
    for img in first_images(scenes, 2):
        r = subprocess.run([CLI, "run", "--model", MODEL, "--image", img, "--threads", "2", "--max-tokens", "64", "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        want = json.loads(r.stdout)["text"]
        got = model.describe(img, max_tokens=64)
        assert got.ok and got.text == want
        assert got.stop == "eos" and got.generated_tokens == len(got.ids) > 0
        t = got.timings
        assert t["vision_ms"] > 0 and t["prefill_tokens"] + t["cached_tokens"] == got.prompt_tokens and t["total_ms"] >= t["ttft_ms"] > 0


def test_answers_are_right(model, scenes):
    d, items = scenes
    asked = [it for it in items[:12]]
    res = model.batch([{"image": str(d / it["image"]), "prompt": it["prompt"], "max_tokens": 64} for it in asked])
    right = sum(r.text.strip() == it["answer"] for r, it in zip(res, asked))
    assert right >= 11, [(r.text, it["answer"]) for r, it in zip(res, asked)]


def test_image_inputs_agree(model, scenes):
    img = first_images(scenes, 1)[0]
    pil = Image.open(img)
    rgb = np.asarray(pil.convert("RGB"))
    ref = model.preprocess(img)
    assert ref.dtype == np.float32 and ref.shape == (3, model.image_size, model.image_size)
    data = open(img, "rb").read()
    for x in (pathlib.Path(img), data, bytearray(data), memoryview(data), pil, rgb, np.ascontiguousarray(rgb[:, :, :])):
        np.testing.assert_array_equal(model.preprocess(x), ref)
    # Non-contiguous arrays and other PIL modes are converted as Pillow's convert("RGB") does.
    np.testing.assert_array_equal(model.preprocess(np.asfortranarray(rgb)), ref)
    gray = pil.convert("L")
    np.testing.assert_array_equal(model.preprocess(gray), model.preprocess(np.asarray(gray.convert("RGB"))))
    np.testing.assert_array_equal(model.preprocess(np.asarray(gray)), model.preprocess(np.asarray(gray.convert("RGB"))))
    rgba = pil.convert("RGBA")
    np.testing.assert_array_equal(model.preprocess(rgba), ref)
    want = model.describe(img, max_tokens=64).text
    assert model.describe(pil, max_tokens=64).text == want
    assert model.describe(rgb, max_tokens=64).text == want
    assert model.describe(data, max_tokens=64).text == want


def test_bad_images_raise(fastvlm, model, tmp_path):
    with pytest.raises(fastvlm.Error, match="dtype uint8"):
        model.describe(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(fastvlm.Error, match="H x W x 3"):
        model.describe(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(fastvlm.Error, match="empty"):
        model.describe(np.zeros((0, 32, 3), np.uint8))
    with pytest.raises(fastvlm.Error, match="cannot decode") as e:
        model.describe(b"not an image at all")
    assert e.value.kind == "invalid_request"
    with pytest.raises(fastvlm.Error, match="missing.png"):
        model.describe(str(tmp_path / "missing.png"))
    with pytest.raises(fastvlm.Error, match="expected a path, bytes"):
        model.describe(12345)
    bad = tmp_path / "trunc.png"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG")
    bad.write_bytes(buf.getvalue()[:40])
    with pytest.raises(fastvlm.Error, match="trunc.png"):
        model.describe(bad)


def test_request_errors_raise(fastvlm, model, scenes):
    img = first_images(scenes, 1)[0]
    with pytest.raises(fastvlm.Error, match="2 image placeholders"):
        model.describe(img, prompt="<image> and <image>: compare them.")
    with pytest.raises(fastvlm.Error, match="max_tokens"):
        model.describe(img, max_tokens=-1)
    with pytest.raises(fastvlm.Error, match="top_p"):
        model.describe(img, top_p=0)
    small = fastvlm.Model(MODEL, threads=1, context=64)
    with pytest.raises(fastvlm.Error, match="context") as e:
        small.describe(img, prompt="word " * 200)
    assert e.value.kind == "too_large"
    # The model keeps working after every failure above.
    assert model.describe(img, max_tokens=64).ok


def test_several_images(model, scenes):
    a, b = first_images(scenes, 2)
    r = model.describe([a, b], prompt="<image>\n<image>\nDescribe the image.", max_tokens=64)
    assert r.ok and r.text
    assert r.prompt_tokens > 2 * (model.image_size // 64) ** 2


def test_streaming(fastvlm, model, scenes):
    img = first_images(scenes, 1)[0]
    want = model.describe(img, max_tokens=64)
    s = model.describe(img, max_tokens=64, stream=True)
    pieces = list(s)
    assert "".join(pieces) == want.text and len(pieces) > 1
    assert s.result.text == want.text and s.result.ids == want.ids
    # Stopping early cancels the request (its KV pages go back) and the model goes on.
    s = model.describe(img, max_tokens=1000, ignore_eos=True, stream=True)
    next(iter(s))
    s.close()
    assert model.describe(img, max_tokens=64).text == want.text
    # A stream that fails raises at the point of failure.
    with pytest.raises(fastvlm.Error):
        list(model.describe(b"garbage", stream=True))


def test_threads_share_the_engine(model, scenes):
    imgs = first_images(scenes, 8)
    want = [model.describe(i, max_tokens=64).text for i in imgs]
    got = [None] * len(imgs)

    def work(k):
        got[k] = model.describe(imgs[k], max_tokens=64).text

    ts = [threading.Thread(target=work, args=(k,)) for k in range(len(imgs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert got == want


def test_batch_keeps_order_and_failures(model, scenes):
    imgs = first_images(scenes, 4)
    reqs = [{"image": imgs[0]}, {"image": "/nonexistent/x.png"}, {"image": imgs[1], "prompt": "How many shapes are there?"},
            {"image": 3}, {"prompt": "<image>", "image": None}, {"image": imgs[2], "max_tokens": "many"}, {"image": imgs[3]}]
    res = model.batch(reqs, parallel=3)
    assert len(res) == len(reqs)
    assert res[0].ok and res[0].text == model.describe(imgs[0], max_tokens=256).text
    assert not res[1].ok and "x.png" in res[1].error
    assert res[2].ok and res[2].text.endswith(".")
    assert not res[3].ok and "expected a path" in res[3].error
    assert not res[4].ok and "placeholder" in res[4].error
    assert not res[5].ok and "wrong type" in res[5].error
    assert res[6].ok


def test_batch_scheduling_options_give_the_same_text(fastvlm, model, scenes):
    imgs = first_images(scenes, 4)
    fast = fastvlm.Model(MODEL, threads=2, parallel=4, vision_slice_ms=0, prefill_first=True)
    got = fast.batch([{"image": i} for i in imgs])
    assert [r.text for r in got] == [model.describe(i, max_tokens=256).text for i in imgs]
    with pytest.raises(fastvlm.Error, match="vision_slice_ms"):
        fastvlm.Model(MODEL, vision_slice_ms=-1)


def test_batch_jsonl_equals_cli(model, scenes, tmp_path):
    d, items = scenes
    lines = [json.dumps({"id": k, "image": it["image"], "prompt": it["prompt"]}) for k, it in enumerate(items[:10])]
    lines += ['{"image": "nope.png"}', "not json", '{"image": 5}']
    jl = d / "py_batch.jsonl"
    jl.write_text("\n".join(lines) + "\n")
    want = cli_batch(jl, tmp_path / "out.jsonl")
    got = model.batch_jsonl([(n + 1, s) for n, s in enumerate(lines)], str(d), 64)
    strip = lambda s: {k: v for k, v in json.loads(s).items() if not k.endswith("_ms")}
    assert [strip(s) for s in got] == [strip(s) for s in want]


def test_chat(fastvlm, model, scenes):
    img = first_images(scenes, 1)[0]
    c = model.chat()
    r1 = c.send("Describe the image.", image=img, max_tokens=64)
    assert r1.text == model.describe(img, max_tokens=64).text
    p1 = c.position
    assert p1 > r1.prompt_tokens
    r2 = c.send("How many shapes are there?", max_tokens=16)
    assert r2.ok and r2.text and c.position > p1
    s = c.send("Describe the image.", max_tokens=16, stream=True)
    assert "".join(s) == s.result.text
    c.reset()
    assert c.position == 0
    assert c.send("Describe the image.", image=img, max_tokens=64).text == r1.text
    with pytest.raises(fastvlm.Error, match="cannot decode"):
        c.send("What is it?", image=b"junk")


def test_chat_from_threads_and_temporary_chat(fastvlm, model, scenes):
    img = first_images(scenes, 1)[0]
    # A stream keeps its chat alive: the temporary Chat is not destroyed (and cancelled) under it.
    text = "".join(model.chat().send("Describe the image.", image=img, max_tokens=64, stream=True))
    assert text == model.describe(img, max_tokens=64).text
    # Two threads sending on one chat: each send either runs or is refused; nothing crashes.
    c = model.chat()
    outcomes = []

    def send():
        try:
            outcomes.append(c.send("Describe the image.", image=img, max_tokens=32).ok)
        except fastvlm.Error as e:
            outcomes.append(str(e))

    ts = [threading.Thread(target=send) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert len(outcomes) == 4 and True in outcomes
    assert all(o is True or "still answering" in o for o in outcomes)


def test_encode_image(model, scenes):
    img = first_images(scenes, 1)[0]
    tokens = (model.image_size // 64) ** 2
    f = model.encode_image(img)
    v = model.encode_image(img, projected=False)
    assert f.dtype == np.float32 and f.shape[0] == tokens and v.shape[0] == tokens
    assert np.isfinite(f).all() and np.isfinite(v).all()
    np.testing.assert_array_equal(model.encode_image(img), f)


def test_image_size_option(fastvlm, scenes):
    """image_size= gives (S/64)² image tokens per image and still answers; bad sides raise naming the option."""
    img = first_images(scenes, 1)[0]
    small = fastvlm.Model(MODEL, threads=1, image_size=128)
    assert small.image_size == 128
    assert small.encode_image(img).shape[0] == 4
    assert isinstance(small.describe(img, "What color is the shape?", max_tokens=4).text, str)
    for bad in (100, -64):
        with pytest.raises(fastvlm.Error, match="LoadOptions::image_size = %d" % bad):
            fastvlm.Model(MODEL, threads=1, image_size=bad)


def test_tokenize_roundtrip(model):
    ids = model.tokenize("A red circle on the left.")
    assert ids and model.detokenize(ids) == "A red circle on the left."


def test_metrics(model):
    m = model.metrics()
    assert {"counters", "gauges", "histograms"} <= set(m)
    assert json.dumps(m)


def test_ctrl_c_cancels(fastvlm, scenes):
    m = fastvlm.Model(MODEL, threads=2, parallel=2)
    img = first_images(scenes, 1)[0]

    # Ctrl-C as soon as the request runs (a fixed delay raced the request: the scene model decodes
    # 1900 tokens in 0.18 s on a Zen 4 core, so the signal landed in a later test).
    def interrupt_when_running():
        deadline = time.monotonic() + 10
        while m.metrics()["gauges"]["running_sequences"] < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    t0 = time.monotonic()
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        m.describe(img, max_tokens=1900, ignore_eos=True)
    assert time.monotonic() - t0 < 10
    # The request was cancelled (not finished before the signal), ended and freed its slot.
    counters = m.metrics()["counters"]
    assert counters["requests_total"]["status=cancelled"] == 1, counters["requests_total"]
    assert counters["requests_total"]["status=ok"] == 0, counters["requests_total"]
    assert m.describe(img, max_tokens=64).ok


def test_prefix_cache_reuses_and_answers_the_same(fastvlm, scenes):
    # A second question about an image adopts the KV of the shared prefix (system prompt, image tokens):
    # no vision, cached_tokens > 0, and the answers of a model without the caches.
    img = first_images(scenes, 3)[2]
    on = fastvlm.Model(MODEL, threads=2, parallel=2)
    off = fastvlm.Model(MODEL, threads=2, parallel=2, image_cache_mb=0, prefix_cache_mb=0)
    for q in ("Describe the image.", "How many shapes are there?", "What colour is the left shape?"):
        a, b = on.describe(img, q, max_tokens=64), off.describe(img, q, max_tokens=64)
        assert a.ok and b.ok and a.text == b.text, (q, a.text, b.text)
        assert b.timings["cached_tokens"] == 0 and b.timings["vision_ms"] > 0
        if q != "Describe the image.":
            assert a.timings["cached_tokens"] > 0 and a.timings["vision_ms"] == 0, a.timings
    counters = on.metrics()["counters"]
    assert counters["prefix_cache_hits_total"] == 2
    with pytest.raises(fastvlm.Error, match="prefix_cache_mb"):
        fastvlm.Model(MODEL, prefix_cache_mb=-1)


def test_adaptive_precision_names_its_preset(fastvlm, model, scenes):
    img = first_images(scenes, 1)[0]
    # adaptive_pressure=False: the machine's CPU pressure (other tests beside this one) must not pick int8
    auto = fastvlm.Model(MODEL, precision="auto:fp32,int8", threads=2, ttft_target_ms=60000, adaptive_pressure=False)
    assert auto.precision == "auto:fp32,int8"
    got = auto.describe(img, max_tokens=32)
    assert got.ok and got.preset == "fp32"
    assert got.text == model.describe(img, max_tokens=32).text
    assert model.describe(img, max_tokens=4).preset == "fp32"
    m = auto.metrics()
    assert m["counters"]["preset_requests_total"]["preset=fp32"] == 1
    assert "fp32" in m["by_preset"] and "int8" in m["by_preset"]
    with pytest.raises(fastvlm.Error, match="at least two"):
        fastvlm.Model(MODEL, precision="auto:int8")
    with pytest.raises(fastvlm.Error, match="ttft_target_ms"):
        fastvlm.Model(MODEL, precision="int8", ttft_target_ms=-1)
