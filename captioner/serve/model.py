"""The service's one model object: a `Captioner` whose decoding is batched across requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anyio import to_thread

from captioner.data.images import ImageLoadError, decode_image, header_pixels
from captioner.inference.api import Captioner, CaptionResult
from captioner.inference.export import read_metrics
from captioner.models.search import DecodingConfig
from captioner.serve.batching import Batcher, BatchSettings
from captioner.serve.budget import PixelBudget
from captioner.viz.overlay import HEATMAP

# Attention weights are sent rounded: 6 decimals keep every row's sum within 1e-4 of 1 and
# halve the JSON of a 14x14 grid.
ATTENTION_DECIMALS = 6


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its form filename (may be empty) and bytes."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class Prepared:
    """An upload decoded for the model: tensor (3, S, S) and the image's own (width, height)."""

    tensor: torch.Tensor
    size: tuple[int, int]


class CaptionModel:
    """Captions uploads with `captioner`, decoding images of concurrent requests together.

    Start it inside the serving event loop (`async with model:`), which starts its batcher.
    """

    def __init__(self, captioner: Captioner, *, checkpoint: str | Path, batching: BatchSettings | None = None):
        self.captioner = captioner
        self.checkpoint = Path(checkpoint)
        self.batcher: Batcher[torch.Tensor, CaptionResult] = Batcher(self._decode, batching)
        # The options a request may set, defaulting to the checkpoint's decoding settings.
        self.defaults = {"beam_size": captioner.decoding.beam_size, "max_len": captioner.decoding.max_len}
        self.info = self._describe()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str = "auto", batching: BatchSettings | None = None
    ) -> CaptionModel:
        return cls(Captioner.from_checkpoint(path, device=device), checkpoint=path, batching=batching)

    async def __aenter__(self) -> CaptionModel:
        await self.batcher.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.batcher.stop()

    def prepare(self, upload: Upload, max_pixels: int) -> Prepared:
        """Decode one upload (upright RGB, at most `max_pixels`, shrunk early to about the model's
        input size; see `decode_image`) into model input; raises ImageLoadError."""
        image, size = decode_image(
            upload.data, upload.filename or "upload", max_pixels=max_pixels, target=self.captioner.image_size
        )
        return Prepared(self.captioner.to_tensor(image), size)

    async def caption_uploads(
        self, uploads: list[Upload], options: Mapping[str, int], max_pixels: int, budget: PixelBudget
    ) -> list[dict[str, Any]]:
        """One JSON entry per upload, in order: its caption, or `error` with the reason it was not read.

        Each decoding holds its pixels of `budget`; raises Busy when they do not fit in time.
        """
        prepared: list[Prepared | ImageLoadError] = []
        for upload in uploads:  # decoded off the event loop, one at a time per request
            pixels = header_pixels(upload.data)
            try:
                # An image over max_pixels is refused from its header, without decoding it.
                async with budget.reserve(pixels if pixels <= max_pixels else 0):
                    prepared.append(await to_thread.run_sync(self.prepare, upload, max_pixels))
            except ImageLoadError as error:
                prepared.append(error)
        good = [item for item in prepared if isinstance(item, Prepared)]
        # Requests with equal settings share batches: the frozen DecodingConfig and whether to test
        # faithfulness are the batching key.
        decoding = {name: value for name, value in options.items() if name != "faithfulness"}
        key = (self.captioner.decoding_settings(**decoding), bool(options.get("faithfulness")))
        results = iter(await self.batcher.submit(key, [item.tensor for item in good]) if good else [])
        entries = []
        for index, (upload, item) in enumerate(zip(uploads, prepared)):
            entry: dict[str, Any] = {"index": index, "filename": upload.filename}
            if isinstance(item, ImageLoadError):
                entry["error"] = item.reason
            else:
                entry.update(self._result_json(next(results), item.size))
            entries.append(entry)
        return entries

    def _decode(self, key: tuple[DecodingConfig, bool], tensors: list[torch.Tensor]) -> list[CaptionResult]:
        """Runs in the batcher's worker thread: one decoding call for the whole batch."""
        settings, faithfulness = key
        return self.captioner.caption(tensors, batch_size=len(tensors), faithfulness=faithfulness, settings=settings)

    def _result_json(self, result: CaptionResult, size: tuple[int, int]) -> dict[str, Any]:
        rows, cols = result.grid
        attention = np.round(result.alphas.numpy().reshape(-1, rows, cols).astype(np.float64), ATTENTION_DECIMALS)
        entry = {
            "caption": result.caption,
            "tokens": result.words,
            "token_ids": result.tokens,
            "score": result.score,
            "attention": attention.tolist(),  # (L, rows, cols): word t looked at cell (r, c) with weight [t][r][c]
            "grid": {"rows": rows, "cols": cols},
            "image": {"width": size[0], "height": size[1]},
        }
        if result.faithfulness is not None:  # per word: WordDeletion.as_json (docs/attention.md)
            entry["faithfulness"] = result.faithfulness.as_json()
        return entry

    def _describe(self) -> dict[str, Any]:
        """What `GET /v1/model` reports: architecture, grid, vocabulary, and the test metrics when present."""
        rows, cols = self.captioner.grid
        return {
            "checkpoint": self.checkpoint.name,
            "backbone": self.captioner.model.encoder.config.backbone,
            "grid": {"rows": rows, "cols": cols},
            "image_size": self.captioner.image_size,
            "vocab_size": len(self.captioner.vocab),
            "decoding_defaults": dict(self.defaults),
            # Colour-bar ticks of the page's heat maps for this grid: [position on the 0..1 scale, α label].
            "legend": [[at, label] for at, label in HEATMAP.legend(rows * cols)],
            # An export folder holds its metrics.json; a checkpoint has it beside.
            "metrics": read_metrics(
                (self.checkpoint if self.checkpoint.is_dir() else self.checkpoint.parent) / "metrics.json"
            ),
        }
