"""What every training objective is: `objective(model, batch) -> (loss, logs)`.

An objective is chosen in the YAML by `class_path`, its settings are its constructor's
arguments, and it checks its own rules: the settings alone in its constructor, the model it
is given in `attach`. Adding one is a new file with a subclass of `Objective`, named in YAML:

    model:
      objective:
        class_path: captioner.training.objectives.self_critical.SelfCritical
        init_args: {samples: 5, baseline: mean}

Nothing here knows Lightning; `captioner.training.system.CaptioningModule` attaches the
objective once, starts it when fitting starts, and calls it on each training batch.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from captioner.models.captioner import Annotations, ShowAttendTell
from captioner.models.search import DecodingConfig
from captioner.vocab import Vocabulary

Logs = dict[str, Tensor]


def batch_annotations(model: ShowAttendTell, batch: dict[str, Any]) -> Annotations:
    """The batch's `features` (B, P, D) with its `mask` (B, P) if any (cached, or encoded by the
    caller), else the model's encoder over its `images`."""
    if "features" in batch:
        return Annotations(batch["features"], batch.get("mask"))
    return model.encode(batch["images"])


class Objective(nn.Module):
    """A training objective. batch: `tokens` (B, T) starting with <start>, padded with <pad>, and
    `features` (B, P, D) (with `mask` (B, P) when positions are padded) or `images` (B, 3, S, S);
    objectives that need more say so.

    Subclasses keep each constructor argument as an attribute of the same name, so `spec` can
    write the objective into checkpoints as plain data."""

    def attach(self, model: ShowAttendTell, vocab: Vocabulary, decoding: DecodingConfig) -> None:
        """Called once, with the model this objective will train, its vocabulary and decoding
        settings: raise CaptionerError for a model it cannot train, keep what it needs."""

    def start(self, data: Any) -> None:
        """Called when fitting starts, with the trainer's data module (or None)."""

    def forward(self, model: ShowAttendTell, batch: dict[str, Any]) -> tuple[Tensor, Logs]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """{"class_path": ..., "init_args": {...}}, as the YAML names it."""
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {n: getattr(self, n) for n in names}}
