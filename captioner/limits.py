"""Bounds on every size a model's settings, and the files that carry them, may ask for: the one
place they live.

A config is a few numbers, and a few numbers can ask for terabytes (`hidden_dim: 1e9` is an
LSTM of 4·10¹⁸ weights). Training configs, checkpoints and exports are all checked against these
bounds before anything is allocated: the settings dataclasses check the widths and the grid
(`captioner.models.config`), the vocabulary its size (`captioner.vocab`), the model loader the
image size and the files (`captioner.inference`). Each bound is several times what captioning
models use (COCO models: a ResNet-101 at 224 to 1024 px, a 14×14 grid, decoder layers 512 wide,
10k to 50k words), so no real model meets one; docs/reliability.md gives the reasoning.
"""

from __future__ import annotations

import reprlib

from captioner.errors import CaptionerError

# Model sizes.
MAX_WIDTH = 4096  # embed_dim, hidden_dim, attention_dim: 8x the usual 512
MAX_GRID_SIZE = 64  # cells per side (14 in the paper): a 1024-px image at stride 16
MAX_VOCAB_SIZE = 100_000  # words: 2x a 50k vocabulary, 4x COCO's every-word one
MAX_IMAGE_SIZE = 2048  # pixels per side: 2x the largest input in use

# Files from strangers (an export folder, a --config file).
MAX_CONFIG_BYTES = 16 * 2**20  # config.json: a 100k-word vocabulary writes about 2 MB
MAX_HEADER_BYTES = 4 * 2**20  # a safetensors header: a ResNet-152 captioner's is under 100 kB
MAX_TENSORS = 4096  # in a safetensors file: a ResNet-152 captioner has under 1,000
MAX_JSON_DEPTH = 32  # nesting of a JSON document: config.json and a header need 3
MAX_RECIPE_BYTES = 2**20  # a --config YAML file: the recipes are a few kB


def require_at_most(high: int, **values: int) -> None:
    """Raise CaptionerError naming the first of `values` over `high` (values that are not
    integers are left to the checks of their type)."""
    for name, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > high:
            raise CaptionerError(
                f"{name} must be at most {high}, got {short(value)} (a bound of captioner/limits.py, far above "
                "what captioning models use)"
            )


def short(value: object) -> str:
    """`repr(value)` cut to a few dozen characters: a value from a stranger's file may be huge."""
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxdict = 4
_SHORT.maxlevel = 2
