"""Captioning from Python with a trained checkpoint.

    from captioner.inference.api import Captioner

    captioner = Captioner.from_checkpoint("runs/demo/checkpoints/best.ckpt")
    captioner = Captioner.from_pretrained("exports/shapes")    # or an export (`captioner export`)
    for result in captioner.caption(["cat.jpg", "dog.png"]):   # the checkpoint's decoding settings
        print(result.caption, result.score)
        result.alphas      # (L, P): where each of the L words looked, over result.grid

Images may be file paths, PIL images or tensors. Paths are opened with the data layer's
`load_image_for` (RGB, EXIF-rotated; a large JPEG at reduced scale, as in training); PIL
images get the same RGB conversion; both are resized and normalised exactly as in training.
Tensors are taken as already prepared.

Decoding follows the settings stored in the checkpoint (`model.decoding` when it was
trained); `caption(..., settings=DecodingConfig(...))` decodes with others, and keywords
(`caption(..., beam_size=5)`) change them per call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from captioner.data import ImageLoadError, image_transform, load_image
from captioner.data.images import load_image_for, to_upright_rgb
from captioner.errors import CaptionerError, require_positive
from captioner.evaluation.faithfulness import WordDeletion, deletion_curves
from captioner.inference.checkpoint import LoadedModel, load_model
from captioner.inference.precision import check_precision, inference_model
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import Caption, DecodingConfig

ImageInput = str | os.PathLike | Image.Image | torch.Tensor


@dataclass(frozen=True)
class CaptionResult:
    """One image's caption.

    Attributes:
        tokens: word ids, without `<start>` and `<end>`.
        words: the words of `tokens`.
        caption: `words` joined by spaces.
        score: the decoder's score (log-probability; length-normalised under beam search
            with `length_normalize`).
        alphas: (L, P) float CPU tensor, L = len(words): row t is the attention over the
            P grid cells while word t was emitted; each row sums to 1.
        grid: (rows, cols) of the attention grid, P = rows·cols, cells row-major over the
            whole image (see `captioner.viz.overlay.attention_map`).
        faithfulness: per word, its deletion test (`captioner.evaluation.faithfulness`): p(word)
            as its cells are erased in order of α and in random orders, with no look at all,
            whether it is image-dependent and whether it is faithful; None unless asked for.
    """

    tokens: list[int]
    words: list[str]
    caption: str
    score: float
    alphas: torch.Tensor
    grid: tuple[int, int]
    faithfulness: WordDeletion | None = None


@dataclass(frozen=True)
class FileCaption:
    """The outcome for one image file: `result` and `image` when it was read, else `error`.

    `image` is the file as decoded (RGB, EXIF-rotated, its own size): what overlays draw on.
    """

    path: Path
    image: Image.Image | None
    result: CaptionResult | None
    error: ImageLoadError | None


class Captioner:
    """A trained encoder + decoder ready to caption images (inference only, no Lightning).

    `precision` is "fp32" (default), "bf16" or "int8" (see `captioner.inference.precision`). int8
    calibrates the encoder on `calibration` (images as `caption` takes them; a handful is
    enough), or, without it, on the first batch it captions.
    """

    def __init__(
        self,
        model: LoadedModel,
        device: torch.device,
        *,
        precision: str = "fp32",
        calibration: ImageInput | Iterable[ImageInput] | None = None,
    ):
        check_precision(precision, device)
        self.model = model.model  # float32, on `device` once prepared
        self.device = device
        self.precision = precision
        self.vocab = model.vocab
        self.image_size = model.image_size
        self.decoding = model.decoding
        self.grid = model.model.encoder.config.grid_shape
        self._transform = image_transform(model.image_size)
        # The model with its encoder in `precision` (`inference_model`); None only for int8
        # before its first batch has calibrated it.
        self.runtime: ShowAttendTell | None = None
        if calibration is not None:
            self._prepare(torch.stack([self.to_tensor(image) for image in _flatten(calibration)]))
        elif precision != "int8":
            self._prepare(None)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        *,
        precision: str = "fp32",
        calibration: ImageInput | Iterable[ImageInput] | None = None,
    ) -> Captioner:
        """Load `path` safely (see `captioner.inference.checkpoint`); `device="auto"` means cuda if available."""
        return cls(load_model(path), resolve_device(device), precision=precision, calibration=calibration)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: str | torch.device = "auto",
        *,
        precision: str = "fp32",
        calibration: ImageInput | Iterable[ImageInput] | None = None,
    ) -> Captioner:
        """Load an export (`captioner export`): a local folder, else a Hugging Face Hub id (see
        `captioner.inference.export`; JSON and safetensors only, nothing unpickled)."""
        from captioner.inference.export import load_pretrained

        return cls(load_pretrained(source), resolve_device(device), precision=precision, calibration=calibration)

    def _prepare(self, calibration: torch.Tensor | None) -> None:
        self.runtime = inference_model(self.model, self.precision, self.device, calibration)

    def open_image(self, image: str | os.PathLike | Image.Image) -> Image.Image:
        """RGB, upright, at its own size: a path through `load_image`, a PIL image converted alike."""
        if isinstance(image, Image.Image):
            return to_upright_rgb(image)
        return load_image(image)

    def to_tensor(self, image: ImageInput) -> torch.Tensor:
        """(3, S, S) model input, S = `image_size`, ImageNet-normalised.

        A tensor must already be that: (3, S, S) float, prepared as `image_transform(S)` does.
        """
        if isinstance(image, torch.Tensor):
            expected = (3, self.image_size, self.image_size)
            if tuple(image.shape) != expected or not image.is_floating_point():
                raise CaptionerError(
                    f"an image tensor must be float of shape {expected} (or a batch of them, (B, 3, S, S)) "
                    f"normalised like captioner.data.images.image_transform({self.image_size}); "
                    f"got {image.dtype} {tuple(image.shape)}"
                )
            return image
        if isinstance(image, Image.Image):
            return self._transform(to_upright_rgb(image))
        return self._transform(load_image_for(image, self.image_size)[0])

    def caption(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = 16,
        faithfulness: bool = False,
        settings: DecodingConfig | None = None,
        **overrides: int | bool | None,
    ) -> list[CaptionResult]:
        """Caption `images` (one item or a sequence; a (B, 3, S, S) tensor counts as B images).

        Returns one result per image, in order; with `faithfulness`, each with its per-word
        deletion test (costs several decoding passes; docs/attention.md). Decodes with `settings`, by default the
        checkpoint's; keywords (beam_size, max_len, length_normalize, allow_unk; see
        `DecodingConfig`) change them for this call, None keeps them; `beam_size=1` decodes
        greedily. Images are read and decoded `batch_size` at a time. Raises `ImageLoadError`
        for an unreadable path (use `caption_files` to go on past bad files) and CaptionerError
        for bad settings.
        """
        require_positive(batch_size=batch_size)
        settings = self.decoding_settings(settings, **overrides)
        results: list[CaptionResult] = []
        batch: list[torch.Tensor] = []
        for image in _flatten(images):
            batch.append(self.to_tensor(image))
            if len(batch) == batch_size:
                results.extend(self._decode(torch.stack(batch), settings, faithfulness))
                batch = []
        if batch:
            results.extend(self._decode(torch.stack(batch), settings, faithfulness))
        return results

    def decoding_settings(
        self, settings: DecodingConfig | None = None, **overrides: int | bool | None
    ) -> DecodingConfig:
        """`settings` (the checkpoint's when None) with the non-None keyword `overrides` applied:
        where keywords become a `DecodingConfig`, which checks them."""
        changes = {name: value for name, value in overrides.items() if value is not None}
        settings = self.decoding if settings is None else settings
        return settings.replace(**changes) if changes else settings

    def caption_files(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        settings: DecodingConfig | None = None,
        batch_size: int = 16,
        full_size: bool = True,
        faithfulness: bool = False,
        **overrides: int | bool | None,
    ) -> Iterator[FileCaption]:
        """Caption image files, yielding one `FileCaption` per path in order as each batch finishes.

        An unreadable file does not stop the others: it comes back with `error` set.
        With `full_size=False` a large JPEG is decoded only at the scale the model needs
        (faster; see `load_image_for`) and `FileCaption.image` is that smaller image.
        `settings`, keyword `overrides` and `faithfulness` are those of `caption`.
        """
        require_positive(batch_size=batch_size)
        options = {"settings": self.decoding_settings(settings, **overrides), "faithfulness": faithfulness}
        pending: list[tuple[Path, Image.Image | None, ImageLoadError | None]] = []
        for path in paths:
            try:
                image = load_image(path) if full_size else load_image_for(path, self.image_size)[0]
                pending.append((Path(path), image, None))
            except ImageLoadError as error:
                pending.append((Path(path), None, error))
            if sum(image is not None for _, image, _ in pending) == batch_size:
                yield from self._finish(pending, batch_size, options)
                pending = []
        yield from self._finish(pending, batch_size, options)

    def _finish(self, pending, batch_size: int, options: dict) -> Iterator[FileCaption]:
        # load_image already made them upright RGB: transform them, do not convert them again.
        images = [self._transform(image) for _, image, _ in pending if image is not None]
        results = iter(self.caption(images, batch_size=batch_size, **options))
        for path, image, error in pending:
            yield FileCaption(path, image, None if image is None else next(results), error)

    @torch.inference_mode()
    def _decode(
        self, images: torch.Tensor, settings: DecodingConfig, faithfulness: bool = False
    ) -> list[CaptionResult]:
        """images (B, 3, S, S) -> B results."""
        if self.runtime is None:  # int8 without calibration images: calibrate on this first batch
            self._prepare(images)
        annotations = self.runtime.encode(images.to(self.device))
        captions = self.runtime.caption(annotations, self.vocab, settings)
        if not faithfulness:
            return [self._result(caption) for caption in captions]
        tokens = [caption.tokens for caption in captions]
        deletions = deletion_curves(
            self.runtime.decoder, annotations.features, tokens, self.vocab.start_id, mask=annotations.mask
        )
        return [dataclasses.replace(self._result(c), faithfulness=d) for c, d in zip(captions, deletions)]

    def _result(self, caption: Caption) -> CaptionResult:
        # Decoding returns the words only (no <start>/<end>), one α row each.
        words = self.vocab.decode_tokens(caption.tokens)
        return CaptionResult(
            tokens=list(caption.tokens),
            words=words,
            caption=" ".join(words),
            score=float(caption.score),
            alphas=caption.alphas.float().cpu(),
            grid=self.grid,
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else must name a usable device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise CaptionerError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CaptionerError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return resolved


def _flatten(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput]:
    """Single images and sequences alike, with a (B, 3, H, W) tensor split into B images."""
    single = isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor))
    for item in [images] if single else images:
        if isinstance(item, torch.Tensor) and item.dim() == 4:
            yield from item
        else:
            yield item
