"""The GPU switches, exercised on the CPU: mixed precision, channels-last, torch.compile (mixed
precision in detail: tests/test_mixed_precision.py)."""

from __future__ import annotations

import pytest
import torch

from captioner.cli import main
from captioner.models import Encoder, EncoderConfig
from captioner.training.cli import cli_main
from captioner.training.runtime import use_tf32
from tests.fixtures import TINY_MODEL


def test_bf16_mixed_fast_dev_run_with_channels_last(synth_data, tmp_path):
    cli = cli_main(
        [
            "fit",
            "--data.data_dir",
            str(synth_data),
            *TINY_MODEL,
            "--model.encoder.channels_last",
            "true",
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    convolutions = [m.weight for m in cli.model.model.encoder.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    plain = Encoder(EncoderConfig("resnet18", stages=2, grid_size=4)).eval()
    fast = Encoder(EncoderConfig("resnet18", stages=2, grid_size=4, channels_last=True)).eval()
    fast.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), atol=1e-5, rtol=1e-5)


def test_compile_runs_a_fast_dev_run_and_keeps_state_dict_keys(synth_data, tmp_path, monkeypatch):
    # Inductor needs ~3 minutes for this on 2 CPU cores, so trace with dynamo but run eagerly.
    compiled = []
    real_compile = torch.compile

    def eager_compile(fn, **kwargs):
        compiled.append(fn)
        return real_compile(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cli = cli_main(
        [
            "fit",
            "--data.data_dir",
            str(synth_data),
            *TINY_MODEL,
            "--runtime.compile",
            "true",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert len(compiled) == 2  # the encoder's forward and the decoder's per-step core
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    keys = list(cli.model.state_dict())
    assert {".".join(k.split(".")[:2]) for k in keys} == {"model.encoder", "model.decoder"}
    assert not any("_orig_mod" in k for k in keys)


@pytest.mark.parametrize(("precision", "mixed"), [("bf16-true", "bf16-mixed"), ("16-true", "16-mixed")])
def test_half_precision_weights_are_refused_with_one_line(precision, mixed, synth_data, tmp_path, capsys):
    args = ["train", "fit", "--data.data_dir", str(synth_data), *TINY_MODEL, "--trainer.precision", precision]
    code = main([*args, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith(f"error: trainer.precision={precision} keeps the weights")
    assert f"use trainer.precision={mixed}" in errors[0]


def test_tf32_switch_sets_cuda_matmul_and_convolution_precision():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        use_tf32(True)
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32",) * 2
        use_tf32(False)
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee",) * 2
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
