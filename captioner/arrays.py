"""Attention and other values arrive as tensors (any device) or array-likes; numpy code takes both."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(values: Any, dtype: Any = None) -> np.ndarray:
    """An ndarray of `values`: a tensor (detached, moved to the CPU) or anything np.asarray takes."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)
