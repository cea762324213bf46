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

import hashlib
import os
import warnings
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from captioner.data.records import Box, ImageRecord
from captioner.errors import CaptionerError
from captioner.evaluation.erasure import erase_words
from captioner.evaluation.scores import DecodedImage, gather_across_ranks, score_images
from captioner.inference.checkpoint import load_weights
from captioner.models import Decoder, DecoderConfig, Encoder, EncoderConfig
from captioner.models.search import Caption, DecodingConfig, decode_captions
from captioner.training.loss import caption_loss
from captioner.training.objectives import (
    HardAttentionConfig,
    MovingAverageBaseline,
    ScstConfig,
    SelfCritical,
    hard_attention_loss,
)
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
    """Encoder + attention decoder, the loss, the optimisers and caption-metric validation.

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
        decoder_lr, encoder_lr: Adam learning rates; the encoder's is used only when fine-tuning.
        weight_decay: Adam weight decay for both groups.
        lr_schedule: "plateau" (× `lr_decay` when val/CIDEr stops improving for `lr_patience`
            epochs, as in common SAT recipes), "cosine" (to 0 over the run) or "constant".
        spice: also compute SPICE (needs Stanford CoreNLP; skipped with a warning when missing).
        validation_erasure: run each word's erasure test (`captioner.evaluation.erasure`) in
            validation too and log `val/erasure_*`; the test stage always does. Off by default: it
            adds from a tenth to over half of validation time (docs/attention.md).
        compile: `torch.compile` the encoder and the decoder's per-step core when the trainer
            sets the model up (the first step then pays for compiling).
        tf32: on CUDA, float32 matmuls and cuDNN convolutions use TensorFloat-32 (GPUs from
            Ampere on; several times faster, about 3 significant digits per product, as PyTorch
            advises for training); false keeps full float32. Applies to the whole process.
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
        decoder_lr: float = 4e-4,
        encoder_lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_schedule: Literal["plateau", "cosine", "constant"] = "plateau",
        lr_decay: float = 0.8,
        lr_patience: int = 8,
        spice: bool = False,
        validation_erasure: bool = False,
        compile: bool = False,
        tf32: bool = True,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        # Checkpoints carry plain data only (they are loaded with weights_only=True).
        encoder, decoder = EncoderConfig.from_dict(encoder), DecoderConfig.from_dict(decoder)
        decoding = DecodingConfig.from_dict(decoding)
        hard_attention = HardAttentionConfig.from_dict(hard_attention)
        scst = None if scst is None else ScstConfig.from_dict(scst)
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
        )
        self.hard_attention, self.scst = hard_attention, scst
        self.vocab = Vocabulary(list(vocab_words))
        self.decoding = decoding
        self.encoder = Encoder(encoder)
        self.decoder = Decoder(decoder, len(self.vocab), self.encoder.out_channels)
        _warn_if_grid_repeats(self.encoder, image_size)
        self.hard_baseline = MovingAverageBaseline(hard_attention.baseline_decay) if hard else None
        self._self_critical: SelfCritical | None = None
        self._eval_images: list[DecodedImage] = []
        self._boxes_by_stage: dict[str, dict[int, list[Box]]] = {}
        self._compiled = False
        self._nonfinite_skips = 0

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the attention grid; α rows are laid out row-major over it."""
        return self.encoder.config.grid_shape

    @property
    def data(self) -> CaptionData | None:
        """The trainer's data module when it keeps the `CaptionData` contract, else None."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return datamodule if isinstance(datamodule, CaptionData) else None

    def encoder_settings(self) -> dict[str, Any]:
        """What decides the encoder's output, as plain data; cached features made with other
        settings do not fit this model. The SHA-256 of its weights also tells two randomly
        initialised encoders (weights null, another seed) apart."""
        digest = hashlib.sha256()
        for name, tensor in self.encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        config = self.encoder.config
        return {
            "backbone": config.backbone,
            "weights": config.weights,
            "stages": config.stages,
            "grid_size": config.grid_size,
            "coord_channels": config.coord_channels,
            "image_size": self.hparams.image_size,
            "encoder_sha256": digest.hexdigest(),
        }

    def setup(self, stage: str) -> None:
        self._boxes_by_stage = {}  # a new fit/validate/test may bring another data module
        precision = str(self.trainer.precision)
        if precision in HALF_WEIGHTS:
            raise CaptionerError(
                f"trainer.precision={precision} keeps the weights themselves in {HALF_WEIGHTS[precision]}, which "
                "captioner does not support (Adam's small updates would round away, and the decoder's "
                f"hand-written time loop is float32); use trainer.precision={precision.split('-')[0]}-mixed, "
                "and `captioner caption --precision bf16` for fast inference"
            )
        if self.trainer.strategy.root_device.type == "cuda":
            use_tf32(self.hparams.tf32)
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
            load_weights(self.hparams.init_from, self.encoder, self.decoder, self.vocab)
        if self.scst is not None and self._self_critical is None:
            data = self.data
            if data is None:
                raise CaptionerError(
                    "model.scst scores sampled captions against each training image's references: "
                    "train with captioner.data.CaptionDataModule (or a data module keeping CaptionData)"
                )
            references = {record.image_id: list(record.captions) for record in data.records("train")}
            self._self_critical = SelfCritical.from_references(references, self.vocab, self.scst, self.decoding.max_len)

    def require_frozen_encoder(self, why: str) -> None:
        """Raise CaptionerError when fine-tuning trains the encoder; `why` says what needs it frozen."""
        if any(p.requires_grad for p in self.encoder.parameters()):
            raise CaptionerError(
                f"model.encoder.fine_tune={self.encoder.config.fine_tune!r} trains the encoder, but {why}"
            )

    def configure_model(self) -> None:
        """With `compile`: compile the encoder and the decoder's per-step core, once. Both are
        compiled in place (no `_orig_mod.` wrapper), so state-dict keys do not change."""
        if self.hparams.compile and not self._compiled:
            self.encoder.compile()
            self.decoder._advance = torch.compile(self.decoder._advance)
            self._compiled = True

    def _features(self, batch: dict[str, Any]) -> torch.Tensor:
        """features (B, P, D): the batch's cached `features`, else the encoder over its `images`."""
        return batch["features"] if "features" in batch else self.encoder(batch["images"])

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """batch: images (B,3,S,S) or features (B,P,D), tokens (B,T) starting with <start>, padded with <pad>."""
        tokens = batch["tokens"]
        features = self._features(batch)
        logs: dict[str, torch.Tensor] = {}
        if self._self_critical is not None:
            parts = self._self_critical.loss(self.decoder, features, batch["image_ids"])
            total = parts.loss
            logs = {"reward": parts.reward, "baseline_reward": parts.baseline, "sample_length": parts.sample_length}
        elif self.hard_baseline is not None:
            out = self.decoder.forward_hard(
                features,
                tokens[:, :-1],
                expected_prob=self.hard_attention.expected_prob,
                with_expected_logits=self.hard_attention.expected_context_baseline,
            )
            total, loss, hard = hard_attention_loss(
                out,
                tokens[:, 1:],
                self.vocab.pad_id,
                self.hparams.attention_lambda,
                self.hard_baseline,
                self.hard_attention,
                self.hparams.attention_entropy,
            )
            logs = {"cross_entropy": loss.cross_entropy, "attention_penalty": loss.attention}
            logs |= {"attention_entropy": hard.entropy, "log_likelihood_baseline": hard.baseline}
        else:
            # Under mixed precision the decoder runs its autograd path with autocast's matmuls.
            logits, alphas = self.decoder(features, tokens[:, :-1])
            loss = caption_loss(
                logits.float(),
                tokens[:, 1:],
                alphas.float(),
                self.vocab.pad_id,
                self.hparams.attention_lambda,
                self.hparams.attention_entropy,
            )
            total = loss.total
            logs = {
                "cross_entropy": loss.cross_entropy,
                "attention_penalty": loss.attention,
                "attention_entropy": loss.entropy,
            }
        if not torch.isfinite(total):
            self._nonfinite(total, batch_idx)
            return None  # Lightning then skips backward and the optimizer step
        batch_size = tokens.shape[0]
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
        """Refuse a checkpoint whose vocabulary is not this run's: its output layer would not fit,
        or worse, fit with every word id meaning another word."""
        words = checkpoint.get("hyper_parameters", {}).get("vocab_words")
        if words is not None and list(words) != self.vocab.words:
            path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
            raise CaptionerError(
                f"{path} was trained with a vocabulary of {len(words)} words, but the data gives one of "
                f"{len(self.vocab)} words{' (same size, other words)' if len(words) == len(self.vocab) else ''}; "
                "use the data (and data.vocab_path) the checkpoint was trained with, or train from scratch "
                "without --ckpt_path"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [{"params": self.decoder.parameters(), "lr": self.hparams.decoder_lr}]
        encoder_params = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": self.hparams.encoder_lr})
        # fused: one kernel for all parameters, several times faster per step on CPU too.
        optimizer = torch.optim.Adam(groups, weight_decay=self.hparams.weight_decay, fused=True)
        schedule = self.hparams.lr_schedule
        if schedule == "constant":
            return {"optimizer": optimizer}
        if schedule == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=self.hparams.lr_decay, patience=self.hparams.lr_patience
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/CIDEr", "strict": False},
            }
        raise CaptionerError(f"model.lr_schedule must be 'plateau', 'cosine' or 'constant', got {schedule!r}")

    # ---------------------------------------------------------------- decoding
    @torch.inference_mode()
    def caption_images(self, images: torch.Tensor, settings: DecodingConfig | None = None) -> list[Caption]:
        """Caption a batch of normalised images (B,3,S,S); one `Caption` per image, α per word.
        `settings` default to the model's `decoding`."""
        return self.caption_features(self.encoder(images), settings)

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, settings: DecodingConfig | None = None) -> list[Caption]:
        """Caption encoder features (B,P,D), e.g. cached ones; one `Caption` per image, α per word."""
        return decode_captions(self.decoder, features, self.vocab, settings or self.decoding)

    def _decode_batch(self, batch: dict[str, Any], erasure: bool) -> list[DecodedImage]:
        features = self._features(batch)
        captions = self.caption_features(features)
        # Each word's erasure test (captioner.evaluation.erasure), scored with the captions.
        tokens = [c.tokens for c in captions]
        erasures = erase_words(self.decoder, features, tokens, self.vocab.start_id) if erasure else [None] * len(tokens)
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

    def _log_scores(self, stage: str) -> None:
        """Score this epoch's captions once over all ranks (on rank 0) and log `stage/<metric>`."""
        images = gather_across_ranks(self._eval_images, self.trainer.world_size)
        self._eval_images = []
        scores: dict[str, float] = {}
        if self.trainer.is_global_zero:
            scores = score_images(images, self._boxes(stage), self.grid_shape, spice=self.hparams.spice)
        scores = self.trainer.strategy.broadcast(scores, src=0)
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
        captions = self.caption_features(self._features(batch))
        return [
            {
                "image_id": int(batch["image_ids"][i]),
                "path": batch["paths"][i],
                "caption": self.vocab.decode(caption.tokens),
                "score": caption.score,
            }
            for i, caption in enumerate(captions)
        ]


# Trainer precisions that cast the weights, not just the matmuls, to 16 bits.
HALF_WEIGHTS = {"bf16-true": "bfloat16", "16-true": "float16"}


def use_tf32(enabled: bool) -> None:
    """TensorFloat-32 (True) or full IEEE float32 (False) for CUDA float32 matmuls and cuDNN
    convolutions, process-wide."""
    mode = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


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
