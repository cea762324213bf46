"""Inference precision: the encoder and decoder of a trained model in fp32, bf16 or int8.

    fast = inference_model(model, "int8", device, calibration=images)   # a ShowAttendTell
    features = encode(images)                      # (B, P, D)

- fp32: the networks as trained; the reference.
- bf16: the encoder's weights in bfloat16, channels-last. Needs a CPU with bfloat16
  instructions (AVX512-BF16 or AMX) or a CUDA GPU with bfloat16.
- int8: the encoder's trunk quantized after training (static: int8 weights per channel,
  uint8 activations), through torch.ao's FX graph mode on PyTorch's x86 engine. Activation
  ranges are calibrated once on a handful of images. CPU only.

The decoder stays float32 in every precision, and features reach it as float32: a bfloat16
decoder changes far more captions than a bfloat16 or int8 encoder does (docs/performance.md)
(`benchmarks/precision.py`). Beam search ranks hypotheses whose scores differ in the third
digit, and bfloat16 keeps about two.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.models import Encoder
from captioner.models.captioner import ShowAttendTell

PRECISIONS = ("fp32", "bf16", "int8")
# Observing activations costs a forward pass; more than this many calibration images gain
# nothing measurable in the ranges of min/max observers and only slow the start.
MAX_CALIBRATION_IMAGES = 16


def check_precision(precision: str, device: torch.device) -> None:
    """Raise CaptionerError when `precision` is unknown or `device` cannot run it."""
    if precision not in PRECISIONS:
        raise CaptionerError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported(device):
        where = "this GPU" if device.type == "cuda" else "this CPU"
        raise CaptionerError(
            f"precision bf16 needs bfloat16 arithmetic, which {where} lacks "
            "(CPUs: AVX512-BF16 or AMX; GPUs: compute capability 8.0 or newer); use fp32"
            + (" or int8" if device.type == "cpu" and int8_supported(device) else "")
        )
    if precision == "int8" and not int8_supported(device):
        if device.type != "cpu":
            raise CaptionerError(
                f"precision int8 runs on the CPU only (PyTorch's x86 quantized kernels), not on {device}; "
                "use --device cpu, or bf16 / fp32 on the GPU"
            )
        raise CaptionerError(
            "precision int8 needs PyTorch's x86 quantized engine, which this machine's PyTorch lacks "
            f"(it has {', '.join(torch.backends.quantized.supported_engines) or 'none'}); use fp32"
        )


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` does bfloat16 arithmetic in hardware (not emulated at a loss)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    if getattr(cpu, "_is_avx512_supported", lambda: False)() or getattr(cpu, "_is_avx2_supported", lambda: False)():
        # An x86 CPU: only AVX512-BF16 and AMX compute in bfloat16; older ones convert to float32.
        return cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def int8_supported(device: torch.device) -> bool:
    return device.type == "cpu" and "x86" in torch.backends.quantized.supported_engines


def inference_model(
    model: ShowAttendTell, precision: str, device: torch.device, calibration: Tensor | None = None
) -> ShowAttendTell:
    """`model` on `device` with its encoder in `precision`, giving float32 features (B, P, D).
    fp32 returns `model` itself (moved); bf16 and int8 share its decoder and convert a copy of
    its encoder.

    int8 needs `calibration`: (N, 3, S, S) images prepared like the ones to caption; at most
    MAX_CALIBRATION_IMAGES of them are used.
    """
    check_precision(precision, device)
    model = model.to(device)
    if precision == "fp32":
        return model
    if precision == "bf16":
        fast = copy.deepcopy(model.encoder).to(device, torch.bfloat16)
        fast.trunk.to(memory_format=torch.channels_last)
        fast.channels_last = True
        return ShowAttendTell(_Bfloat16Encoder(fast), model.decoder)
    if calibration is None or len(calibration) == 0:
        raise CaptionerError("precision int8 needs calibration images to set its activation ranges")
    return ShowAttendTell(quantize_encoder(model.encoder, calibration[:MAX_CALIBRATION_IMAGES]), model.decoder)


class _Bfloat16Encoder(nn.Module):
    """A bfloat16 encoder behind a float32 interface: images are cast in, features out."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images.to(torch.bfloat16)).float()


def quantize_encoder(encoder: Encoder, calibration: Tensor) -> Encoder:
    """A copy of `encoder` whose trunk is statically quantized to int8 (x86 engine, CPU).

    calibration (N, 3, S, S): images whose activation ranges the quantized trunk is set to.
    Conv + BatchNorm (+ ReLU) are fused, weights are int8 per output channel, activations
    uint8 per tensor with min/max ranges over the calibration images; the trunk's output is
    dequantized to float32 before grid pooling.
    """
    # torch.ao's FX quantization and quantized tensors warn that they are deprecated in favour
    # of torchao's PT2E, whose x86 int8 kernels come only through torch.compile (minutes per
    # model on a small CPU, and torchao is another dependency). They work in this PyTorch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions.*are deprecated", UserWarning)
        from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        qconfig = QConfig(
            # Without VNNI, x86 int8 kernels can saturate 16-bit sums of full-range uint8 inputs.
            activation=MinMaxObserver.with_args(
                dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=not torch.cpu._is_vnni_supported()
            ),
            weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        )
        quantized = copy.deepcopy(encoder).cpu().eval()
        quantized.channels_last = False
        calibration = calibration.cpu().float()
        trunk: nn.Module = prepare_fx(quantized.trunk, QConfigMapping().set_global(qconfig), (calibration[:1],))
        with torch.no_grad():
            trunk(calibration)
        quantized.trunk = convert_fx(trunk)
    return quantized
