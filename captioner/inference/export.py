"""A trained model as model hubs and other runtimes expect it, and loading it back.

    captioner export --ckpt runs/demo/checkpoints/best.ckpt --out exports/shapes
    captioner caption --model exports/shapes photo.jpg
    Captioner.from_pretrained("exports/shapes")          # or a Hugging Face Hub id

The folder holds:
    model.safetensors  the state dict of the `ShowAttendTell` (`encoder.*`, `decoder.*`), as
                       written by `safetensors`
    config.json        every setting needed to rebuild and run the model: encoder, decoder,
                       decoding, the image size and normalisation, and the vocabulary
    README.md          a model card: what it is, how it was trained, its test metrics, limits
    metrics.json       the test metrics, when `captioner train test` left them beside the checkpoint

Loading reads JSON and safetensors only: nothing in the folder is unpickled or run.
The weights are the model object's own state dict and `model_config` the one place that
reads its settings out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

import captioner
from captioner.data.images import IMAGENET_MEAN, IMAGENET_STD
from captioner.errors import CaptionerError
from captioner.files import replace_folder
from captioner.inference.checkpoint import LoadedModel, build_model, load_checkpoint, model_from_checkpoint
from captioner.inference.untrusted import read_header, read_json
from captioner.limits import MAX_CONFIG_BYTES, short

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
METRICS = "metrics.json"
EXPORT_FILES = (WEIGHTS, CONFIG, CARD, METRICS)
# config.json's "format"; `format_version` changes when a reader of the old one would misread it.
FORMAT = "captioner/show-attend-tell"
FORMAT_VERSION = 1
# Hyper-parameters of a checkpoint that are not training settings (the CLI links or adds them).
_NOT_SETTINGS = ("_instantiator", "vocab_words", "image_size")


def model_config(model: LoadedModel) -> dict[str, Any]:
    """config.json: plain data describing `model` fully (see `hparams_from_config` for the way back)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "captioner_version": captioner.__version__,
        "encoder": model.model.encoder.config.to_dict(),
        "decoder": model.model.decoder.config.to_dict(),
        "decoding": model.decoding.to_dict(),
        # Images are resized to size x size, scaled to [0, 1], then normalised per channel.
        "image": {"size": model.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "vocab_words": list(model.vocab.words),
    }


def hparams_from_config(folder: Path, config: Any) -> dict[str, Any]:
    """The training hyper-parameters `build_model` takes, from a config.json read in `folder`
    (its structure checked here; its values by `build_model`)."""
    source = folder / CONFIG
    if not isinstance(config, dict):
        raise CaptionerError(f"{source} holds a JSON {type(config).__name__}, not an object; export the model again")
    if config.get("format") != FORMAT:
        raise CaptionerError(f"{source} is not a captioner export (its format is {short(config.get('format'))})")
    if config.get("format_version") != FORMAT_VERSION:
        raise CaptionerError(
            f"{source} has format version {short(config.get('format_version'))}; this captioner reads "
            f"version {FORMAT_VERSION}: install the captioner version that exported it"
        )
    image = config.get("image")
    if not isinstance(image, dict):
        raise CaptionerError(
            f"{source}: image must be an object with size, mean and std, not a {type(image).__name__}; "
            "export the model again"
        )
    missing = [key for key in ("encoder", "decoder", "decoding", "vocab_words") if key not in config]
    missing += [f"image.{key}" for key in ("size", "mean", "std") if key not in image]
    if missing:
        raise CaptionerError(f"{source} lacks the setting(s) {', '.join(missing)}; export the model again")
    if [image["mean"], image["std"]] != [list(IMAGENET_MEAN), list(IMAGENET_STD)]:
        raise CaptionerError(f"{source} asks for an image normalisation this captioner does not do")
    words = config["vocab_words"]
    if not isinstance(words, list):
        raise CaptionerError(f"{source}: vocab_words must be a list of words, not a {type(words).__name__}")
    settings = {key: config[key] for key in ("encoder", "decoder", "decoding", "vocab_words")}
    return settings | {"image_size": image["size"]}


def export(checkpoint_path: str | Path, out: str | Path) -> list[Path]:
    """Write the export of the checkpoint at `checkpoint_path` into the folder `out`, whole: made
    if needed; an earlier export there is replaced (no file of it is kept), any other folder
    content is refused; on failure nothing changes (`captioner.files.replace_folder`). Returns
    the files written."""
    from safetensors.torch import save

    checkpoint_path, out = Path(checkpoint_path), Path(out)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint_path, checkpoint)
    metrics = read_metrics(checkpoint_path.parent / METRICS)
    # safetensors wants contiguous tensors that share no memory; a checkpoint's already are.
    weights = {k: v.contiguous() for k, v in model.model.state_dict().items()}
    files = {WEIGHTS: save(weights, metadata={"format": "pt"}), CONFIG: _json(model_config(model))}
    if metrics:
        files[METRICS] = _json(metrics, sort_keys=True)
    files[CARD] = model_card(model, checkpoint, metrics, out.name).encode()
    replace_folder(out, files, replaceable=EXPORT_FILES)
    return [out / name for name in files]


def _json(value: Any, sort_keys: bool = False) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=sort_keys) + "\n").encode()


def load_pretrained(source: str | Path) -> LoadedModel:
    """The model exported into the folder `source`, or, when no such folder exists, in the
    Hugging Face Hub repository of that id (downloaded once into the Hub's cache).

    The folder is checked before anything is allocated: config.json (bounded size and depth)
    against `captioner.limits` and against the tensors the header of model.safetensors declares;
    then the weights are read and must be finite (`captioner.inference.untrusted`)."""
    folder = Path(source)
    if folder.is_file():
        raise CaptionerError(
            f"{folder} is a file, not an export folder; pass the folder `captioner export` wrote "
            "(a training checkpoint loads with --ckpt / Captioner.from_checkpoint)"
        )
    if not folder.is_dir():
        folder = _download(str(source))
    missing = [name for name in (CONFIG, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise CaptionerError(
            f"{folder} is not a captioner export: {' and '.join(missing)} missing; "
            "write one with `captioner export --ckpt CKPT --out DIR`"
        )
    hparams = hparams_from_config(folder, read_json(folder / CONFIG, MAX_CONFIG_BYTES))
    weights = read_header(folder / WEIGHTS)

    def problem(detail: str) -> CaptionerError:
        return CaptionerError(
            f"{folder} is not a usable captioner export: {detail}; export it again from its checkpoint "
            "(`captioner export`), or ask whoever shared it"
        )

    return build_model(hparams, weights, lambda: _read_weights(folder / WEIGHTS), problem)


def _read_weights(path: Path) -> dict[str, Any]:
    """The tensors of the safetensors file at `path` (its header already checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CaptionerError(f"{path} is damaged ({' '.join(str(error).split())[:200]})") from None


def _download(repo_id: str) -> Path:
    """The local snapshot of the Hub repository `repo_id` (only the export's files)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[WEIGHTS, CONFIG, CARD, METRICS]))
    except Exception as error:  # the Hub client raises many kinds: network, bad id, auth, missing files
        reason = " ".join(str(error).split())
        reason = reason if len(reason) <= 300 else reason[:300] + "…"
        raise CaptionerError(
            f"{repo_id!r} is not a local folder, and fetching it from the Hugging Face Hub failed "
            f"({type(error).__name__}: {reason}); pass a folder written by `captioner export`, or check "
            "the id and the network"
        ) from None


def read_metrics(path: Path) -> dict[str, float] | None:
    """The finite numbers of a metrics.json (written by `captioner train test` beside the
    checkpoint), or None when there is none or it is not a JSON object."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict):
        return None
    return {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def model_card(model: LoadedModel, checkpoint: dict[str, Any], metrics: dict[str, float] | None, name: str) -> str:
    """README.md of an export: what the model is, how it was trained, its test metrics, its limits."""
    enc, dec = model.model.encoder.config, model.model.decoder.config
    rows, cols = enc.grid_shape
    params = sum(t.numel() for t in model.model.state_dict().values() if t.is_floating_point())
    hparams = checkpoint["hyper_parameters"]
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    training = {
        "model": {k: v for k, v in hparams.items() if k not in _NOT_SETTINGS},
        "data": {k: v for k, v in data.items() if k not in _NOT_SETTINGS},
    }
    data_dir = data.get("data_dir", "(not recorded in the checkpoint)")
    lines = [
        "---",
        "library_name: captioner",
        "pipeline_tag: image-to-text",
        "tags: [image-captioning, show-attend-tell, visual-attention]",
        "---",
        "",
        f"# {name}: a Show, Attend and Tell image captioner",
        "",
        f"An image captioner after Xu et al. (2015), *Show, Attend and Tell*: a {enc.backbone} encoder "
        f"turns a {model.image_size}×{model.image_size} image into a {rows}×{cols} grid of features, and an "
        f"LSTM decoder ({dec.hidden_dim} units) with {dec.attention} attention writes the caption word by "
        f"word, recording where it looked for each word (α over the {rows * cols} cells). "
        f"{params:,} parameters; a vocabulary of {len(model.vocab)} words. "
        f"Decoding by default: beam size {model.decoding.beam_size}, at most {model.decoding.max_len} words.",
        "",
        "## Use",
        "",
        "```",
        "pip install captioner",
        f"captioner caption --model {name} photo.jpg",
        f"captioner attend --model {name} photo.jpg --out overlays/",
        "```",
        "",
        "```python",
        "from captioner.inference.api import Captioner",
        "",
        f'captioner = Captioner.from_pretrained("{name}")   # this folder, or its Hub id',
        'result = captioner.caption("photo.jpg")[0]',
        "print(result.caption, result.alphas.shape)   # (words, grid cells)",
        "```",
        "",
        "## Training",
        "",
        f"Trained with `captioner train fit`, saved at epoch {checkpoint.get('epoch', '?')} (counted from 0) "
        f"after {checkpoint.get('global_step', '?')} optimizer steps (pytorch-lightning "
        f"{checkpoint.get('pytorch-lightning_version', '?')}) on the data at `{data_dir}`. "
        "The settings of that run, as a config for `captioner train fit --config run.yaml`:",
        "",
        "```yaml",
        yaml.safe_dump(training, sort_keys=False).rstrip(),
        "```",
        "",
        "## Test metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
        lines += ["", "COCO caption metrics on pycocoevalcap's scale (CIDEr not multiplied by 100)."]
    else:
        lines.append(
            "Not measured: there was no metrics.json beside the checkpoint (`captioner train test "
            "--ckpt_path CKPT` writes it; export again afterwards)."
        )
    lines += [
        "",
        "## Limits",
        "",
        f"- It can only use the {len(model.vocab)} words of its vocabulary, learnt from `{data_dir}`; on "
        "images unlike that data its captions are unreliable, and it says so in no way (the score is a "
        "log-probability, not a calibrated confidence).",
        f"- Every image is resized to {model.image_size}×{model.image_size} without keeping its aspect ratio; "
        "small details may be lost.",
        "- The attention maps show where the decoder looked while writing a word, not why it chose the word; "
        "they are not a faithful explanation.",
        "- Captions inherit the biases and mistakes of the training captions.",
        "",
    ]
    return "\n".join(lines)
