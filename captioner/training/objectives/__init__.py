"""Training objectives, one per file, each `objective(model, batch) -> (loss, logs)` (`base.Objective`),
chosen in the YAML by `model.objective.class_path`. The shipped ones are named here, so the
command line also takes them by class name (`--model.objective SelfCritical`):

- `CrossEntropy` (cross_entropy.py): the default; the paper's doubly stochastic term when λ > 0.
- `HardAttention` (hard_attention.py): the paper's hard attention, REINFORCE on its lower bound.
- `SelfCritical` (self_critical.py): self-critical sequence training on CIDEr-D.
"""

from captioner.training.objectives.base import Objective
from captioner.training.objectives.cross_entropy import CrossEntropy
from captioner.training.objectives.hard_attention import HardAttention
from captioner.training.objectives.self_critical import SelfCritical

__all__ = ["CrossEntropy", "HardAttention", "Objective", "SelfCritical"]
