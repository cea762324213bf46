"""Inference precision: the encoder and decoder of a trained model in fp32, bf16 or int8.

    encode, decoder = inference_models(encoder, decoder, "int8", device, calibration=images)
    features = encode(images)                      # (B, P, D)

- fp32: the networks as trained; the reference.
- bf16: the encoder's weights in bfloat16, channels-last. Needs a CPU with bfloat16
  instructions (AVX512-BF16 or AMX) or a CUDA GPU with bfloat16.
- int8: the encoder's trunk quantized after training (static: int8 weights per channel,
  uint8 activations), through torch.ao's FX graph mode on PyTorch's x86 engine. Activation
  ranges are calibrated once on a handful of images. CPU only.

The decoder stays float32 in every precision, and features reach it as float32: measured on
the demo's 200 test images with beam 3, a bfloat16 decoder changed 17% of the captions
(whichever the encoder), while a bfloat16 encoder changed 1.5% and an int8 one 3.5%
(`benchmarks/precision.py`). Beam search ranks hypotheses whose scores differ in the third
digit, and bfloat16 keeps about two.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.models import Decoder, Encoder

PRECISIONS = ("fp32", "bf16", "int8")
# Observing activations costs a forward pass; more than this many calibration images gain
# nothing measurable in the ranges of min/max observers and only slow the start.
MAX_CALIBRATION_IMAGES = 16

Encode = Callable[[Tensor], Tensor]


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


def inference_models(
    encoder: Encoder,
    decoder: Decoder,
    precision: str,
    device: torch.device,
    calibration: Tensor | None = None,
) -> tuple[Encode, Decoder]:
    """The encoder as a function images (B, 3, S, S) -> float32 features (B, P, D) in
    `precision`, and the decoder, both on `device`. The decoder, and the encoder for fp32, are
    the models passed in (moved to `device`); bf16 and int8 use converted copies of the encoder.

    int8 needs `calibration`: (N, 3, S, S) images prepared like the ones to caption; at most
    MAX_CALIBRATION_IMAGES of them are used.
    """
    check_precision(precision, device)
    decoder = decoder.to(device)
    if precision == "fp32":
        return encoder.to(device), decoder
    if precision == "bf16":
        fast = copy.deepcopy(encoder).to(device, torch.bfloat16)
        fast.trunk.to(memory_format=torch.channels_last)
        fast.channels_last = True
        return lambda images: fast(images.to(device, torch.bfloat16)).float(), decoder
    if calibration is None or len(calibration) == 0:
        raise CaptionerError("precision int8 needs calibration images to set its activation ranges")
    quantized = quantize_encoder(encoder, calibration[:MAX_CALIBRATION_IMAGES])
    return lambda images: quantized(images.to(device)), decoder


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
