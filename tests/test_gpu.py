"""The GPU paths, on a GPU: `make gpu-check` (`pytest -m gpu`). Skipped without CUDA (conftest).

The switches themselves are also exercised on the CPU (tests/test_gpu_switches.py,
tests/test_mixed_precision.py); these run them where they matter: bf16-mixed and 16-mixed
training, torch.compile with inductor, TF32, DDP over two GPUs, and predict with its writer.
Mixed precision's numbers against the float64 reference on CUDA: tests/test_decoder_reference.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from captioner.data import synth
from captioner.inference.api import Captioner
from captioner.training.cli import cli_main
from captioner.training.runtime import use_tf32
from tests.fixtures import TINY_MODEL
from tests.test_mixed_precision import _spy_on_clipping, _spy_on_the_time_loop

pytestmark = pytest.mark.gpu
ON_GPU = [*TINY_MODEL, "--trainer.accelerator", "gpu", "--trainer.devices", "1"]  # later flags win


def _fit(synth_data, tmp_path, *extra: str):
    return cli_main(
        [
            "fit",
            "--data.data_dir",
            str(synth_data),
            *ON_GPU,
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
            *extra,
        ]
    )


@pytest.mark.parametrize(("precision", "low"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_fit_on_the_gpu_runs_the_time_loop(precision, low, synth_data, tmp_path, monkeypatch):
    # Under CUDA autocast the decoder takes its hand-written time loop with 16-bit matrices, and
    # the fused Adam's gradients are clipped (16-mixed: unscaled first), as configs/shapes.yaml trains.
    if low is torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("bf16-mixed needs a GPU with bfloat16 (compute capability 8.0 or newer)")
    calls, clipped = _spy_on_the_time_loop(monkeypatch), _spy_on_clipping(monkeypatch)
    cli = _fit(
        synth_data,
        tmp_path,
        "--trainer.precision",
        precision,
        "--trainer.gradient_clip_val",
        "1.0",
        "--model.encoder.channels_last",
        "true",
    )
    assert cli.trainer.strategy.root_device.type == "cuda"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert sum(calls.values()) == 1 and {matrices for _, matrices in calls} == {low} and clipped == [True]


def test_compile_with_inductor_on_the_gpu(synth_data, tmp_path):
    cli = _fit(synth_data, tmp_path, "--runtime.compile", "true")
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert not any("_orig_mod" in key for key in cli.model.state_dict())


def test_tf32_switch_changes_float32_matmuls():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("TF32 needs an Ampere or newer GPU")
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    a, b = torch.randn(2, 1024, 1024, device="cuda").unbind()
    exact = (a.double() @ b.double()).float()
    try:
        use_tf32(False)
        ieee_error = (a @ b - exact).abs().max().item()
        use_tf32(True)
        tf32_error = (a @ b - exact).abs().max().item()
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
    assert tf32_error > 10 * ieee_error  # TF32 keeps 10 mantissa bits, IEEE float32 23


def test_captions_on_the_gpu_match_the_cpu(tiny_checkpoint, synth_data):
    images = sorted((synth_data / "test").glob("*.png"))
    cpu = Captioner.from_checkpoint(tiny_checkpoint, device="cpu").caption(images)
    gpu = Captioner.from_checkpoint(tiny_checkpoint, device="cuda").caption(images)
    assert [r.tokens for r in gpu] == [r.tokens for r in cpu]
    for x, y in zip(gpu, cpu):
        assert x.score == pytest.approx(y.score, abs=1e-3)
        torch.testing.assert_close(x.alphas, y.alphas, atol=1e-3, rtol=1e-3)


def _predict(data, checkpoint, out, *devices: str) -> list[dict]:
    common = ["--data.data_dir", str(data), *ON_GPU, "--trainer.logger", "false", "--ckpt_path", str(checkpoint)]
    cli_main(["predict", *common, *devices, "--predictions.path", str(out)])
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_predict_writes_every_image_once_on_the_gpu(synth_data, tiny_checkpoint, tmp_path):
    records = _predict(synth_data, tiny_checkpoint, tmp_path / "gpu.jsonl")
    assert [r["path"] for r in records] == [str(p) for p in sorted((synth_data / "test").glob("*.png"))]
    assert all(r["caption"] for r in records)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_on_two_gpus_predicts_like_one(synth_data, tiny_checkpoint, tmp_path):
    from tests.test_ddp import _captioner_train, _finish

    data = synth.generate(tmp_path / "data", train=24, val=1, test=7, size=64, seed=0)
    one = _predict(data, tiny_checkpoint, tmp_path / "one.jsonl")
    args = ["--data.data_dir", str(data), *ON_GPU, "--trainer.logger", "false", "--ckpt_path", str(tiny_checkpoint)]
    two = _captioner_train(
        "predict",
        *args,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--predictions.path",
        str(tmp_path / "two.jsonl"),
        log=tmp_path / "predict.log",
    )
    _finish(two, tmp_path / "predict.log")
    records = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in records] == [r["caption"] for r in one]
