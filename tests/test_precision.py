"""Inference precision (`captioner.inference.precision`): bf16 and int8 against fp32, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.inference import precision
from captioner.inference.api import Captioner
from captioner.inference.checkpoint import load_model
from captioner.models import Encoder, EncoderConfig

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not precision.bf16_supported(CPU), reason="this CPU has no bfloat16 arithmetic")
needs_int8 = pytest.mark.skipif(not precision.int8_supported(CPU), reason="no x86 quantized engine")


@pytest.fixture(scope="module")
def test_images(synth_data) -> list[Path]:
    return sorted((synth_data / "test").glob("*.png"))


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, test_images):
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(test_images)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).norm() / expected.norm())


@pytest.mark.parametrize("name", [pytest.param("bf16", marks=needs_bf16), pytest.param("int8", marks=needs_int8)])
def test_reduced_precision_captions_like_fp32(name, tiny_checkpoint, test_images, reference):
    fast = Captioner.from_checkpoint(tiny_checkpoint, device="cpu", precision=name)
    results = fast.caption(test_images)
    # The tiny model's captions are short and its beams far apart: every one must survive.
    assert [r.tokens for r in results] == [r.tokens for r in reference]
    for ours, theirs in zip(results, reference):
        assert ours.alphas.dtype == torch.float32
        assert ours.score == pytest.approx(theirs.score, abs=0.05)
        torch.testing.assert_close(ours.alphas, theirs.alphas, atol=0.05, rtol=0)


@needs_bf16
def test_bf16_encodes_with_a_bfloat16_copy_and_keeps_the_decoder_float32(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    model = loaded.model
    fast = precision.inference_model(model, "bf16", CPU)
    images = torch.randn(2, 3, loaded.image_size, loaded.image_size)
    features = fast.encode(images).features
    # The decoder stays float32 (a bfloat16 one changes captions; see captioner.inference.precision).
    assert features.dtype == torch.float32 and fast.decoder is model.decoder
    assert any(p.dtype == torch.bfloat16 for p in fast.encoder.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original untouched
    with torch.no_grad():
        assert _relative_error(features, model.encoder(images)) < 0.02  # bfloat16 keeps 8 significant bits


@needs_int8
def test_int8_quantizes_the_trunk_and_stays_close():
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(backbone="resnet18", stages=2, grid_size=4)).eval()
    calibration = torch.randn(4, 3, 64, 64)
    quantized = precision.quantize_encoder(encoder, calibration)
    kinds = {type(m).__module__ for m in quantized.trunk.modules()}
    assert any(kind.startswith("torch.ao.nn.intrinsic.quantized") for kind in kinds)  # fused conv+relu, int8
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in quantized.trunk.modules())  # folded in
    with torch.no_grad():
        features = quantized(calibration)
        assert features.shape == (4, 16, encoder.out_channels) and features.dtype == torch.float32
        assert _relative_error(features, encoder(calibration)) < 0.05
    assert not any(type(m).__module__.startswith("torch.ao") for m in encoder.modules())  # original untouched


@needs_int8
def test_int8_calibrates_on_the_first_batch_unless_given_images(tiny_checkpoint, test_images):
    lazy = Captioner.from_checkpoint(tiny_checkpoint, device="cpu", precision="int8")
    assert lazy.runtime is None  # nothing seen yet
    first = lazy.caption(test_images, batch_size=4)
    explicit = Captioner.from_checkpoint(tiny_checkpoint, device="cpu", precision="int8", calibration=test_images[:4])
    images = torch.stack([explicit.to_tensor(p) for p in test_images])
    with torch.no_grad():
        torch.testing.assert_close(lazy.runtime.encoder(images), explicit.runtime.encoder(images), atol=0, rtol=0)
    assert [r.tokens for r in explicit.caption(test_images)] == [r.tokens for r in first]


def test_unsupported_precisions_are_refused(monkeypatch):
    with pytest.raises(CaptionerError, match="int8 runs on the CPU only"):
        precision.check_precision("int8", torch.device("cuda"))
    with pytest.raises(CaptionerError, match="'fp16' is not one of fp32, bf16, int8"):
        precision.check_precision("fp16", CPU)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(CaptionerError, match="bf16 needs bfloat16 arithmetic, which this CPU lacks"):
        precision.check_precision("bf16", CPU)
    precision.check_precision("fp32", CPU)


def test_cli_precision_flags(tiny_checkpoint, test_images, reference, monkeypatch, capsys):
    paths = [str(p) for p in test_images[:3]]
    ckpt = ["--ckpt", str(tiny_checkpoint), "--device", "cpu"]
    if precision.int8_supported(CPU):
        code = main(["caption", *paths, *ckpt, "--precision", "int8", "--calibrate", *paths])
        out, err = capsys.readouterr()
        assert code == 0 and err == ""
        assert [line.split("\t")[1] for line in out.splitlines()] == [r.caption for r in reference[:3]]
    assert main(["caption", *paths, *ckpt, "--calibrate", paths[0]]) == 2
    assert capsys.readouterr().err == "error: --calibrate is for --precision int8 only, not fp32\n"
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    assert main(["attend", *paths, *ckpt, "--out", "unused", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: precision bf16 needs bfloat16 arithmetic") and err.count("\n") == 1
