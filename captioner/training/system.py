"""The Lightning system: Show, Attend and Tell trained with teacher forcing, judged by free decoding.

    captioner train fit --config configs/shapes.yaml

Training minimises the objective the config names (`model.objective`, one of
`captioner.training.objectives`): by default cross-entropy over real tokens (the paper's doubly
stochastic attention term with λ > 0, as `configs/paper.yaml` has it); the paper's hard
attention, or self-critical training on the CIDEr-D of sampled captions from a trained model
(`configs/shapes_scst.yaml`).

Validation and test decode without teacher forcing (`model.decoding`) and hand the
captions to `captioner.evaluation.scores`, which gathers every rank's captions and scores each
image exactly once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from jsonargparse import lazy_instance

from captioner.data.records import Box, ImageRecord
from captioner.evaluation.faithfulness import deletion_curves
from captioner.evaluation.scores import DecodedImage, gather_across_ranks, score_images
from captioner.inference.checkpoint import load_weights, upgrade_checkpoint
from captioner.models import DecoderConfig, EncoderConfig
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import Caption, DecodingConfig
from captioner.training.extract import check_cached_features
from captioner.training.nonfinite import NonFiniteLosses
from captioner.training.objectives import CrossEntropy, Objective
from captioner.training.objectives.base import batch_annotations
from captioner.training.optimization import OptimizerConfig, configure_optimizer
from captioner.training.runtime import clip_fused, reseed_for_epoch
from captioner.vocab import Vocabulary

# What `model.objective` is unless the config names another (shown by --print_config).
DEFAULT_OBJECTIVE = lazy_instance(CrossEntropy)


@runtime_checkable
class CaptionData(Protocol):
    """What the system asks of its data module (`captioner.data.CaptionDataModule` provides it).
    Any other data module, or plain dataloaders, train too: without boxes there are no
    grounding scores, and without `features_dir` no cached features."""

    features_dir: str | None

    def records(self, role: str) -> list[ImageRecord]:
        """The images of the "train", "val" or "test" split with their reference captions."""

    def boxes(self, role: str) -> dict[int, list[Box]]:
        """Image id -> boxes of the "val" or "test" split; {} when it has none."""

    def check_features(self, settings: dict[str, Any]) -> None:
        """Raise CaptionerError when the cached features were made with other encoder settings."""


class CaptioningModule(pl.LightningModule):
    """The model (`ShowAttendTell`), its objective, the optimisers and caption-metric validation.

    Args:
        vocab_words: index → word, specials first. Linked from the data module by the CLI;
            stored in the checkpoint as plain data so a checkpoint alone can caption.
        image_size: side in pixels the images are resized to: `data.image_size`, which the CLI
            links here (required), kept in the checkpoint so captioning prepares images the same way.
        encoder: the CNN and its grid (`EncoderConfig`).
        decoder: the attention LSTM (`DecoderConfig`).
        decoding: how validation, test, predict and later captioning decode (`DecodingConfig`).
        objective: what training minimises, by `class_path` (`captioner.training.objectives`);
            `CrossEntropy` with its defaults unless the config names another.
        init_from: a checkpoint whose encoder and decoder weights this run starts from (same
            vocabulary and architecture); read when fitting starts, not when resuming with
            `--ckpt_path`, which restores everything.
        optimizer: Adam's learning rates, weight decay and schedule (`OptimizerConfig`).
        spice: also compute SPICE (needs Stanford CoreNLP; skipped with a warning when missing).
        validation_faithfulness: run each word's deletion test (`captioner.evaluation.faithfulness`)
            in validation too and log `val/deletion_*`; the test stage always does. Off by default:
            it costs a large share of validation time (measured in docs/attention.md).
        skip_nonfinite_loss: when a training loss is NaN or infinite, skip that batch (no
            backward, so no weight or Adam-state update; Lightning still counts the step), warn
            and count it in `train/nonfinite_skips`, instead of stopping the run with an error
            (`captioner.training.nonfinite`). One process only.
    """

    def __init__(
        self,
        vocab_words: list[str],
        image_size: int,
        encoder: EncoderConfig = EncoderConfig(),  # noqa: B008 - frozen, so one shared default is safe
        decoder: DecoderConfig = DecoderConfig(),  # noqa: B008
        decoding: DecodingConfig = DecodingConfig(),  # noqa: B008
        objective: Objective = DEFAULT_OBJECTIVE,
        init_from: str | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        spice: bool = False,
        validation_faithfulness: bool = False,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        # Checkpoints carry plain data only (they are loaded with weights_only=True).
        encoder, decoder = EncoderConfig.from_dict(encoder), DecoderConfig.from_dict(decoder)
        decoding = DecodingConfig.from_dict(decoding)
        optimizer = OptimizerConfig.from_dict(optimizer)
        objective = CrossEntropy() if objective is DEFAULT_OBJECTIVE else objective  # never one shared module
        self.save_hyperparameters(ignore=["objective"])
        self.hparams.update(
            encoder=encoder.to_dict(),
            decoder=decoder.to_dict(),
            decoding=decoding.to_dict(),
            objective=objective.spec(),
            optimizer=optimizer.to_dict(),
        )
        self.optimizer_config = optimizer
        self.vocab = Vocabulary(list(vocab_words))
        self.decoding = decoding
        self.model = ShowAttendTell.for_images(encoder, decoder, len(self.vocab))
        self.model.encoder.warn_if_grid_repeats(image_size)
        self.objective = objective
        objective.attach(self.model, self.vocab, decoding)
        self.nonfinite = NonFiniteLosses(skip_nonfinite_loss)
        self._eval_images: list[DecodedImage] = []
        self._boxes_by_stage: dict[str, dict[int, list[Box]]] = {}

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the attention grid; α rows are laid out row-major over it."""
        return self.model.encoder.config.grid_shape

    @property
    def data(self) -> CaptionData | None:
        """The trainer's data module when it keeps the `CaptionData` contract, else None."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return datamodule if isinstance(datamodule, CaptionData) else None

    def setup(self, stage: str) -> None:
        self._boxes_by_stage = {}  # a new fit/validate/test may bring another data module
        if stage == "fit":
            self.nonfinite.check_processes(self.trainer.world_size)
            if self.hparams.init_from and self.trainer.ckpt_path is None:
                load_weights(self.hparams.init_from, self.model, self.vocab)
            self.objective.start(self.data)
        check_cached_features(self.data, self.model.encoder, self.hparams.image_size)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """batch: images (B,3,S,S) or features (B,P,D), tokens (B,T) starting with <start>, padded with <pad>."""
        total, logs = self.objective(self.model, batch)
        if not torch.isfinite(total):
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            self.log("train/nonfinite_skips", float(self.nonfinite.handle(total, where)), batch_size=1)
            return None  # Lightning then skips backward and the optimizer step
        batch_size = batch["tokens"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return total

    def on_train_epoch_start(self) -> None:
        reseed_for_epoch(self.current_epoch)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another vocabulary's checkpoint; read older layouts (`upgrade_checkpoint`)."""
        path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        upgrade_checkpoint(checkpoint, self.vocab, path)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_fused(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):  # mixed precision
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        steps = int(self.trainer.estimated_stepping_batches) if self.optimizer_config.lr_schedule == "cosine" else 0
        return configure_optimizer(self.optimizer_config, self.model.encoder, self.model.decoder, steps, "val/CIDEr")

    # ---------------------------------------------------------------- decoding
    @torch.inference_mode()
    def captions(self, batch: dict[str, Any]) -> list[Caption]:
        """One `Caption` per image of the batch, decoded with `decoding`."""
        return self.model.caption(batch_annotations(self.model, batch), self.vocab, self.decoding)

    def decode_batch(self, batch: dict[str, Any], faithfulness: bool = False) -> list[DecodedImage]:
        """The batch's images decoded; with `faithfulness`, each word's deletion test too
        (`captioner.evaluation.faithfulness`), scored with the captions."""
        with torch.inference_mode():
            annotations = batch_annotations(self.model, batch)
            captions = self.model.caption(annotations, self.vocab, self.decoding)
        tokens = [caption.tokens for caption in captions]
        decoder, start, deletions = self.model.decoder, self.vocab.start_id, [None] * len(tokens)
        if faithfulness:
            deletions = deletion_curves(decoder, annotations.features, tokens, start, mask=annotations.mask)
        return [
            DecodedImage(
                image_id=int(batch["image_ids"][i]),
                caption=self.vocab.decode(caption.tokens),
                references=tuple(batch["references"][i]),
                words=tuple(self.vocab.decode_tokens(caption.tokens)),
                alphas=caption.alphas.float().cpu(),
                size=tuple(batch["sizes"][i].tolist()),
                faithfulness=deletions[i],
            )
            for i, caption in enumerate(captions)
        ]

    # ------------------------------------------------------ validation and test
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_images.extend(self.decode_batch(batch, self.hparams.validation_faithfulness))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_images.extend(self.decode_batch(batch, faithfulness=True))

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, stage: str) -> None:
        """Score this epoch's captions once over all ranks (on rank 0) and log `stage/<metric>`."""
        images = gather_across_ranks(self._eval_images, self.trainer.world_size)
        self._eval_images = []
        scores: dict[str, float] = {}
        if self.trainer.is_global_zero:
            scores = score_images(images, self.boxes(stage), self.grid_shape, spice=self.hparams.spice)
        scores = self.trainer.strategy.broadcast(scores, src=0)
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("CIDEr", "BLEU-4"), sync_dist=False)

    def boxes(self, stage: str) -> dict[int, list[Box]]:
        """Image id -> boxes of the data module's `stage` split ({} without instances), read once."""
        if stage not in self._boxes_by_stage:
            self._boxes_by_stage[stage] = self.data.boxes(stage) if self.data is not None else {}
        return self._boxes_by_stage[stage]

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One dict per image: image_id, path, caption, score."""
        captions = self.captions(batch)
        return [
            {
                "image_id": int(batch["image_ids"][i]),
                "path": batch["paths"][i],
                "caption": self.vocab.decode(caption.tokens),
                "score": caption.score,
            }
            for i, caption in enumerate(captions)
        ]
