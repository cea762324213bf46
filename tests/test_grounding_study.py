"""The grounding study's rows are valid `captioner train` commands that set what they name."""

import importlib
from pathlib import Path

import pytest
import yaml

from benchmarks.studies.grounding_study import FAMILIES, ROWS, SCST_STAGE, WITH_SCST, row_commands
from captioner.commands.data import KINDS
from captioner.training.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("row", sorted(ROWS))
def test_each_row_parses_and_sets_its_overrides(row, tmp_path, capsys):
    *fits, test = row_commands(row, Path("data/study/glyphs"), tmp_path / "run")
    assert test[-2:] == ["--ckpt_path", str(tmp_path / "run" / "checkpoints" / "best.ckpt")]
    assert len(fits) == (2 if row in WITH_SCST else 1)
    if row in WITH_SCST:  # the second stage starts from the first's best checkpoint, and is what is tested
        first_best = str(tmp_path / "run" / "cross_entropy" / "checkpoints" / "best.ckpt")
        assert fits[1][-2:] == ["--model.init_from", first_best] and SCST_STAGE in fits[1] and SCST_STAGE in test
    # The rows name configs from the repository root, where the study runs; tests run elsewhere.
    fit = [str(ROOT / arg) if arg.startswith("configs/") else arg for arg in fits[-1]]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*fit, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["data_dir"] == "data/study/glyphs"
    _, overrides = ROWS[row]
    for key, value in zip(overrides[::2], overrides[1::2]):
        *path, last = key.removeprefix("--").split(".")
        node = printed
        for part in path:  # settings dataclasses and objectives print as class_path + init_args
            node = node[part].get("init_args", node[part])
        if isinstance(node[last], dict):  # a class chosen by name (--model.objective HardAttention)
            assert node[last]["class_path"].rsplit(".", 1)[-1] == value, key
        else:
            assert node[last] == yaml.safe_load(value), key


def test_every_study_family_is_a_synth_kind_at_a_size_it_accepts(tmp_path):
    for family, size in FAMILIES.items():
        module = importlib.import_module(KINDS[family][0])
        out = module.generate(tmp_path / family, train=1, val=0, test=0, size=size)
        assert (out / f"dataset_{family}.json").is_file()
