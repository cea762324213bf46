"""Captioning from Python (`captioner.inference.api`) and safe checkpoint loading (`captioner.inference.checkpoint`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.data.images import ImageLoadError, image_transform, load_image
from captioner.errors import CaptionerError
from captioner.inference.api import Captioner, resolve_device
from captioner.inference.checkpoint import load_checkpoint, load_model, load_weights
from captioner.models.search import beam_search
from tests.fixtures import write_malicious_checkpoint


@pytest.fixture(scope="module")
def captioner(tiny_checkpoint) -> Captioner:
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def test_images(synth_data) -> list[Path]:
    return sorted((synth_data / "test").glob("*.png"))[:7]


def test_result_carries_words_alphas_and_grid(captioner, test_images):
    (result,) = captioner.caption(test_images[0])
    assert result.words, "the trained tiny model should say something"
    assert result.caption == " ".join(result.words)
    assert [captioner.vocab.words[i] for i in result.tokens] == result.words
    assert not {"<start>", "<end>", "<pad>", "<unk>"} & set(result.words)
    rows, cols = result.grid
    assert result.grid == (4, 4)
    assert result.alphas.shape == (len(result.words), rows * cols)
    assert torch.allclose(result.alphas.sum(dim=1), torch.ones(len(result.words)), atol=1e-4)
    assert math.isfinite(result.score) and result.score <= 0


def test_paths_pil_and_tensors_give_the_same_caption(captioner, test_images):
    path = test_images[1]
    prepared = image_transform(captioner.image_size)(load_image(path))
    by_path, by_str, by_pil, by_tensor = captioner.caption([path, str(path), Image.open(path), prepared], beam_size=2)
    (by_batch_tensor,) = captioner.caption(prepared.unsqueeze(0), beam_size=2)
    for other in (by_str, by_pil, by_tensor, by_batch_tensor):
        assert other.tokens == by_path.tokens
        assert other.score == pytest.approx(by_path.score, abs=1e-5)


def test_batched_equals_one_at_a_time(captioner, test_images):
    batched = captioner.caption(test_images, beam_size=3, batch_size=3)
    single = [captioner.caption(path, beam_size=3, batch_size=1)[0] for path in test_images]
    assert len(batched) == len(test_images)
    assert [r.tokens for r in batched] == [r.tokens for r in single]
    for a, b in zip(batched, single):
        assert torch.allclose(a.alphas, b.alphas, atol=1e-5)


def test_beam_of_one_equals_greedy(captioner, test_images):
    greedy = captioner.caption(test_images, beam_size=1)
    images = torch.stack([captioner.to_tensor(p) for p in test_images])
    vocab = captioner.vocab
    with torch.inference_mode():
        beams = beam_search(
            captioner.model.decoder,
            captioner.model.encoder(images),
            start_id=vocab.start_id,
            end_id=vocab.end_id,
            beam_size=1,
            max_len=30,
            banned_ids=(vocab.pad_id, vocab.start_id, vocab.unk_id),
        )
    assert [r.words for r in greedy] == [vocab.decode_tokens(b.tokens) for b in beams]


def test_max_len_bounds_the_caption(captioner, test_images):
    for result in captioner.caption(test_images, max_len=2):
        assert len(result.words) <= 2


def test_open_image_is_the_upright_rgb_original(captioner, tmp_path):
    stored = Image.new("RGB", (30, 50), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated 90° clockwise
    stored.save(tmp_path / "sideways.jpg", exif=exif)
    assert captioner.open_image(tmp_path / "sideways.jpg").size == (50, 30)
    assert captioner.open_image(Image.open(tmp_path / "sideways.jpg")).size == (50, 30)
    assert captioner.open_image(Image.new("LA", (8, 6))).mode == "RGB"


def test_caption_files_goes_past_bad_files_and_streams(captioner, test_images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    paths = [test_images[0], bad, test_images[1], test_images[2]]
    consumed = []

    def source():
        for path in paths:
            consumed.append(path)
            yield path

    items = captioner.caption_files(source(), batch_size=1, beam_size=2)
    first = next(items)
    assert first.path == test_images[0] and first.result.words
    assert len(consumed) == 1, "the first batch is yielded before later files are read"
    rest = list(items)
    assert [i.path for i in rest] == paths[1:]
    assert isinstance(rest[0].error, ImageLoadError) and rest[0].result is None and rest[0].image is None
    assert all(i.error is None and i.image.mode == "RGB" for i in rest[1:])
    expected = captioner.caption(test_images[:3], beam_size=2)
    assert [first.result.tokens, rest[1].result.tokens, rest[2].result.tokens] == [r.tokens for r in expected]


@pytest.mark.parametrize(
    "settings, named",
    [({"beam_size": 0}, "beam_size"), ({"max_len": 0}, "max_len"), ({"batch_size": -1}, "batch_size")],
)
def test_bad_settings_are_named(captioner, test_images, settings, named):
    with pytest.raises(CaptionerError, match=named):
        captioner.caption(test_images[0], **settings)


def test_bad_tensor_shape_is_explained(captioner):
    with pytest.raises(CaptionerError, match=r"shape \(3, 64, 64\)"):
        captioner.caption(torch.zeros(3, 32, 32))


def test_unreadable_path_raises_image_load_error(captioner, tmp_path):
    with pytest.raises(ImageLoadError, match="no such file or directory"):
        captioner.caption(tmp_path / "nope.png")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(CaptionerError, match="not a device"):
        resolve_device("toaster")


# ------------------------------------------------------------------ checkpoint loading


def test_lightning_checkpoint_loads_with_weights_only(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint["hyper_parameters"]["encoder"]["grid_size"] == 4
    model = load_model(tiny_checkpoint)
    assert not model.model.training and not model.model.decoder.training
    assert model.image_size == 64 and len(model.vocab) == len(checkpoint["hyper_parameters"]["vocab_words"])


def test_malicious_checkpoint_is_refused_and_runs_nothing(tiny_checkpoint, tmp_path):
    target = tmp_path / "pwned"
    evil = write_malicious_checkpoint(tmp_path / "evil.ckpt", target, tiny_checkpoint)
    torch.load(evil, weights_only=False)  # the payload is live: a trusting loader runs it
    assert target.exists()
    target.unlink()
    with pytest.raises(CaptionerError, match="refused") as caught:
        load_model(evil)
    assert str(evil) in str(caught.value)
    assert not target.exists()


def _tampered(tiny_checkpoint: Path, tmp_path: Path, change) -> Path:
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    change(checkpoint)
    path = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda ckpt, tmp: tmp / "absent.ckpt", "does not exist"),
        (lambda ckpt, tmp: tmp, "is a directory"),
        (lambda ckpt, tmp: _write(tmp / "random.ckpt", os.urandom(4096)), "not a PyTorch checkpoint"),
        (lambda ckpt, tmp: _write(tmp / "notes.ckpt", b"hello, I am text\n"), "not a PyTorch checkpoint"),
        (lambda ckpt, tmp: _write(tmp / "empty.ckpt", b""), "not a PyTorch checkpoint"),
        (
            lambda ckpt, tmp: _write(tmp / "half.ckpt", ckpt.read_bytes()[: ckpt.stat().st_size // 2]),
            "not a PyTorch checkpoint",
        ),
        (lambda ckpt, tmp: _save(tmp / "list.ckpt", [1, 2, 3]), "holds a list"),
        (lambda ckpt, tmp: _save(tmp / "weights.ckpt", {"weight": torch.zeros(2)}), "no 'hyper_parameters'"),
        (
            lambda ckpt, tmp: _tampered(ckpt, tmp, lambda c: c["hyper_parameters"].pop("vocab_words")),
            "lack vocab_words",
        ),
        (
            lambda ckpt, tmp: _tampered(ckpt, tmp, lambda c: c["hyper_parameters"]["vocab_words"].append("zebra")),
            "weights do not fit the model",
        ),
        (
            lambda ckpt, tmp: _tampered(ckpt, tmp, lambda c: c["hyper_parameters"]["encoder"].update(grid_size=0)),
            "do not describe a model",
        ),
        (lambda ckpt, tmp: _tampered(ckpt, tmp, lambda c: c["state_dict"].popitem()), "weights do not fit"),
    ],
    ids=[
        "missing",
        "directory",
        "random-bytes",
        "text",
        "empty",
        "truncated",
        "not-a-dict",
        "no-hparams",
        "missing-hparam",
        "vocab-mismatch",
        "bad-hparam",
        "missing-weight",
    ],
)
def test_bad_checkpoints_give_one_clear_error(tiny_checkpoint, tmp_path, make, message):
    path = make(tiny_checkpoint, tmp_path)
    with pytest.raises(CaptionerError, match=message) as caught:
        Captioner.from_checkpoint(path, device="cpu")
    assert str(path) in str(caught.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _in_old_layout(checkpoint: dict) -> None:
    """The state dict as captioner wrote it before the model was one object: encoder.* and
    decoder.* at the top."""
    checkpoint["state_dict"] = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}


def test_checkpoint_in_the_old_layout_loads_to_the_same_model(tiny_checkpoint, tmp_path, test_images):
    old = _tampered(tiny_checkpoint, tmp_path, _in_old_layout)
    assert any(k.startswith("decoder.") for k in load_checkpoint(old)["state_dict"])
    now, then = Captioner.from_checkpoint(tiny_checkpoint, "cpu"), Captioner.from_checkpoint(old, "cpu")
    for a, b in zip(now.caption(test_images), then.caption(test_images)):
        assert a.tokens == b.tokens
        assert torch.equal(a.alphas, b.alphas)


def test_init_from_an_old_layout_checkpoint_copies_every_weight(tiny_checkpoint, tmp_path):
    old = _tampered(tiny_checkpoint, tmp_path, _in_old_layout)
    loaded = load_model(tiny_checkpoint)
    fresh = load_model(tiny_checkpoint).model
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    load_weights(old, fresh, loaded.vocab)
    for (name, want), got in zip(loaded.model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(want, got), name


def test_a_checkpoint_from_before_the_grounding_defaults_keeps_the_paper_settings(synth_data, tmp_path, test_images):
    """A checkpoint written before `attend_from`, `initial_state` and `align_grid` existed was made
    with the paper's settings, which are no longer the defaults: it must load as that model,
    not as one with today's defaults (wrong LSTM width, missing h0 layer, or, silently for
    align_grid, features shifted from their cells)."""
    from captioner.inference.checkpoint import upgrade_hparams
    from tests.fixtures import train_tiny_checkpoint

    paper = ["--model.decoder.attend_from", "previous", "--model.decoder.initial_state", "mean"]
    trained = train_tiny_checkpoint(
        synth_data,
        tmp_path / "run",
        *paper,
        "--model.encoder.align_grid",
        "false",
        "--trainer.limit_train_batches",
        "3",
    )

    def predating(checkpoint: dict) -> None:
        del checkpoint["hyper_parameters"]["decoder"]["attend_from"]
        del checkpoint["hyper_parameters"]["decoder"]["initial_state"]
        del checkpoint["hyper_parameters"]["encoder"]["align_grid"]

    old = _tampered(trained, tmp_path, predating)
    settings = upgrade_hparams(load_checkpoint(old)["hyper_parameters"])  # what `train test --ckpt_path` reads
    assert settings["decoder"]["attend_from"] == "previous" and settings["encoder"]["align_grid"] is False
    loaded = load_model(old).model
    assert loaded.decoder.config.attend_from == "previous" and loaded.decoder.config.initial_state == "mean"
    assert loaded.encoder.config.align_grid is False
    now, then = Captioner.from_checkpoint(trained, "cpu"), Captioner.from_checkpoint(old, "cpu")
    for a, b in zip(now.caption(test_images), then.caption(test_images)):
        assert a.tokens == b.tokens
        assert torch.equal(a.alphas, b.alphas)
