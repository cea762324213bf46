"""The HTTP service through FastAPI's TestClient: every field, every limit, concurrent requests."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner.cli import main
from captioner.inference.api import Captioner
from captioner.serve import CaptionModel, Limits, create_app
from captioner.serve.batching import Batcher, BatchSettings, Busy
from captioner.viz.overlay import HEATMAP
from tests.fixtures import write_bad_images

# Small enough that tests can cross every bound with tiny uploads.
LIMITS = Limits(max_request_bytes=300_000, max_images=4, max_pixels=200_000, max_beam_size=5, max_caption_len=20)


@pytest.fixture(scope="module")
def captioner(tiny_checkpoint) -> Captioner:
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def client(captioner, tiny_checkpoint):
    # A long wait cap, so that requests sent together are certainly batched together.
    model = CaptionModel(captioner, checkpoint=tiny_checkpoint, batching=BatchSettings(max_batch=8, max_wait_s=0.2))
    with TestClient(create_app(model, LIMITS)) as client:
        yield client


@pytest.fixture(scope="module")
def test_images(synth_data) -> list[Path]:
    return sorted((synth_data / "test").glob("*.png"))


def _png(path: Path, size: tuple[int, int] | None = None) -> bytes:
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = image.resize(size)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _post(client: TestClient, files: list[tuple[str, bytes]], **options):
    parts = [("images", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/v1/captions", files=parts, data={k: str(v) for k, v in options.items()})


def _assert_serving(client: TestClient, image: Path) -> None:
    response = _post(client, [("ok.png", _png(image))])
    assert response.status_code == 200 and response.json()["results"][0]["tokens"]


def test_every_field_of_a_caption(client, captioner, test_images):
    wide = _png(test_images[0], size=(96, 40))  # not square: width and height must not swap
    response = _post(client, [("wide.png", wide), ("second.png", _png(test_images[1]))], beam_size=2, max_len=12)

    assert response.status_code == 200
    body = response.json()
    assert body["options"] == {"beam_size": 2, "max_len": 12, "faithfulness": 0}
    expected = captioner.caption([Image.open(io.BytesIO(wide)), test_images[1]], beam_size=2, max_len=12)
    rows, cols = captioner.grid
    for index, (entry, want, name) in enumerate(zip(body["results"], expected, ["wide.png", "second.png"])):
        assert entry["index"] == index and entry["filename"] == name and "error" not in entry
        assert entry["caption"] == want.caption == " ".join(entry["tokens"])
        assert entry["tokens"] == want.words and entry["token_ids"] == want.tokens
        assert 1 <= len(entry["tokens"]) <= 12
        assert entry["score"] == pytest.approx(want.score, abs=1e-4)
        assert entry["grid"] == {"rows": rows, "cols": cols} and "faithfulness" not in entry  # only when asked
        attention = np.array(entry["attention"])
        assert attention.shape == (len(entry["tokens"]), rows, cols)
        np.testing.assert_allclose(attention.reshape(len(entry["tokens"]), -1), want.alphas.numpy(), atol=1e-6)
        np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert body["results"][0]["image"] == {"width": 96, "height": 40}
    assert body["results"][1]["image"] == {"width": 64, "height": 64}


def test_options_change_the_decoding(client, captioner, test_images):
    greedy = _post(client, [("a.png", _png(test_images[2]))], beam_size=1, max_len=3).json()["results"][0]
    want = captioner.caption(test_images[2], beam_size=1, max_len=3)[0]
    assert greedy["tokens"] == want.words and len(greedy["tokens"]) <= 3
    default = _post(client, [("a.png", _png(test_images[2]))]).json()
    assert default["options"] == {
        "beam_size": captioner.decoding.beam_size,
        "max_len": captioner.decoding.max_len,
        "faithfulness": 0,
    }


def test_faithfulness_per_word_when_asked(client, captioner, test_images):
    response = _post(client, [("a.png", _png(test_images[3]))], beam_size=2, faithfulness=1)
    assert response.status_code == 200 and response.json()["options"]["faithfulness"] == 1
    entry = response.json()["results"][0]
    [want] = captioner.caption(test_images[3], beam_size=2, faithfulness=True)
    assert len(entry["faithfulness"]) == len(entry["tokens"])
    for got, expected in zip(entry["faithfulness"], want.faithfulness.as_json()):
        for key, value in expected.items():
            assert got[key] == (value if value is None or isinstance(value, bool) else pytest.approx(value)), key
        assert set(got) == {
            "p",
            "p_no_look",
            "image_dependent",
            "erased",
            "p_attention_order",
            "p_random_orders",
            "area_attention",
            "area_random",
            "area_random_min",
            "faithful",
            "lead",
            "spread",
        }
    bad = _post(client, [("a.png", _png(test_images[3]))], faithfulness=2)
    assert bad.status_code == 422 and bad.json()["detail"] == "faithfulness must be 0 or 1, got '2'"
    old = _post(client, [("a.png", _png(test_images[3]))], erasure=1)  # the half-α test's option is gone
    assert old.status_code == 422 and "unknown form field 'erasure'" in old.json()["detail"]


def test_health_model_and_overlay(client, captioner):
    assert client.get("/healthz").json() == {"status": "ok", "pending_images": 0}
    info = client.get("/v1/model").json()
    assert info["backbone"] == "resnet18" and info["grid"] == {"rows": 4, "cols": 4}
    assert info["vocab_size"] == len(captioner.vocab) and info["image_size"] == 64
    assert info["decoding_defaults"] == {"beam_size": 3, "max_len": 30}
    assert info["metrics"] is None  # the tiny run writes no metrics.json
    assert info["limits"] == LIMITS.as_json()
    assert info["legend"][0] == [0.0, "0.062\n(uniform)"] and info["legend"][-1] == [1.0, "1"]  # 4x4 grid
    style = client.get("/v1/overlay").json()
    assert style == json.loads(json.dumps(HEATMAP.as_json()))
    assert len(style["lut"]) == 256 and style["lut"][0] != style["lut"][-1]


def test_model_reports_metrics_json_beside_the_checkpoint(captioner, tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"test/BLEU-4": 0.25, "test/CIDEr": 1.5, "note": "x"}))
    model = CaptionModel(captioner, checkpoint=tmp_path / "best.ckpt")
    with TestClient(create_app(model)) as client:
        assert client.get("/v1/model").json()["metrics"] == {"test/BLEU-4": 0.25, "test/CIDEr": 1.5}


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert "http" not in page.text.replace('name="viewport"', "")  # no CDN: the page works offline


def test_bad_images_get_their_own_errors_while_the_others_are_captioned(client, test_images, tmp_path):
    bad = write_bad_images(tmp_path / "bad", test_images[0])
    big = Image.new("RGB", (600, 400), (9, 9, 9))  # 240,000 pixels > LIMITS.max_pixels, yet a small PNG
    big_png = io.BytesIO()
    big.save(big_png, format="PNG")
    files = [
        ("text.png", bad["text"].read_bytes()),
        ("good.png", _png(test_images[3])),
        ("truncated.png", bad["truncated"].read_bytes()),
        ("bomb.png", bad["huge"].read_bytes()),  # a header claiming 40000 x 40000 pixels
    ]
    response = _post(client, files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [name for name, _ in files]
    assert "not an image" in results[0]["error"]
    assert results[1]["tokens"] and "error" not in results[1]
    assert "truncated or corrupt" in results[2]["error"]
    assert "too large" in results[3]["error"]
    for result in (results[0], results[2], results[3]):
        assert set(result) == {"index", "filename", "error"}

    over = _post(client, [("big.png", big_png.getvalue()), ("empty.jpg", b"")])
    assert over.status_code == 422
    errors = [r["error"] for r in over.json()["results"]]
    assert "too large" in errors[0] and f"> {LIMITS.max_pixels} pixels" in errors[0]
    assert "empty" in errors[1]


def _chunked_multipart(data: bytes):
    boundary = "captionerboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    # A generator body is sent chunked, without Content-Length: only counting the bytes stops it.
    return {"content": (body[i : i + 65536] for i in range(0, len(body), 65536)), "headers": headers}


def _part(name: bytes, filename: bytes | None, data: bytes) -> bytes:
    disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
    return b"--B0UNDARY\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"


def _raw_multipart(*parts: bytes, close: bool = True) -> dict:
    """A multipart body written by hand (httpx would always send a file with a filename, and close it)."""
    body = b"".join(parts) + (b"--B0UNDARY--\r\n" if close else b"")
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=B0UNDARY"}}


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("body over the size limit", 413, "larger than 300000 bytes"),
        ("chunked body over the size limit", 413, "larger than 300000 bytes"),
        ("too many images", 413, "at most 4 per request"),
        ("only unreadable images", 422, "no uploaded image could be read"),
        ("JSON instead of multipart", 415, "multipart/form-data"),
        ("raw image body", 415, "multipart/form-data"),
        ("no images", 422, "no images"),
        ("file in another field", 422, "image files go in `images`"),
        ("beam_size 0", 422, "beam_size must be an integer from 1 to 5"),
        ("beam_size over the limit", 422, "beam_size must be an integer from 1 to 5"),
        ("beam_size not a number", 422, "beam_size must be an integer"),
        ("max_len over the limit", 422, "max_len must be an integer from 1 to 20"),
        ("unknown option", 422, "unknown form field 'url'"),
        ("image sent as a text part", 422, "a part of `images` was sent as a text field (no filename)"),
        ("body without its closing boundary", 400, "ends before its closing boundary"),
        ("filename over the header limit", 422, "send each image with a filename of at most 255 characters"),
        ("filename over the limit", 422, "a filename of 1000 characters: send each image with a filename of at most"),
    ],
)
def test_limits_are_4xx_json_and_the_service_keeps_serving(client, test_images, name, status, message):
    good = ("good.png", _png(test_images[0]))
    requests = {
        "body over the size limit": lambda: _post(client, [("big.bin", b"\0" * 300_001)]),
        "chunked body over the size limit": lambda: client.post("/v1/captions", **_chunked_multipart(b"\0" * 400_000)),
        "too many images": lambda: _post(client, [good] * 5),
        "only unreadable images": lambda: _post(client, [("a.txt", b"hello"), ("b.txt", b"world")]),
        "JSON instead of multipart": lambda: client.post("/v1/captions", json={"url": "http://example.com/x.jpg"}),
        "raw image body": lambda: client.post("/v1/captions", content=good[1], headers={"content-type": "image/png"}),
        "no images": lambda: client.post("/v1/captions", files={"beam_size": (None, "2")}),
        "file in another field": lambda: client.post("/v1/captions", files={"image": good}),
        "beam_size 0": lambda: _post(client, [good], beam_size=0),
        "beam_size over the limit": lambda: _post(client, [good], beam_size=6),
        "beam_size not a number": lambda: _post(client, [good], beam_size="3; rm"),
        "max_len over the limit": lambda: _post(client, [good], max_len=21),
        "unknown option": lambda: _post(client, [good], url="http://example.com/x.jpg"),
        "image sent as a text part": lambda: client.post(
            "/v1/captions", **_raw_multipart(_part(b"images", None, good[1]))
        ),
        "body without its closing boundary": lambda: client.post(
            "/v1/captions", **_raw_multipart(_part(b"images", b"a.png", good[1]), close=False)
        ),
        "filename over the header limit": lambda: _post(client, [("x" * 5000 + ".png", good[1])]),
        "filename over the limit": lambda: _post(client, [("x" * 996 + ".png", good[1])]),
    }
    response = requests[name]()
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["detail"]
    _assert_serving(client, test_images[1])


def test_too_many_waiting_images_is_503_with_retry_after(captioner, tiny_checkpoint, test_images):
    model = CaptionModel(captioner, checkpoint=tiny_checkpoint, batching=BatchSettings(max_pending=2))
    with TestClient(create_app(model, LIMITS)) as client:
        response = _post(client, [("a.png", _png(test_images[0]))] * 3)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "at most 2" in response.json()["detail"]
        _assert_serving(client, test_images[0])


def test_concurrent_requests_each_get_their_own_images_caption(client, captioner, test_images):
    # The tiny model may give several images the same words, but scores and attention differ
    # per image: the expected answers are told apart by them, so a misrouted result fails.
    jobs = [(path, beam) for beam in (1, 3) for path in test_images]  # 16 requests, two batching keys
    expected = {(p, b): captioner.caption(p, beam_size=b)[0] for p, b in jobs}
    assert len({round(r.score, 4) for r in expected.values()}) == len(jobs)
    batches_before = len(client.app.state.model.batcher.batch_sizes)
    barrier = threading.Barrier(len(jobs))

    def send(job):
        path, beam = job
        barrier.wait()
        return _post(client, [(path.name, _png(path))], beam_size=beam)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs))

    for (path, beam), response in zip(jobs, responses):
        assert response.status_code == 200
        entry = response.json()["results"][0]
        want = expected[(path, beam)]
        assert entry["filename"] == path.name and entry["tokens"] == want.words
        assert entry["score"] == pytest.approx(want.score, abs=1e-4)
        np.testing.assert_allclose(np.array(entry["attention"]).reshape(len(want.words), -1), want.alphas, atol=1e-5)
    sizes = list(client.app.state.model.batcher.batch_sizes)[batches_before:]
    assert sum(sizes) == len(jobs) and max(sizes) > 1 and max(sizes) <= 8  # batched, within max_batch


def test_batcher_routes_results_keeps_keys_apart_and_survives_failures():
    calls = []

    def run(key, values):
        calls.append((key, list(values)))
        if "boom" in values:
            raise RuntimeError("boom")
        return [f"{key}:{v * 2}" for v in values]

    async def scenario():
        async with Batcher(run, BatchSettings(max_batch=3, max_wait_s=0.05, max_pending=50)) as batcher:
            jobs = [batcher.submit(key, [n, n + 100]) for n in range(5) for key in ("a", "b")]
            results = await asyncio.gather(*jobs)
            failed = await asyncio.gather(
                batcher.submit("a", ["boom"]), batcher.submit("b", [7]), return_exceptions=True
            )
            with pytest.raises(Busy):
                await batcher.submit("a", list(range(51)))
            after = await batcher.submit("a", [1])
            return results, failed, after, batcher.pending

    results, failed, after, pending = asyncio.run(scenario())
    assert results == [[f"{key}:{n * 2}", f"{key}:{(n + 100) * 2}"] for n in range(5) for key in ("a", "b")]
    assert isinstance(failed[0], RuntimeError) and failed[1] == ["b:14"]
    assert after == ["a:2"] and pending == 0
    assert all(len(values) <= 3 for _, values in calls)
    assert any(len(values) > 1 for _, values in calls)


def test_serve_command_is_registered_and_reports_a_bad_checkpoint(tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert "error: checkpoint" in capsys.readouterr().err


def test_load_benchmark_runs_a_short_bounded_load_without_errors(tiny_checkpoint, synth_data, capsys):
    from benchmarks.serve_load import main as serve_load

    argv = ["--ckpt", str(tiny_checkpoint), "--images", str(synth_data / "test"), "--clients", "4"]
    argv += ["--requests", "24", "--single-requests", "6", "--warmup", "4", "--time-limit", "60"]
    large = ["--large-clients", "2", "--large-requests", "2", "--large-images", "2", "--large-side", "1500"]
    results = serve_load([*argv, *large, "--settle", "0.5"])

    assert json.loads(capsys.readouterr().out) == results
    assert results["one_client"]["requests"] == 6 and results["concurrent"]["requests"] == 24
    for phase in ("one_client", "concurrent"):
        assert results[phase]["errors"] == 0 and results[phase]["requests_per_s"] > 0
        assert 0 < results[phase]["p50_ms"] <= results[phase]["p99_ms"]
    assert results["batching_speedup"] > 0 and results["server_rss_mib_before"] > 0
    assert results["model"]["grid"] == {"rows": 4, "cols": 4}
    burst = results["large_images"]
    assert burst["requests"] == 4 and burst["captioned_requests"] + burst["refused_503_or_4xx"] == 4
    assert burst["errors"] == 0 and burst["server_rss_mib_peak"] >= burst["server_rss_mib_base"] > 0
    assert "server_rss_mib_after_0.5s" in burst
