"""Caption metrics without Java: nltk's tokenizer, no METEOR/SPICE, one warning."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from captioner.evaluation import captions
from captioner.evaluation.captions import JavaMissingWarning, caption_scores, per_image_cider
from captioner.training.cli import cli_main
from tests.fixtures import TINY_MODEL

REFERENCES = {
    1: ["A dog runs on the grass.", "a brown dog (young) running across a field"],
    2: ["Two cats sleep on a sofa!", "two cats sleeping on the owner's couch"],
    3: ['A red circle, above a "blue" square.', "a circle over a square -- nothing else"],
}
CANDIDATES = {1: "a dog running on grass", 2: "Two cats on a couch.", 3: "a red circle above a square"}


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)


def _scored(**kwargs) -> tuple[dict[str, float], list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = caption_scores(REFERENCES, CANDIDATES, **kwargs)
    return scores, [w for w in caught if issubclass(w.category, JavaMissingWarning)]


def test_without_java_scores_all_but_meteor_and_warns_once(no_java):
    scores, warned = _scored(spice=True)
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert 0.0 < scores["BLEU-1"] < 1.0 and scores["CIDEr"] > 0.0 and 0.0 < scores["ROUGE-L"] < 1.0
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "METEOR and SPICE" in message and "Java runtime" in message


def test_treebank_tokens_follow_the_coco_rules():
    tokens = captions._treebank_tokenize({1: 'A red (big) Circle, "above" the dog\'s bowl...\nFin.'})
    assert tokens[1] == "a red -lrb- big -rrb- circle above the dog 's bowl fin"


def test_per_image_cider_needs_no_java(no_java):
    per_image = per_image_cider(REFERENCES, {1: "a dog runs on the grass", 2: "", 3: "."})
    assert per_image[1] > 0.0 and per_image[2] == 0.0 and per_image[3] == 0.0


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java to compare with")
def test_treebank_tokens_match_the_java_tokenizer():
    texts = {(i, k): text for i, refs in REFERENCES.items() for k, text in enumerate([*refs, CANDIDATES[i]])}
    assert captions._treebank_tokenize(texts) == captions._ptb_tokenize(texts)


def test_validation_runs_with_java_hidden(no_java, synth_data, tiny_checkpoint, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(
            [
                "validate",
                "--data.data_dir",
                str(synth_data),
                *TINY_MODEL,
                "--trainer.logger",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path),
                "--ckpt_path",
                str(tiny_checkpoint),
            ]
        )
    metrics = json.loads((tiny_checkpoint.parent / "val_metrics.json").read_text())
    assert {"val/BLEU-1", "val/BLEU-4", "val/ROUGE-L", "val/CIDEr", "val/pointing_game"} <= set(metrics)
    assert not any("METEOR" in name for name in metrics)
    assert len([w for w in caught if issubclass(w.category, JavaMissingWarning)]) == 1
