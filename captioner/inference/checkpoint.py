"""Loading a trained checkpoint safely, without Lightning.

    loaded = load_model("runs/demo/checkpoints/best.ckpt")
    annotations = loaded.model.encode(images)   # features (B, P, D)

A checkpoint is a file anyone may hand us, and a pickle can run code while it is read. So
every checkpoint is opened with `torch.load(..., weights_only=True)`, which only rebuilds
tensors and plain containers and refuses anything else; there is no fallback that trusts
the file. The model is then rebuilt from the plain-data `hyper_parameters` (the settings
dataclasses as dicts, the vocabulary as a list of words) and the `model.*` entries of
`state_dict` (`encoder.*` / `decoder.*` in checkpoints written before the model was one object).
Every way this can go wrong is one `CaptionerError` naming the file.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captioner.errors import CaptionerError, require_positive
from captioner.inference.untrusted import TensorSpec, check_finite, check_weights, tensor_specs
from captioner.limits import MAX_IMAGE_SIZE, require_at_most
from captioner.models import DecoderConfig, EncoderConfig, PlainConfig
from captioner.models.captioner import ShowAttendTell
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
    """The model (in eval mode, on CPU) and the settings a checkpoint carries.

    `model.encoder.config.grid_shape` is (rows, cols) of the attention grid: α rows of length
    P = rows·cols are laid out row-major over it.
    """

    model: ShowAttendTell
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
    return model_from_checkpoint(path, load_checkpoint(path))


def model_from_checkpoint(path: Path, checkpoint: dict[str, Any]) -> LoadedModel:
    """The model of `checkpoint` (as `load_checkpoint` returns it), read from `path`."""

    def problem(detail: str) -> CaptionerError:
        return _incompatible(path, detail)

    state = model_state(checkpoint["state_dict"])
    return build_model(checkpoint["hyper_parameters"], tensor_specs(state, problem), lambda: state, problem)


def build_model(
    hparams: dict[str, Any],
    weights: Mapping[str, TensorSpec],
    read_weights: Callable[[], Mapping[str, torch.Tensor]],
    problem: Callable[[str], CaptionerError],
) -> LoadedModel:
    """The model that plain-data `hparams` (as the training module stores them) describe, with
    the weights `read_weights()` gives (the state dict of `ShowAttendTell`). Shared by
    checkpoints and exports (`captioner.inference.export`); `problem(detail)` is the error
    naming the source.

    Nothing is allocated before the settings are within `captioner.limits` and the model they
    describe has exactly the tensors `weights` declares (checked on the meta device); the
    weights read must be finite."""
    if not isinstance(hparams, dict):
        raise problem("its settings are not a mapping")
    missing = [key for key in REQUIRED_HPARAMS if key not in hparams]
    if missing:
        raise problem(f"its settings lack {', '.join(missing)}")
    try:
        image_size = hparams["image_size"]
        require_positive(image_size=image_size)
        require_at_most(MAX_IMAGE_SIZE, image_size=image_size)
        vocab = Vocabulary(hparams["vocab_words"])
        # The weights replace every parameter, so never fetch pretrained ones here.
        encoder_config = dataclasses.replace(_settings(EncoderConfig, hparams, "encoder"), weights=None)
        decoder_config = _settings(DecoderConfig, hparams, "decoder")
        decoding = _settings(DecodingConfig, hparams, "decoding")
        with torch.device("meta"):  # shapes without storage: what the settings ask for, free
            skeleton = ShowAttendTell.for_images(encoder_config, decoder_config, len(vocab))
    except (TypeError, ValueError) as error:  # CaptionerError is a ValueError
        raise problem(f"its settings do not describe a model ({' '.join(str(error).split())[:300]})") from None
    check_weights(tensor_specs(skeleton.state_dict(), problem), weights, problem)

    state = read_weights()
    check_finite(state, problem)
    # The skeleton made real, its tensors left unset: each is in the state dict (a test checks),
    # so the strict load sets every one, and no weight is initialised only to be overwritten.
    model = skeleton.to_empty(device="cpu")
    _load_state(state, model, problem)
    return LoadedModel(model=model.eval(), vocab=vocab, decoding=decoding, image_size=image_size)


def load_weights(path: str | Path, model: ShowAttendTell, vocab: Vocabulary) -> None:
    """Copy the weights of the checkpoint at `path` into `model` (to fine-tune it, e.g. with
    another objective). The checkpoint must have the same vocabulary and architecture;
    otherwise CaptionerError names what differs."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    check_vocabulary(checkpoint["hyper_parameters"].get("vocab_words") or [], vocab, path)
    state = model_state(checkpoint["state_dict"])
    check_finite(state, lambda detail: _incompatible(path, detail))
    _load_state(state, model, lambda detail: _incompatible(path, detail))


def check_vocabulary(words: list[str], vocab: Vocabulary, path: str | Path) -> None:
    """Raise CaptionerError when the checkpoint at `path`, trained with `words`, has another
    vocabulary than this run's: its output layer would not fit, or fit with every id meaning
    another word."""
    if list(words) == vocab.words:
        return
    same_size = " (same size, other words)" if len(words) == len(vocab) else ""
    raise CaptionerError(
        f"{path} was trained with a vocabulary of {len(words)} words, but the data gives one of "
        f"{len(vocab)} words{same_size}; use the data (and data.vocab_path) the checkpoint was trained with, "
        "or train from scratch"
    )


def upgrade_checkpoint(checkpoint: dict[str, Any], vocab: Vocabulary, path: str | Path) -> None:
    """Before a checkpoint's weights are loaded into a model with `vocab`: refuse it when it was
    trained with another vocabulary (`check_vocabulary`), and bring its state dict to today's
    layout (`model_state`), in place."""
    words = checkpoint.get("hyper_parameters", {}).get("vocab_words")
    if words is not None:
        check_vocabulary(words, vocab, path)
    checkpoint["state_dict"] = model_state(checkpoint["state_dict"], prefix="model.")


# Checkpoints written before the model was one object kept its parts and the hard-attention
# baseline at the top of the state dict; before objectives were chosen by class_path, that
# baseline was `objective.baseline`.
_RENAMED = {
    "encoder.": "model.encoder.",
    "decoder.": "model.decoder.",
    "hard_baseline.": "objective.moving_average.",
    "objective.baseline.": "objective.moving_average.",
}


def model_state(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A Lightning state dict in today's layout, then only the `model.` entries, renamed to
    start with `prefix` instead ("model." keeps the system's layout, "" gives the state dict of
    `ShowAttendTell` itself); the other entries are kept as they are when prefix is "model."."""
    renamed = {}
    for key, value in state.items():
        old = next((old for old in _RENAMED if key.startswith(old)), None)
        renamed[key if old is None else _RENAMED[old] + key[len(old) :]] = value
    if prefix == "model.":
        return renamed
    return {prefix + key[len("model.") :]: value for key, value in renamed.items() if key.startswith("model.")}


# Settings that moved into a group of their own since checkpoints first carried them: the
# optimiser's into `optimizer`; the runtime switches (compile, tf32) left the model for the
# CLI's `runtime` section, and are not the checkpoint's to decide.
_GROUPED = {"optimizer": ("decoder_lr", "encoder_lr", "weight_decay", "lr_schedule", "lr_decay", "lr_patience")}
_DROPPED = ("compile", "tf32")
# Settings under a new name: the half-α erasure test gave way to the deletion test of faithfulness.
_RENAMED_SETTINGS = {"validation_erasure": "validation_faithfulness"}
# Before objectives were chosen by class_path (`model.objective`), flags chose them: `scst`
# settings, else a decoder with hard attention; λ and the entropy weight sat beside them.
OBJECTIVES = "captioner.training.objectives."
_LOSS_WEIGHTS = ("attention_lambda", "attention_entropy")
# Settings whose default changed to the grounding settings (`paper` keeps the old ones): a
# checkpoint written before the setting existed was made with its old value.
_FORMER_DEFAULTS = {
    "encoder": (EncoderConfig, {"align_grid": False}),
    "decoder": (DecoderConfig, {"initial_state": "mean", "attend_from": "previous"}),
}


def _with_former_defaults(key: str, stored: Any) -> Any:
    """`stored` settings under `key` with the former defaults of those it predates, when they
    are the settings of the class that changed (a dates model's encoder is another class)."""
    if key not in _FORMER_DEFAULTS or not isinstance(stored, dict):
        return stored
    kind, former = _FORMER_DEFAULTS[key]
    if not set(stored) <= {field.name for field in dataclasses.fields(kind)}:
        return stored
    return {**former, **stored}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A captioning or dates checkpoint's hyper-parameters in today's layout: older checkpoints
    kept the optimiser's settings flat and the runtime switches among them, chose their
    objective by flags, and named some settings otherwise. The grounding gate (`keep_if_grounded`)
    is a callback now, not the model's."""
    hparams = {
        _RENAMED_SETTINGS.get(key, key): value
        for key, value in hparams.items()
        if key not in (*_DROPPED, "keep_if_grounded")
    }
    for group, names in _GROUPED.items():
        moved = {name: hparams.pop(name) for name in names if name in hparams}
        if moved:
            hparams[group] = {**moved, **(hparams.get(group) or {})}
    if "objective" not in hparams and any(key in hparams for key in (*_LOSS_WEIGHTS, "scst", "hard_attention")):
        hparams["objective"] = _objective_of(hparams)
    for key in _FORMER_DEFAULTS:
        if key in hparams:
            hparams[key] = _with_former_defaults(key, hparams[key])
    return hparams


def _objective_of(hparams: dict[str, Any]) -> dict[str, Any]:
    """The class_path and init_args of the objective an older checkpoint's flags chose; its
    flags are taken out of `hparams`."""
    weights = {name: hparams.pop(name) for name in _LOSS_WEIGHTS if name in hparams}
    scst, hard = hparams.pop("scst", None), hparams.pop("hard_attention", None) or {}
    if scst is not None:
        return {"class_path": OBJECTIVES + "self_critical.SelfCritical", "init_args": dict(scst)}
    if (hparams.get("decoder") or {}).get("attention") == "hard":
        return {"class_path": OBJECTIVES + "hard_attention.HardAttention", "init_args": {**weights, **hard}}
    return {"class_path": OBJECTIVES + "cross_entropy.CrossEntropy", "init_args": weights}


def _load_state(state: Mapping[str, Any], model: ShowAttendTell, problem: Callable[[str], CaptionerError]) -> None:
    """Load `state` (the state dict of `ShowAttendTell`) into `model`, strictly."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise problem(f"its weights do not fit the model ({detail[:300]})") from None


def _settings(kind: type[PlainConfig], hparams: dict[str, Any], key: str) -> Any:
    """The `kind` settings stored under `key`; checkpoints of captioner 0.1 kept them flat among
    the hyper-parameters, under the same field names. A setting the checkpoint predates takes
    the value it had then (`_FORMER_DEFAULTS`)."""
    if key in hparams:
        stored = hparams[key]
    else:
        names = {field.name for field in dataclasses.fields(kind)}
        stored = {name: value for name, value in hparams.items() if name in names}
    return kind.from_dict(_with_former_defaults(key, stored))


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
