"""Reading the files of a model a stranger made, before trusting any number in them.

    config = read_json(folder / "config.json", MAX_CONFIG_BYTES)   # bounded bytes and depth
    tensors = read_header(folder / "model.safetensors")             # {name: TensorSpec}, no tensor read
    check_weights(expected, tensors, problem)                        # names, dtypes and shapes agree
    check_finite(state, problem)                                     # no NaN or inf among the weights

The readers take a bounded number of bytes and parse them with a bounded nesting depth, so any
file is either a small plain value or one CaptionerError: never a RecursionError, never an
allocation the file's size does not pay for. The bounds are in `captioner.limits`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captioner.errors import CaptionerError
from captioner.files import read_at_most
from captioner.limits import MAX_HEADER_BYTES, MAX_JSON_DEPTH, MAX_TENSORS, short

# safetensors' names of the dtypes a captioner's weights may come in.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Dimensions of one tensor: a convolution's weight has 4.
MAX_DIMS = 8


@dataclass(frozen=True)
class TensorSpec:
    """What a weights file says one tensor is, before it is read."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} {self.shape}"


def read_json(path: Path, max_bytes: int) -> Any:
    """The JSON document in the file at `path`: at most `max_bytes` long, nested at most
    MAX_JSON_DEPTH deep, finite numbers only; anything else is a CaptionerError naming `path`."""
    try:
        data = read_at_most(path, max_bytes)
    except OSError as error:
        raise CaptionerError(f"{path} cannot be read ({error.strerror or error})") from None
    if data is None:
        raise CaptionerError(f"{path} is over {max_bytes:,} bytes, more than any model's settings need")
    return parse_json(data, str(path))


def parse_json(data: bytes, source: str) -> Any:
    """`data` parsed as JSON (see `read_json`); `source` names it in errors."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        value = None  # deeper than the parser's own stack allows, and so deeper than the bound
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError and the rest are ValueErrors
        raise CaptionerError(f"{source} is not valid JSON ({' '.join(str(error).split())[:200]})") from None
    else:
        if depth(value) <= MAX_JSON_DEPTH:
            return value
    raise CaptionerError(f"{source} is JSON nested deeper than {MAX_JSON_DEPTH} levels; no model's settings are")


def depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:  # no need to look deeper than the bound
            stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number too large for a float ({text[:20]})")
    return value


def read_header(path: Path) -> dict[str, TensorSpec]:
    """Every tensor a safetensors file declares (name -> dtype and shape), from its header alone:
    8 bytes giving the header's length (at most MAX_HEADER_BYTES), then the header as JSON. No
    tensor is read. A malformed header is a CaptionerError naming `path`."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) == 8 and length <= MAX_HEADER_BYTES:
                data = file.read(length)
    except OSError as error:
        raise CaptionerError(f"{path} cannot be read ({error.strerror or error})") from None
    if len(prefix) < 8:
        raise _bad_header(path, f"it is {len(prefix)} bytes long")
    if length > MAX_HEADER_BYTES:
        raise _bad_header(path, f"its header would be {length:,} bytes, over the {MAX_HEADER_BYTES:,} allowed")
    if len(data) < length:
        raise _bad_header(path, "it ends inside its header")
    header = parse_json(data, f"the header of {path}")
    if not isinstance(header, dict):
        raise _bad_header(path, "its header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise _bad_header(path, f"it declares {len(header):,} tensors, over the {MAX_TENSORS:,} any captioner has")
    return {name: _tensor_spec(path, name, entry) for name, entry in header.items()}


def _tensor_spec(path: Path, name: str, entry: Any) -> TensorSpec:
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad_header(path, f"tensor {short(name)} has dtype {short(dtype)}, not one of {', '.join(DTYPES)}")
    dims_ok = isinstance(shape, list) and len(shape) <= MAX_DIMS
    if not dims_ok or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _bad_header(path, f"tensor {short(name)} has shape {short(shape)}, not a list of sizes")
    return TensorSpec(DTYPES[dtype], tuple(shape))


def _bad_header(path: Path, problem: str) -> CaptionerError:
    return CaptionerError(f"{path} is not a safetensors file, or it is damaged: {problem}")


def check_weights(
    expected: Mapping[str, TensorSpec], found: Mapping[str, TensorSpec], problem: Callable[[str], CaptionerError]
) -> None:
    """Raise `problem(...)` naming the first tensor that the model the settings describe
    (`expected`) and the weights (`found`) disagree on: missing, extra, of another shape, or
    floating point on one side only (a float16 weight may fill a float32 parameter)."""
    misfit = "its weights do not fit the model its settings describe"
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise problem(f"{misfit}: they lack {missing[0]}{more}")
    extra = [name for name in found if name not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise problem(f"{misfit}: they hold {short(extra[0])}{more}, which that model has no place for")
    for name, want in expected.items():
        got = found[name]
        if got.shape != want.shape or got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise problem(f"{misfit}: they hold {name} as {got.describe()}, where the settings give {want.describe()}")


def check_finite(state: Mapping[str, torch.Tensor], problem: Callable[[str], CaptionerError]) -> None:
    """Raise `problem(...)` naming the first floating-point tensor of `state` holding NaN or ±inf."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel():
            low, high = torch.aminmax(tensor.detach())  # NaN propagates; no tensor-sized mask is made
            if not (math.isfinite(low) and math.isfinite(high)):
                raise problem(f"its weights hold NaN or infinite values, the first in {name}")


def tensor_specs(state: Mapping[str, Any], problem: Callable[[str], CaptionerError]) -> dict[str, TensorSpec]:
    """The TensorSpec of each entry of a loaded state dict; `problem(...)` names one that is no tensor."""
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise problem(f"its weights hold {short(name)} as a {type(value).__name__}, not a tensor")
    return {name: TensorSpec(value.dtype, tuple(value.shape)) for name, value in state.items()}
