"""Failures a user can cause (issue 24): each is one line naming the thing and the fix, with an
exit status or HTTP status, never a traceback; and the service's decoding memory has a bound."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner.cli import main
from captioner.data.images import decode_image, header_pixels
from captioner.errors import CaptionerError
from captioner.inference.api import Captioner
from captioner.models.search import DECODING_LIMITS, DecodingConfig
from captioner.serve import CaptionModel, Limits, create_app
from captioner.serve.batching import Busy
from captioner.serve.budget import PixelBudget, release_free_memory
from tests.fixtures import TINY_TRAINING


def _one_error_line(capsys) -> tuple[str, str]:
    """(the single `error:` line on stderr, stdout); fails on a traceback or several error lines."""
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0], out


@pytest.fixture(scope="module")
def good_image(synth_data) -> Path:
    return sorted((synth_data / "test").glob("*.png"))[0]


# 1. The service's memory: a budget of pixels decoding at once, uploads shrunk early.


def test_a_large_upload_is_shrunk_before_it_becomes_rgb():
    pixels = np.tile(np.linspace(0, 255, 4000, dtype=np.uint8), (3000, 1))  # a grey ramp, 4000x3000
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    data = buffer.getvalue()
    assert header_pixels(data) == 4000 * 3000 and header_pixels(b"not an image") == 0
    image, size = decode_image(data, "ramp.png", target=224)
    assert size == (4000, 3000)  # what the answer reports: the upload's own size
    assert image.mode == "RGB" and image.size == (500, 375)  # reduced 8 times, both sides still over 224
    expected = np.asarray(Image.fromarray(pixels, "L").resize((500, 375), Image.BOX))
    assert np.abs(np.asarray(image)[..., 0].astype(int) - expected).max() <= 1
    small, small_size = decode_image(data, "ramp.png", target=None)  # no target: full size
    assert small.size == small_size == (4000, 3000)


def test_pixel_budget_makes_uploads_wait_then_refuses_with_busy():
    async def scenario() -> list[str]:
        budget, events = PixelBudget(total=100, max_wait_s=0.5), []

        async def hold(name: str, pixels: int, seconds: float) -> None:
            async with budget.reserve(pixels):
                events.append(f"{name} in")
                await asyncio.sleep(seconds)
            events.append(f"{name} out")

        first = asyncio.create_task(hold("a", 80, 0.2))
        await asyncio.sleep(0.01)
        await hold("b", 50, 0)  # waits for a: 80 + 50 > 100
        await first
        holder = asyncio.create_task(hold("c", 100, 2.0))
        await asyncio.sleep(0.01)
        with pytest.raises(Busy, match=r"did not fit within 0.5 s; retry shortly"):
            await hold("d", 1, 0)
        assert budget.free == 0
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        assert budget.free == 100  # a cancelled request gives its pixels back
        return events

    assert asyncio.run(scenario())[:4] == ["a in", "a out", "b in", "b out"]


def test_spent_budget_is_503_with_retry_after(tiny_checkpoint, good_image):
    limits = Limits(max_pixels=200_000, max_pixels_in_flight=200_000, max_decode_wait_s=1)
    model = CaptionModel(Captioner.from_checkpoint(tiny_checkpoint, device="cpu"), checkpoint=tiny_checkpoint)
    files = [("images", ("a.png", good_image.read_bytes(), "image/png"))]
    with TestClient(create_app(model, limits)) as client:
        budget = client.app.state.budget
        budget.free = 0  # as if other requests were decoding the whole budget
        busy = client.post("/v1/captions", files=files)
        budget.free = budget.total
        served = client.post("/v1/captions", files=files)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "retry shortly" in busy.json()["detail"] and "pixels of other uploads" in busy.json()["detail"]
    assert served.status_code == 200


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_free_memory_is_handed_back_on_glibc():
    assert release_free_memory() is True


# 2. and 3. `captioner attend`: --out that is a file; an image too thin to draw.


@pytest.mark.parametrize("under", ["", "sub/deeper"])
def test_attend_out_naming_a_file_is_one_error_line(tiny_checkpoint, good_image, tmp_path, capsys, under):
    blocker = tmp_path / "taken.png"
    blocker.write_bytes(b"a file")
    out = blocker / under if under else blocker
    code = main(["attend", "--ckpt", str(tiny_checkpoint), str(good_image), "--out", str(out)])
    line, printed = _one_error_line(capsys)
    assert code == 2 and printed == ""
    assert f"--out {out}" in line and "name a folder" in line
    assert str(blocker) in line and ("is a file" in line)


def test_attend_reports_a_thin_image_and_draws_the_others(tiny_checkpoint, good_image, tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.new("L", (1, 20000), 128).save(thin)
    out = tmp_path / "overlays"
    code = main(["attend", "--ckpt", str(tiny_checkpoint), str(thin), str(good_image), "--out", str(out)])
    line, printed = _one_error_line(capsys)
    assert code == 1
    assert printed.split() == [str(out / f"{good_image.stem}.png")]
    assert line.startswith(f"error: {thin}: a 1x20000 image is too long and thin to draw") and "crop it" in line
    assert Image.open(out / f"{good_image.stem}.png").format == "PNG"


def test_attend_reports_an_image_it_cannot_write_and_draws_the_others(tiny_checkpoint, good_image, tmp_path, capsys):
    second = tmp_path / "in" / "second.png"
    second.parent.mkdir()
    Image.open(good_image).save(second)
    out = tmp_path / "overlays"
    out.mkdir()
    (out / "second").write_text("a file where the per-word folder goes")
    args = ["attend", "--ckpt", str(tiny_checkpoint), str(second), str(good_image), "--out", str(out), "--per-word"]
    code = main(args)
    line, printed = _one_error_line(capsys)
    assert code == 1
    assert line.startswith(f"error: {second}: could not draw its attention into {out}")
    assert printed.split()[0] == str(out / f"{good_image.stem}.png")


# 4. `captioner train fit|test --ckpt_path`.


def _train(subcommand: str, synth_data: Path, tmp_path: Path, ckpt_path: str) -> int:
    return main(
        [
            "train",
            subcommand,
            "--data.data_dir",
            str(synth_data),
            *TINY_TRAINING,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--checkpoint.dirpath",
            str(tmp_path / "checkpoints"),
            "--ckpt_path",
            ckpt_path,
        ]
    )


@pytest.mark.parametrize("subcommand", ["fit", "test"])
@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist; pass the .ckpt file written by `captioner train fit`"),
        ("truncated", "is not a PyTorch checkpoint, or it is damaged or truncated; pass the .ckpt file"),
        ("text", "is not a PyTorch checkpoint, or it is damaged or truncated; pass the .ckpt file"),
    ],
)
def test_unusable_ckpt_path_is_one_error_line(
    synth_data, tiny_checkpoint, good_image, tmp_path, capsys, subcommand, kind, message
):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    elif kind == "text":
        path.write_text("epoch: 3\n")
    assert _train(subcommand, synth_data, tmp_path, str(path)) == 2
    line, _ = _one_error_line(capsys)
    assert f"checkpoint {path} {message}" in line
    # The same file, the same words, from an inference command.
    assert main(["caption", "--ckpt", str(path), str(good_image)]) == 2
    assert _one_error_line(capsys)[0] == line
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_resuming_from_last_without_one_is_refused(synth_data, tmp_path, capsys):
    assert _train("fit", synth_data, tmp_path, "last") == 2
    line, _ = _one_error_line(capsys)
    assert "--ckpt_path last: there is nothing to resume, no last.ckpt in" in line
    assert str(tmp_path / "checkpoints") in line and "drop --ckpt_path to train from scratch" in line
    assert not (tmp_path / "checkpoints").exists()


# 5. Beam size and caption length: one bound for the CLI, the Python API and the service.


@pytest.mark.parametrize("flag, name", [("--beam-size", "beam_size"), ("--max-len", "max_len")])
def test_cli_bounds_decoding_settings(tiny_checkpoint, good_image, capsys, flag, name):
    high = DECODING_LIMITS[name]
    assert main(["caption", "--ckpt", str(tiny_checkpoint), str(good_image), flag, "100000"]) == 2
    line, printed = _one_error_line(capsys)
    assert printed == "" and f"error: {flag}: {name} must be at most {high}, got 100000" in line
    assert main(["caption", "--ckpt", str(tiny_checkpoint), str(good_image), flag, str(high)]) == 0


def test_python_api_and_service_share_the_bounds(tiny_checkpoint, good_image):
    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    with pytest.raises(CaptionerError, match=r"beam_size must be at most 10, got 100000"):
        captioner.caption(good_image, beam_size=100000)
    with pytest.raises(CaptionerError, match=r"max_len must be at most 60, got 61"):
        DecodingConfig(max_len=61)
    assert Limits().max_beam_size == DECODING_LIMITS["beam_size"]
    assert Limits().max_caption_len == DECODING_LIMITS["max_len"]
    with pytest.raises(CaptionerError, match="max_beam_size may be at most 10"):
        Limits(max_beam_size=11)


def test_decoding_settings_travel_typed_to_the_decoder(tiny_checkpoint, good_image, monkeypatch):
    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    seen: list[DecodingConfig] = []
    decode = captioner._decode
    monkeypatch.setattr(
        captioner,
        "_decode",
        lambda images, settings, erasure: seen.append(settings) or decode(images, settings, erasure),
    )
    settings = DecodingConfig(beam_size=2, max_len=5)
    assert [item.error for item in captioner.caption_files([good_image], settings=settings)] == [None]
    assert seen[-1] is settings  # handed down as it was given, not flattened and rebuilt
    captioner.caption(good_image, beam_size=4)  # keywords become a DecodingConfig where they enter
    assert seen[-1] == captioner.decoding.replace(beam_size=4)
    with pytest.raises(CaptionerError, match=r"unknown DecodingConfig setting\(s\) \['beam'\]"):
        captioner.caption(good_image, beam=4)


# 6. Inputs that are neither images nor missing: say what they are, never block on a FIFO.


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_fifo_and_symlink_loop_are_named_for_what_they_are(tiny_checkpoint, good_image, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    code = main(["caption", "--ckpt", str(tiny_checkpoint), str(fifo), str(loop), str(dangling), str(good_image)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert out.startswith(f"{good_image}\t")
    assert err.splitlines() == [
        f"error: {fifo}: is a named pipe (FIFO), not a regular file; it is not read: pass image files",
        f"error: {loop}: is a symbolic link loop (it leads back to itself); point the link at an image file",
        f"error: {dangling}: is a symbolic link to {tmp_path / 'gone.png'}, which does not exist",
    ]
