"""The Lightning system: Show, Attend and Tell trained with teacher forcing, judged by free decoding.

    captioner train fit --config configs/shapes.yaml

Training minimises cross-entropy over real tokens plus the doubly stochastic attention
term. Validation and test decode without teacher forcing (greedy or beam) and score the
captions with the COCO caption metrics; under several processes every rank's captions are
gathered and each image is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import pytorch_lightning as pl
import torch

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

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the attention grid; α rows are laid out row-major over it."""
        return (self.config.grid_size, self.config.grid_size)

    def setup(self, stage: str) -> None:
        self._boxes_by_stage = {}  # a new fit/validate/test may bring another data module

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """batch: images (B,3,S,S), tokens (B,T) starting with <start>, padded with <pad>."""
        tokens = batch["tokens"]
        features = self.encoder(batch["images"])
        logits, alphas = self.decoder(features, tokens[:, :-1])
        loss = caption_loss(
            logits, tokens[:, 1:], alphas, self.vocab.pad_id, self.hparams.attention_lambda
        )
        batch_size = tokens.shape[0]
        self.log("train/loss", loss.total, prog_bar=True, batch_size=batch_size)
        self.log("train/cross_entropy", loss.cross_entropy, batch_size=batch_size)
        self.log("train/attention_penalty", loss.attention, batch_size=batch_size)
        return loss.total

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [{"params": self.decoder.parameters(), "lr": self.hparams.decoder_lr}]
        encoder_params = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": self.hparams.encoder_lr})
        optimizer = torch.optim.Adam(groups, weight_decay=self.hparams.weight_decay)
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
        raise CaptionerError(
            f"model.lr_schedule must be 'plateau', 'cosine' or 'constant', got {schedule!r}"
        )

    # ---------------------------------------------------------------- decoding
    @torch.inference_mode()
    def caption_images(self, images: torch.Tensor, beam_size: int | None = None) -> list[Caption]:
        """Caption a batch of normalised images (B,3,S,S); one `Caption` per image, α per word."""
        return decode_captions(
            self.decoder,
            self.encoder(images),
            self.vocab,
            beam_size=self.hparams.val_beam_size if beam_size is None else beam_size,
            max_len=self.hparams.max_caption_len,
        )

    def _decode_batch(self, batch: dict[str, Any], keep_attention: bool = False) -> list[dict[str, Any]]:
        """One dict per image: image_id, path, caption, score, references; with `keep_attention`
        also words, alphas (L, P) on the CPU and size (W, H), for the grounding scores."""
        captions = self.caption_images(batch["images"])
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
            GroundingSample(item["words"], item["alphas"], self.grid_shape, item["size"], boxes.get(item["image_id"], []))
            for item in items
        ]
        categories = sorted({box.category for image_boxes in boxes.values() for box in image_boxes})
        scores = grounding_scores(samples, coco_category_words(categories))
        return {name: float(scores[name]) for name in ("pointing_game", "attention_in_box", "chance_pointing_game")}

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One dict per image: image_id, path, caption, score, references."""
        return self._decode_batch(batch)
