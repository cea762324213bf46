"""Teacher-forced cross-entropy with the paper's doubly stochastic attention term."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from captioner.errors import CaptionerError
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import DecodingConfig
from captioner.training.loss import caption_loss
from captioner.training.objectives.base import Logs, Objective, batch_annotations
from captioner.vocab import Vocabulary


class CrossEntropy(Objective):
    """Cross-entropy over real tokens + λ Σ_i (1 − Σ_t α_ti)² (`caption_loss`).

    Args:
        attention_lambda: λ, the weight of the doubly stochastic term; 0 by default (it spreads
            attention over the image, docs/grounding_study.md), 1 in the paper.
        attention_entropy: weight of the mean entropy H(α_t) of each step's attention (not in
            the paper; > 0 favours attention on few cells). 0 leaves it out.
    """

    def __init__(self, attention_lambda: float = 0.0, attention_entropy: float = 0.0) -> None:
        super().__init__()
        self.attention_lambda, self.attention_entropy = attention_lambda, attention_entropy
        self.pad_id = 0

    def attach(self, model: ShowAttendTell, vocab: Vocabulary, decoding: DecodingConfig) -> None:
        if model.decoder.config.attention == "hard":
            raise CaptionerError(
                'model.decoder.attention "hard" samples where to look and trains with the hard-attention '
                "objective: set model.objective to captioner.training.objectives.hard_attention.HardAttention"
            )
        self.pad_id = vocab.pad_id

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        tokens = batch["tokens"]
        # Under mixed precision the fused decoder casts its own products; its logits and α are float32.
        logits, alphas = model(batch_annotations(model, batch), tokens[:, :-1])
        parts = caption_loss(
            logits.float(), tokens[:, 1:], alphas.float(), self.pad_id, self.attention_lambda, self.attention_entropy
        )
        logs = {"cross_entropy": parts.cross_entropy, "attention_penalty": parts.attention}
        return parts.total, logs | {"attention_entropy": parts.entropy}
