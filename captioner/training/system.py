"""The Lightning system: Show, Attend and Tell trained with teacher forcing, judged by free decoding.

    captioner train fit --config configs/shapes.yaml

Training minimises cross-entropy over real tokens plus the doubly stochastic attention
term; a hard-attention decoder adds the REINFORCE terms of its lower bound, and with `scst`
the model is fine-tuned on the CIDEr-D of sampled captions instead (`captioner.training.objectives`):

    captioner train fit --config configs/shapes_scst.yaml --model.init_from runs/demo/checkpoints/best.ckpt

Validation and test decode without teacher forcing (`model.decoding`) and hand the
captions to `captioner.evaluation.scores`, which gathers every rank's captions and scores each
image exactly once.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from captioner.data.records import Box, ImageRecord
from captioner.errors import CaptionerError
from captioner.evaluation.erasure import erase_words
from captioner.evaluation.scores import DecodedImage, gather_across_ranks, grounding_of, score_images
from captioner.inference.checkpoint import check_vocabulary, load_weights, model_state
from captioner.models import DecoderConfig, Encoder, EncoderConfig
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import DecodingConfig
from captioner.training.extract import encoder_settings
from captioner.training.objectives import (
    CrossEntropy,
    HardAttention,
    HardAttentionConfig,
    ScstConfig,
    SelfCritical,
    SelfCriticalObjective,
    batch_annotations,
)
from captioner.training.optimization import OptimizerConfig, configure_optimizer
from captioner.training.runtime import clip_fused
from captioner.vocab import Vocabulary


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
        attention_lambda: weight λ of the doubly stochastic term Σ_i (1 − Σ_t α_ti)².
        attention_entropy: weight of the mean entropy H(α_t) of each step's attention, added to
            the loss (not in the paper; > 0 favours attention on few cells). 0 leaves it out.
        hard_attention: the training objective of a decoder with `attention: hard`
            (`HardAttentionConfig`: λ_r, λ_e, the chance of the expected context, the baseline's decay).
        scst: self-critical training on CIDEr-D (`ScstConfig`: samples per image, baseline)
            instead of cross-entropy; null trains with cross-entropy. Start it from a trained
            model with `init_from`.
        init_from: a checkpoint whose encoder and decoder weights this run starts from (same
            vocabulary and architecture); read when fitting starts, not when resuming with
            `--ckpt_path`, which restores everything.
        optimizer: Adam's learning rates, weight decay and schedule (`OptimizerConfig`).
        keep_if_grounded: for a second stage (`init_from`) on data with boxes: the largest drop
            of the val pointing game below the starting model's that a checkpoint may have.
            Validation then logs `val/grounded_CIDEr`, the CIDEr of epochs whose grounding holds
            and 0 for the others, for `checkpoint.monitor`; a stage that never holds says so.
            Without boxes it warns and `val/grounded_CIDEr` is the CIDEr (the erasure score in
            metrics.json is then the box-free check).
        spice: also compute SPICE (needs Stanford CoreNLP; skipped with a warning when missing).
        validation_erasure: run each word's erasure test (`captioner.evaluation.erasure`) in
            validation too and log `val/erasure_*`; the test stage always does. Off by default: it
            adds from a tenth to over half of validation time (docs/attention.md).
        skip_nonfinite_loss: when a training loss is NaN or infinite, skip that batch (no
            backward, so no weight or Adam-state update; Lightning still counts the step), warn
            and count it in `train/nonfinite_skips`, instead of stopping the run with an error.
            One process only (Lightning cannot skip a step on one rank of several).
    """

    def __init__(
        self,
        vocab_words: list[str],
        image_size: int,
        encoder: EncoderConfig = EncoderConfig(),  # noqa: B008 - frozen, so one shared default is safe
        decoder: DecoderConfig = DecoderConfig(),  # noqa: B008
        decoding: DecodingConfig = DecodingConfig(),  # noqa: B008
        attention_lambda: float = 1.0,
        attention_entropy: float = 0.0,
        hard_attention: HardAttentionConfig = HardAttentionConfig(),  # noqa: B008
        scst: ScstConfig | None = None,
        init_from: str | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        keep_if_grounded: float | None = None,
        spice: bool = False,
        validation_erasure: bool = False,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        # Checkpoints carry plain data only (they are loaded with weights_only=True).
        encoder, decoder = EncoderConfig.from_dict(encoder), DecoderConfig.from_dict(decoder)
        decoding = DecodingConfig.from_dict(decoding)
        hard_attention = HardAttentionConfig.from_dict(hard_attention)
        scst = None if scst is None else ScstConfig.from_dict(scst)
        optimizer = OptimizerConfig.from_dict(optimizer)
        hard = decoder.attention == "hard"
        if hard and hard_attention.expected_context_baseline and decoder.attend_from != "current":
            raise CaptionerError(
                'hard_attention.baseline "expected_context" needs model.decoder.attend_from "current" '
                "(with the paper's order a location affects every later word); "
                'use baseline "moving_average"'
            )
        self.save_hyperparameters()
        self.hparams.update(
            encoder=encoder.to_dict(),
            decoder=decoder.to_dict(),
            decoding=decoding.to_dict(),
            hard_attention=hard_attention.to_dict(),
            scst=None if scst is None else scst.to_dict(),
            optimizer=optimizer.to_dict(),
        )
        self.scst, self.optimizer_config = scst, optimizer
        self.vocab = Vocabulary(list(vocab_words))
        self.decoding = decoding
        self.model = ShowAttendTell.for_images(encoder, decoder, len(self.vocab))
        _warn_if_grid_repeats(self.model.encoder, image_size)
        # SCST needs the training references, so its objective is made in `setup`.
        self.objective: nn.Module | None = None
        if scst is None and hard:
            self.objective = HardAttention(self.vocab.pad_id, attention_lambda, hard_attention, attention_entropy)
        elif scst is None:
            self.objective = CrossEntropy(self.vocab.pad_id, attention_lambda, attention_entropy)
        self._eval_images: list[DecodedImage] = []
        self._boxes_by_stage: dict[str, dict[int, list[Box]]] = {}
        self._nonfinite_skips = 0
        self._start_pointing: float | None = None  # the pointing game of `init_from`, for keep_if_grounded

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the attention grid; α rows are laid out row-major over it."""
        return self.model.encoder.config.grid_shape

    @property
    def data(self) -> CaptionData | None:
        """The trainer's data module when it keeps the `CaptionData` contract, else None."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return datamodule if isinstance(datamodule, CaptionData) else None

    def encoder_settings(self) -> dict[str, Any]:
        """What decides the encoder's output (`captioner.training.extract.encoder_settings`)."""
        return encoder_settings(self.model.encoder, self.hparams.image_size)

    def setup(self, stage: str) -> None:
        self._boxes_by_stage = {}  # a new fit/validate/test may bring another data module
        if stage == "fit" and self.hparams.skip_nonfinite_loss and self.trainer.world_size > 1:
            raise CaptionerError(
                "model.skip_nonfinite_loss works with one process only (Lightning cannot skip a step on "
                "one rank of several); set it to false or train on one device"
            )
        if stage == "fit":
            self._setup_objective()
        data = self.data
        if data is not None and data.features_dir is not None:
            self.require_frozen_encoder(
                f"data.features_dir={data.features_dir} holds features of a frozen one; "
                "set model.encoder.fine_tune to none or drop data.features_dir"
            )
            data.check_features(self.encoder_settings())

    def _setup_objective(self) -> None:
        """Start from `init_from`'s weights (unless resuming), and for SCST build the CIDEr-D
        scorer from the training references once (every process builds the same one)."""
        if self.hparams.init_from and self.trainer.ckpt_path is None:
            load_weights(self.hparams.init_from, self.model, self.vocab)
        if self.scst is not None and self.objective is None:
            data = self.data
            if data is None:
                raise CaptionerError(
                    "model.scst scores sampled captions against each training image's references: "
                    "train with captioner.data.CaptionDataModule (or a data module keeping CaptionData)"
                )
            references = {record.image_id: list(record.captions) for record in data.records("train")}
            critic = SelfCritical.from_references(references, self.vocab, self.scst, self.decoding.max_len)
            self.objective = SelfCriticalObjective(critic)

    def require_frozen_encoder(self, why: str) -> None:
        """Raise CaptionerError when fine-tuning trains the encoder; `why` says what needs it frozen."""
        if any(p.requires_grad for p in self.model.encoder.parameters()):
            raise CaptionerError(
                f"model.encoder.fine_tune={self.model.encoder.config.fine_tune!r} trains the encoder, but {why}"
            )

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """batch: images (B,3,S,S) or features (B,P,D), tokens (B,T) starting with <start>, padded with <pad>."""
        total, logs = self.objective(self.model, batch)
        if not torch.isfinite(total):
            self._nonfinite(total, batch_idx)
            return None  # Lightning then skips backward and the optimizer step
        batch_size = batch["tokens"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return total

    def _nonfinite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop the run (CaptionerError), or with `skip_nonfinite_loss` skip the batch. Either way
        nothing is back-propagated, so the weights never see the bad loss."""
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if not self.hparams.skip_nonfinite_loss:
            raise CaptionerError(
                f"the training loss is {loss.item()} at {where}; the weights were not updated with it and "
                "the last checkpoint is intact. Lower model.decoder_lr / model.encoder_lr, set "
                "trainer.gradient_clip_val, or set model.skip_nonfinite_loss=true to skip such batches"
            )
        self._nonfinite_skips += 1
        rank_zero_warn(
            f"skipped the batch at {where}: the training loss is {loss.item()} ({self._nonfinite_skips} skipped so far)"
        )
        self.log("train/nonfinite_skips", float(self._nonfinite_skips), batch_size=1)

    def on_train_epoch_start(self) -> None:
        # Dropout draws from torch's global RNG. Re-seeding it from (seed, epoch) makes an epoch's
        # randomness independent of whatever ran before it, so a run resumed from an end-of-epoch
        # checkpoint continues exactly as one that never stopped. The seed is the one
        # `seed_everything` set (the CLI's `seed_everything`, 0 by default); unseeded runs are left alone.
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            torch.manual_seed(int(np.random.SeedSequence([int(seed), self.current_epoch]).generate_state(1)[0]))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose vocabulary is not this run's (its output layer would not fit,
        or worse, fit with every word id meaning another word), and read the weights of
        checkpoints written before the model was one object."""
        words = checkpoint.get("hyper_parameters", {}).get("vocab_words")
        if words is not None:
            path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
            check_vocabulary(words, self.vocab, path)
        checkpoint["state_dict"] = model_state(checkpoint["state_dict"], prefix="model.")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_fused(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):  # mixed precision
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        steps = int(self.trainer.estimated_stepping_batches) if self.optimizer_config.lr_schedule == "cosine" else 0
        return configure_optimizer(self.optimizer_config, self.model.encoder, self.model.decoder, steps, "val/CIDEr")

    # ---------------------------------------------------------------- decoding
    @torch.inference_mode()
    def _captions(self, batch: dict[str, Any]) -> list:
        """One `Caption` per image of the batch, decoded with `decoding`."""
        return self.model.caption(batch_annotations(self.model, batch), self.vocab, self.decoding)

    def _decode_batch(self, batch: dict[str, Any], erasure: bool = False) -> list[DecodedImage]:
        """The batch's images decoded; with `erasure`, each word's erasure test too
        (`captioner.evaluation.erasure`), scored with the captions."""
        with torch.inference_mode():
            annotations = batch_annotations(self.model, batch)
            captions = self.model.caption(annotations, self.vocab, self.decoding)
        tokens = [caption.tokens for caption in captions]
        erasures = (
            erase_words(self.model.decoder, annotations.features, tokens, self.vocab.start_id, mask=annotations.mask)
            if erasure
            else [None] * len(tokens)
        )
        return [
            DecodedImage(
                image_id=int(batch["image_ids"][i]),
                caption=self.vocab.decode(caption.tokens),
                references=tuple(batch["references"][i]),
                words=tuple(self.vocab.decode_tokens(caption.tokens)),
                alphas=caption.alphas.float().cpu(),
                size=tuple(batch["sizes"][i].tolist()),
                erasure=erasures[i],
            )
            for i, caption in enumerate(captions)
        ]

    # ------------------------------------------------------ validation and test
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_images.extend(self._decode_batch(batch, self.hparams.validation_erasure))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_images.extend(self._decode_batch(batch, erasure=True))

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def on_fit_start(self) -> None:
        if self.hparams.keep_if_grounded is None or not self.hparams.init_from or self.trainer.ckpt_path:
            return
        if not self._boxes("val"):
            rank_zero_warn(
                "model.keep_if_grounded needs boxes (instances_*.json) in the val split; without them every "
                "checkpoint is kept on CIDEr alone: check the erasure score of the result instead"
            )
            return
        self._start_pointing = self._pointing_game_now()
        rank_zero_warn(f"the starting model points at the named object in {self._start_pointing:.3f} of val words")

    def _pointing_game_now(self) -> float:
        """The val pointing game of the model as it is, every process decoding the whole val split."""
        training = self.model.training
        self.model.eval()
        images: list[DecodedImage] = []
        for batch in self.trainer.datamodule.val_dataloader():
            images.extend(self._decode_batch(self.transfer_batch_to_device(batch, self.device, 0)))
        self.model.train(training)
        return grounding_of(images, self._boxes("val"), self.grid_shape)["pointing_game"]

    def on_fit_end(self) -> None:
        callback = self.trainer.checkpoint_callback
        if self._start_pointing is not None and callback is not None and callback.best_model_score == 0:
            rank_zero_warn(
                f"this stage lowered the val pointing game more than model.keep_if_grounded="
                f"{self.hparams.keep_if_grounded} below its start ({self._start_pointing:.3f}) at every validation: "
                f"keep the model it started from, {self.hparams.init_from}"
            )

    def _log_scores(self, stage: str) -> None:
        """Score this epoch's captions once over all ranks (on rank 0) and log `stage/<metric>`."""
        images = gather_across_ranks(self._eval_images, self.trainer.world_size)
        self._eval_images = []
        scores: dict[str, float] = {}
        if self.trainer.is_global_zero:
            scores = score_images(images, self._boxes(stage), self.grid_shape, spice=self.hparams.spice)
        scores = self.trainer.strategy.broadcast(scores, src=0)
        if stage == "val" and self.hparams.keep_if_grounded is not None and "CIDEr" in scores:
            # Without boxes (or a start to compare with) there is no grounding to hold: CIDEr alone.
            holds = self._start_pointing is None or "pointing_game" not in scores
            holds = holds or scores["pointing_game"] >= self._start_pointing - self.hparams.keep_if_grounded
            scores["grounded_CIDEr"] = scores["CIDEr"] if holds else 0.0
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("CIDEr", "BLEU-4"), sync_dist=False)

    def _boxes(self, stage: str) -> dict[int, list[Box]]:
        """Image id -> boxes of the data module's `stage` split ({} without instances), read once."""
        if stage not in self._boxes_by_stage:
            data = self.data
            self._boxes_by_stage[stage] = data.boxes(stage) if data is not None else {}
        return self._boxes_by_stage[stage]

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One dict per image: image_id, path, caption, score."""
        captions = self._captions(batch)
        return [
            {
                "image_id": int(batch["image_ids"][i]),
                "path": batch["paths"][i],
                "caption": self.vocab.decode(caption.tokens),
                "score": caption.score,
            }
            for i, caption in enumerate(captions)
        ]


def _warn_if_grid_repeats(encoder: Encoder, image_size: int) -> None:
    """Warn when the grid is finer than the trunk's map at `image_size`: adaptive pooling then
    copies map cells into several grid cells, and attention over copies adds nothing."""
    rows, cols = encoder.map_size(image_size)
    grid = encoder.config.grid_size
    if grid > min(rows, cols):
        warnings.warn(
            f"grid_size={grid} is finer than the {rows}x{cols} map that {encoder.config.backbone} "
            f"(stages={encoder.config.stages}) gives at image_size={image_size}: only {rows * cols} of the "
            f"{grid * grid} grid cells differ. Raise data.image_size or lower model.encoder.grid_size "
            "(or keep more of the map with model.encoder.stages)",
            stacklevel=3,
        )
