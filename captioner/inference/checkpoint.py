"""Loading a trained checkpoint safely, without Lightning.

    model = load_model("runs/demo/checkpoints/best.ckpt")
    features = model.encoder(images)          # (B, P, D)

A checkpoint is a file anyone may hand us, and a pickle can run code while it is read. So
every checkpoint is opened with `torch.load(..., weights_only=True)`, which only rebuilds
tensors and plain containers and refuses anything else; there is no fallback that trusts
the file. The model is then rebuilt from the plain-data `hyper_parameters` (the settings
dataclasses as dicts, the vocabulary as a list of words) and the `encoder.*` / `decoder.*`
entries of `state_dict`. Every way this can go wrong is one `CaptionerError` naming the file.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captioner.errors import CaptionerError
from captioner.models import Decoder, DecoderConfig, Encoder, EncoderConfig, PlainConfig
from captioner.models.search import DecodingConfig
from captioner.vocab import Vocabulary

# Written by the training module; needed to caption.
REQUIRED_HPARAMS = ("vocab_words", "image_size")
# How torch's weights-only unpickler names the callable or class it refused to load.
_FORBIDDEN_GLOBAL = re.compile(
    r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+) whose module|reduce for unrecognized function (.+?)$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class LoadedModel:
    """The networks (in eval mode, on CPU) and the settings a checkpoint carries.

    `encoder.config.grid_shape` is (rows, cols) of the attention grid: α rows of length
    P = rows·cols are laid out row-major over it.
    """

    encoder: Encoder
    decoder: Decoder
    vocab: Vocabulary
    decoding: DecodingConfig
    image_size: int


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at `path`, read with `weights_only=True` (no code in it runs).

    Checks that it has `hyper_parameters` (a dict) and `state_dict` (a dict); raises
    CaptionerError naming the path when the file is missing, is not a PyTorch checkpoint,
    holds objects other than tensors and plain data, or lacks those entries.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise CaptionerError(
            f"checkpoint {path} {problem}; pass the .ckpt file written by `captioner train fit` "
            "(e.g. runs/<name>/checkpoints/best.ckpt)"
        )
    try:
        with warnings.catch_warnings():
            # Non-checkpoint pickles make torch warn about their protocol before failing.
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        forbidden = refused_global(error)
        if forbidden:
            raise CaptionerError(
                f"checkpoint {path} was refused: {pickled_code(forbidden)}; "
                "use a checkpoint written by `captioner train fit` from a source you trust"
            ) from None
        raise _not_a_checkpoint(path) from None
    except Exception:
        raise _not_a_checkpoint(path) from None
    if not isinstance(checkpoint, dict):
        raise CaptionerError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict; "
            "pass the .ckpt written by `captioner train fit`"
        )
    for key in ("hyper_parameters", "state_dict"):
        if not isinstance(checkpoint.get(key), dict):
            raise CaptionerError(
                f"checkpoint {path} has no {key!r} dict, so it was not written by `captioner train fit`; "
                "pass a captioner checkpoint"
            )
    return checkpoint


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the encoder and decoder of the checkpoint at `path` (CPU, eval mode).

    Raises CaptionerError naming the path when hyper-parameters are missing or invalid or
    the weights do not fit the model they describe (a checkpoint from an incompatible version).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    return build_model(path, checkpoint["hyper_parameters"], checkpoint["state_dict"])


def build_model(path: Path, hparams: dict[str, Any], state: dict[str, Any]) -> LoadedModel:
    """The model that plain-data `hparams` (as the training module stores them) describe, with
    the `encoder.*` / `decoder.*` weights of `state`; `path` names the source in errors. Shared
    by checkpoints and exports (`captioner.inference.export`)."""
    missing = [key for key in REQUIRED_HPARAMS if key not in hparams]
    if missing:
        raise _incompatible(path, f"its hyper-parameters lack {', '.join(missing)}")
    try:
        vocab = Vocabulary(list(hparams["vocab_words"]))
        # The state dict replaces every weight, so never fetch pretrained ones here.
        encoder_config = dataclasses.replace(_settings(EncoderConfig, hparams, "encoder"), weights=None)
        decoding = _settings(DecodingConfig, hparams, "decoding")
        encoder = Encoder(encoder_config)
        decoder = Decoder(_settings(DecoderConfig, hparams, "decoder"), len(vocab), encoder.out_channels)
        image_size = int(hparams["image_size"])
    except (TypeError, ValueError) as error:  # CaptionerError is a ValueError
        raise _incompatible(path, f"its hyper-parameters do not describe a model ({error})") from None

    _load_networks(path, state, encoder, decoder)
    return LoadedModel(
        encoder=encoder.eval(),
        decoder=decoder.eval(),
        vocab=vocab,
        decoding=decoding,
        image_size=image_size,
    )


def load_weights(path: str | Path, encoder: Encoder, decoder: Decoder, vocab: Vocabulary) -> None:
    """Copy the encoder and decoder weights of the checkpoint at `path` into `encoder` and
    `decoder` (to fine-tune it, e.g. with another objective). The checkpoint must have the same
    vocabulary and architecture; otherwise CaptionerError names what differs."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    words = checkpoint["hyper_parameters"].get("vocab_words")
    if words is None or list(words) != vocab.words:
        raise CaptionerError(
            f"checkpoint {path} was trained with another vocabulary ({len(words or [])} words; this run has "
            f"{len(vocab)}); start from a checkpoint trained on the same data (and data.vocab_path)"
        )
    _load_networks(path, checkpoint["state_dict"], encoder, decoder)


def _load_networks(path: Path, state: dict[str, Any], encoder: Encoder, decoder: Decoder) -> None:
    """Load the `encoder.*` and `decoder.*` entries of a state dict, strictly."""
    for prefix, module in (("encoder.", encoder), ("decoder.", decoder)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as error:
            detail = " ".join(str(error).split())
            raise _incompatible(path, f"its {prefix[:-1]} weights do not fit the model ({detail[:300]})") from None


def _settings(kind: type[PlainConfig], hparams: dict[str, Any], key: str) -> Any:
    """The `kind` settings stored under `key`; checkpoints of captioner 0.1 kept them flat among
    the hyper-parameters, under the same field names."""
    if key in hparams:
        return kind.from_dict(hparams[key])
    names = {field.name for field in dataclasses.fields(kind)}
    return kind.from_dict({name: value for name, value in hparams.items() if name in names})


def refused_global(error: pickle.UnpicklingError) -> str | None:
    """The callable or class (`module.name`) whose loading torch's weights-only unpickler refused,
    or None when the error is about something else (a damaged file, an unknown opcode)."""
    found = _FORBIDDEN_GLOBAL.search(str(error))
    return next((name for name in found.groups() if name), None) if found else None


def pickled_code(name: str) -> str:
    """What a refused global means, for an error message."""
    return (
        f"it holds a pickled callable or class, {name}, that loading would call, running code stored in "
        "the file (a checkpoint needs only tensors and plain data)"
    )


def _not_a_checkpoint(path: Path) -> CaptionerError:
    # torch's own messages here are misleading (they suggest weights_only=False), so say it plainly.
    return CaptionerError(
        f"checkpoint {path} is not a PyTorch checkpoint, or it is damaged or truncated; "
        "pass the .ckpt file written by `captioner train fit`"
    )


def _incompatible(path: Path, problem: str) -> CaptionerError:
    return CaptionerError(
        f"checkpoint {path} does not fit this version of captioner: {problem}; "
        "retrain with `captioner train fit` or use the captioner version that wrote it"
    )
