"""The Lightning system: Show, Attend and Tell trained with teacher forcing, judged by free decoding.

    captioner train fit --config configs/shapes.yaml

Training minimises cross-entropy over real tokens plus the doubly stochastic attention
term. Validation and test decode without teacher forcing (greedy or beam) and score the
captions with the COCO caption metrics; under several processes every rank's captions are
gathered and each image is scored exactly once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from captioner.decoding import Caption, decode_captions
from captioner.errors import CaptionerError
from captioner.metrics import GroundingSample, caption_scores, coco_category_words, grounding_scores
from captioner.models import ModelConfig, build_decoder, build_encoder, caption_loss
from captioner.vocab import Vocabulary


class CaptioningModule(pl.LightningModule):
    """Encoder + attention decoder, the loss, the optimisers and caption-metric validation.

    Args:
        vocab_words: index → word, specials first. Linked from the data module by the CLI;
            stored in the checkpoint as plain data so a checkpoint alone can caption.
        backbone, weights, stages, grid_size, fine_tune: the encoder (see `ModelConfig`).
        embed_dim, hidden_dim, attention_dim, dropout, gate: the decoder (see `ModelConfig`).
        attention_lambda: weight λ of the doubly stochastic term Σ_i (1 − Σ_t α_ti)².
        decoder_lr, encoder_lr: Adam learning rates; the encoder's is used only when fine-tuning.
        weight_decay: Adam weight decay for both groups.
        lr_schedule: "plateau" (× `lr_decay` when val/CIDEr stops improving for `lr_patience`
            epochs, as in common SAT recipes), "cosine" (to 0 over the run) or "constant".
        val_beam_size: 1 decodes greedily in validation/test, more uses beam search.
        max_caption_len: longest caption decoded in validation/test/predict, in words.
        image_size: side in pixels the images are resized to; linked from the data module and
            kept in the checkpoint so captioning later prepares images the same way.
        spice: also compute SPICE (needs Stanford CoreNLP; skipped with a warning when missing).
        channels_last: run the encoder in channels-last memory format (faster convolutions on
            GPUs with tensor cores; same numbers).
        compile: `torch.compile` the encoder and the decoder's per-step core when the trainer
            sets the model up (the first step then pays for compiling).
        skip_nonfinite_loss: when a training loss is NaN or infinite, skip that batch (no
            backward, so no weight or Adam-state update; Lightning still counts the step), warn
            and count it in `train/nonfinite_skips`, instead of stopping the run with an error.
            One process only (Lightning cannot skip a step on one rank of several).
    """

    def __init__(
        self,
        vocab_words: list[str],
        backbone: str = "resnet101",
        weights: str | None = None,
        stages: int | None = None,
        grid_size: int = 14,
        fine_tune: str | int = "none",
        embed_dim: int = 512,
        hidden_dim: int = 512,
        attention_dim: int = 512,
        dropout: float = 0.5,
        gate: str = "scalar",
        attention_lambda: float = 1.0,
        decoder_lr: float = 4e-4,
        encoder_lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_schedule: Literal["plateau", "cosine", "constant"] = "plateau",
        lr_decay: float = 0.8,
        lr_patience: int = 8,
        val_beam_size: int = 1,
        max_caption_len: int = 20,
        image_size: int = 224,
        spice: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        skip_nonfinite_loss: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab = Vocabulary.from_words(list(vocab_words))
        self.config = ModelConfig(
            backbone=backbone,
            weights=weights,
            stages=stages,
            grid_size=grid_size,
            fine_tune=fine_tune,
            channels_last=channels_last,
            embed_dim=embed_dim,
            hidden_dim=hidden_dim,
            attention_dim=attention_dim,
            dropout=dropout,
            gate=gate,
        )
        if val_beam_size < 1:
            raise CaptionerError(f"model.val_beam_size must be at least 1, got {val_beam_size}")
        if max_caption_len < 1:
            raise CaptionerError(f"model.max_caption_len must be at least 1, got {max_caption_len}")
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config, len(self.vocab), self.encoder.out_channels)
        self._eval_outputs: list[dict[str, Any]] = []
        self._boxes_by_stage: dict[str, dict[int, list[Any]]] = {}
        self._compiled = False
        self._nonfinite_skips = 0

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the attention grid; α rows are laid out row-major over it."""
        return (self.config.grid_size, self.config.grid_size)

    def encoder_settings(self) -> dict[str, Any]:
        """What decides the encoder's output, as plain data; cached features made with other
        settings do not fit this model. The SHA-256 of its weights also tells two randomly
        initialised encoders (weights null, another seed) apart."""
        digest = hashlib.sha256()
        for name, tensor in self.encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        config = self.config
        return {
            "backbone": config.backbone,
            "weights": config.weights,
            "stages": config.stages,
            "grid_size": config.grid_size,
            "image_size": self.hparams.image_size,
            "encoder_sha256": digest.hexdigest(),
        }

    def setup(self, stage: str) -> None:
        self._boxes_by_stage = {}  # a new fit/validate/test may bring another data module
        if stage == "fit" and self.hparams.skip_nonfinite_loss and self.trainer.world_size > 1:
            raise CaptionerError(
                "model.skip_nonfinite_loss works with one process only (Lightning cannot skip a step on "
                "one rank of several); set it to false or train on one device"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "features_dir", None) is not None:
            self.require_frozen_encoder(
                f"data.features_dir={datamodule.features_dir} holds features of a frozen one; "
                "set model.fine_tune to none or drop data.features_dir"
            )
            datamodule.check_features(self.encoder_settings())

    def require_frozen_encoder(self, why: str) -> None:
        """Raise CaptionerError when fine-tuning trains the encoder; `why` says what needs it frozen."""
        if any(p.requires_grad for p in self.encoder.parameters()):
            raise CaptionerError(f"model.fine_tune={self.config.fine_tune!r} trains the encoder, but {why}")

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

    def _without_autocast(self) -> torch.autocast:
        # The decoder's hand-written time loop and attention take a single dtype, so it runs in
        # float32 under mixed precision too; the encoder, where the FLOPs are, still autocasts.
        return torch.autocast(self.device.type, enabled=False)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """batch: images (B,3,S,S) or features (B,P,D), tokens (B,T) starting with <start>, padded with <pad>."""
        tokens = batch["tokens"]
        features = self._features(batch)
        with self._without_autocast():
            logits, alphas = self.decoder(features.float(), tokens[:, :-1])
            loss = caption_loss(logits, tokens[:, 1:], alphas, self.vocab.pad_id, self.hparams.attention_lambda)
        if not torch.isfinite(loss.total):
            self._nonfinite(loss.total, batch_idx)
            return None  # Lightning then skips backward and the optimizer step
        batch_size = tokens.shape[0]
        self.log("train/loss", loss.total, prog_bar=True, batch_size=batch_size)
        self.log("train/cross_entropy", loss.cross_entropy, batch_size=batch_size)
        self.log("train/attention_penalty", loss.attention, batch_size=batch_size)
        return loss.total

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
    def caption_images(self, images: torch.Tensor, beam_size: int | None = None) -> list[Caption]:
        """Caption a batch of normalised images (B,3,S,S); one `Caption` per image, α per word."""
        return self.caption_features(self.encoder(images), beam_size)

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, beam_size: int | None = None) -> list[Caption]:
        """Caption encoder features (B,P,D), e.g. cached ones; one `Caption` per image, α per word."""
        with self._without_autocast():
            return decode_captions(
                self.decoder,
                features.float(),
                self.vocab,
                beam_size=self.hparams.val_beam_size if beam_size is None else beam_size,
                max_len=self.hparams.max_caption_len,
            )

    def _decode_batch(self, batch: dict[str, Any], keep_attention: bool = False) -> list[dict[str, Any]]:
        """One dict per image: image_id, path, caption, score, references; with `keep_attention`
        also words, alphas (L, P) on the CPU and size (W, H), for the grounding scores."""
        captions = self.caption_features(self._features(batch))
        outputs = []
        for i, caption in enumerate(captions):
            item = {
                "image_id": int(batch["image_ids"][i]),
                "caption": self.vocab.decode(caption.tokens),
                "references": list(batch["references"][i]),
                "path": batch["paths"][i],
                "score": caption.score,
            }
            if keep_attention:
                item["words"] = self.vocab.decode_tokens(caption.tokens)
                item["alphas"] = caption.alphas.float().cpu()
                item["size"] = tuple(batch["sizes"][i].tolist())
            outputs.append(item)
        return outputs

    # ------------------------------------------------------ validation and test
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_outputs.extend(self._decode_batch(batch, keep_attention=bool(self._boxes("val"))))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_outputs.extend(self._decode_batch(batch, keep_attention=bool(self._boxes("test"))))

    def _boxes(self, stage: str) -> dict[int, list[Any]]:
        """Image id -> boxes of the data module's `stage` split ({} without instances), read once."""
        if stage not in self._boxes_by_stage:
            datamodule = getattr(self.trainer, "datamodule", None)
            self._boxes_by_stage[stage] = datamodule.boxes(stage) if hasattr(datamodule, "boxes") else {}
        return self._boxes_by_stage[stage]

    def on_validation_epoch_end(self) -> None:
        self._log_caption_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_caption_metrics("test")

    def _log_caption_metrics(self, stage: str) -> None:
        outputs, self._eval_outputs = self._eval_outputs, []
        scores = self._score_once(outputs, self._boxes(stage))
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("CIDEr", "BLEU-4"), sync_dist=False)

    def _score_once(self, outputs: list[dict[str, Any]], boxes: dict[int, list[Any]]) -> dict[str, float]:
        """Gather every rank's captions, drop the distributed sampler's padding duplicates,
        score on rank 0 and share the result, so every image counts exactly once. With boxes,
        add the grounding scores (pointing game, attention mass in the named object's box)."""
        strategy = self.trainer.strategy
        if self.trainer.world_size > 1:
            gathered: list[list[dict[str, Any]]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = [item for rank_outputs in gathered for item in rank_outputs]
        scores: dict[str, float] = {}
        if self.trainer.is_global_zero:
            by_image = {item["image_id"]: item for item in outputs}
            if by_image:
                scores = caption_scores(
                    {i: item["references"] for i, item in by_image.items()},
                    {i: item["caption"] for i, item in by_image.items()},
                    spice=self.hparams.spice,
                )
                if boxes:
                    scores.update(self._grounding(by_image.values(), boxes))
        return strategy.broadcast(scores, src=0)

    def _grounding(self, items: Iterable[dict[str, Any]], boxes: dict[int, list[Any]]) -> dict[str, float]:
        samples = [
            GroundingSample(
                item["words"], item["alphas"], self.grid_shape, item["size"], boxes.get(item["image_id"], [])
            )
            for item in items
        ]
        categories = sorted({box.category for image_boxes in boxes.values() for box in image_boxes})
        scores = grounding_scores(samples, coco_category_words(categories))
        return {name: float(scores[name]) for name in ("pointing_game", "attention_in_box", "chance_pointing_game")}

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One dict per image: image_id, path, caption, score, references."""
        return self._decode_batch(batch)
