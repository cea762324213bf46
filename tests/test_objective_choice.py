"""Objectives chosen by class_path: a new one is a file and a YAML entry, and checkpoints written
when flags chose the objective still read."""

from __future__ import annotations

import pytest
import torch
import yaml

from captioner.errors import CaptionerError
from captioner.inference.checkpoint import upgrade_hparams
from captioner.training.cli import cli_main
from tests.fixtures import NO_VALIDATION, TINY_MODEL

# A whole objective, written as a user would add one: this file and the YAML below, nothing else.
LABEL_SMOOTHING = '''
import torch.nn.functional as F

from captioner.training.objectives.base import Objective, batch_annotations


class LabelSmoothed(Objective):
    """Cross-entropy against targets smoothed towards the uniform distribution."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        self.smoothing = smoothing

    def attach(self, model, vocab, decoding):
        self.pad_id = vocab.pad_id

    def forward(self, model, batch):
        tokens = batch["tokens"]
        logits, _ = model(batch_annotations(model, batch), tokens[:, :-1])
        targets = tokens[:, 1:].flatten()
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets, ignore_index=self.pad_id, label_smoothing=self.smoothing
        )
        return loss, {"smoothed_cross_entropy": loss}
'''
PLUGIN_CONFIG = {"model": {"objective": {"class_path": "my_objectives.LabelSmoothed", "init_args": {"smoothing": 0.2}}}}


def test_a_new_objective_is_one_file_and_yaml(synth_data, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_objectives.py").write_text(LABEL_SMOOTHING)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "smoothed.yaml"
    config.write_text(yaml.safe_dump(PLUGIN_CONFIG))
    common = ["--data.data_dir", str(synth_data), *TINY_MODEL, *NO_VALIDATION]
    common += ["--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "checkpoints")]
    cli = cli_main(["fit", *common, "--config", str(config), "--trainer.max_steps", "2"])
    assert type(cli.model.objective).__name__ == "LabelSmoothed" and cli.model.objective.smoothing == 0.2
    assert torch.isfinite(cli.trainer.callback_metrics["train/smoothed_cross_entropy"])
    best = tmp_path / "checkpoints" / "best.ckpt"
    stored = torch.load(best, weights_only=True)["hyper_parameters"]["objective"]
    assert stored == {"class_path": "my_objectives.LabelSmoothed", "init_args": {"smoothing": 0.2}}

    # A checkpoint is data anyone may hand us: the class it names is imported only when it is
    # captioner's own or the config names it too.
    test = ["test", *common, "--ckpt_path", str(best)]
    with pytest.raises(CaptionerError, match="objective my_objectives.LabelSmoothed, which is not captioner's"):
        cli_main(test)
    cli_main([*test, "--config", str(config)])
    assert (best.parent / "metrics.json").is_file()


OLD_WEIGHTS = {"attention_lambda": 0.0, "attention_entropy": 0.03}


@pytest.mark.parametrize(
    ("flags", "objective"),
    [
        ({"scst": None}, ("cross_entropy.CrossEntropy", OLD_WEIGHTS)),
        (
            {"scst": None, "hard_attention": {"baseline": "expected_context"}, "decoder": {"attention": "hard"}},
            ("hard_attention.HardAttention", {**OLD_WEIGHTS, "baseline": "expected_context"}),
        ),
        (
            {"scst": {"samples": 5, "baseline": "mean"}, "decoder": {"attention": "hard"}},
            ("self_critical.SelfCritical", {"samples": 5, "baseline": "mean"}),
        ),
    ],
    ids=["cross_entropy", "hard_attention", "scst_after_hard"],
)
def test_old_objective_flags_become_the_objective_they_chose(flags, objective):
    old = {"vocab_words": ["<pad>"], "keep_if_grounded": 0.02, **OLD_WEIGHTS, **flags}
    new = upgrade_hparams(old)
    class_path, init_args = objective
    assert new["objective"] == {"class_path": "captioner.training.objectives." + class_path, "init_args": init_args}
    assert not {"scst", "hard_attention", "keep_if_grounded", *OLD_WEIGHTS} & set(new)
    assert upgrade_hparams(new) == new  # today's layout is left as it is
