"""Every shipped YAML config parses against the current CLI, so none can rot."""

from pathlib import Path

import pytest
import yaml

from captioner.commands import train
from captioner.dates import train as dates_train

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# Configs of another system than captioning: name -> (its CLI, its checkpoint monitor).
OTHER_SYSTEMS = {"dates.yaml": (dates_train.cli_main, "val/exact_match")}


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"shapes.yaml", "coco_resnet101.yaml", "coco_karpathy.yaml", "dates.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys):
    cli_main, monitor = OTHER_SYSTEMS.get(config.name, (train.cli_main, "val/CIDEr"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    for section in ("model", "data"):
        _assert_taken(printed[section], written[section], f"{config.name}: {section}")
    assert printed["checkpoint"]["monitor"] == monitor


def _assert_taken(printed: dict, written: dict, where: str) -> None:
    """Every key the file sets has its value in the printed config (nested settings key by key)."""
    for key, value in written.items():
        if isinstance(value, dict):
            _assert_taken(printed[key], value, f"{where}.{key}")
        else:
            assert printed[key] == value, f"{where}.{key} not taken"
