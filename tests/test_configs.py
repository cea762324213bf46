"""Every shipped YAML config parses against the current CLI, so none can rot."""

from pathlib import Path

import pytest
import yaml

from captioner.commands.train import cli_main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"shapes.yaml", "coco_resnet101.yaml", "coco_karpathy.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    for section in ("model", "data"):
        for key, value in written[section].items():
            assert printed[section][key] == value, f"{config.name}: {section}.{key} not taken"
    assert printed["checkpoint"]["monitor"] == "val/CIDEr"
