"""Every shipped YAML config builds its model and data module against the current code, so
none can rot: a misspelt backbone or setting fails here, not at the start of a long run."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from captioner.errors import CaptionerError
from captioner.training.cli import cli_main

ALL_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
DATES_CONFIG = Path(__file__).parents[1] / "configs" / "dates.yaml"  # another system: tested below
CONFIGS = [config for config in ALL_CONFIGS if config != DATES_CONFIG]
# Configs that are layered over another one (`--config BASE --config OVERLAY`).
LAYERED_OVER = {"small_scratch_scst.yaml": "small_scratch.yaml", "small_scratch_hard.yaml": "small_scratch.yaml"}


def _merged(base: dict, overlay: dict) -> dict:
    """What jsonargparse does with two --config files: mappings merge key by key, the rest is replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        both_mappings = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if both_mappings else value
    return merged


def _under_split_names(data: dict, synth_data: Path, root: Path) -> Path:
    """The synthetic set's splits linked into `root` under the split names the config's data
    section gives its roles (COCO layout), so the config is read with its own names. A name two
    roles share holds the first role's split."""
    (root / "annotations").mkdir(parents=True)
    for role in ("train", "val", "test"):
        name = data.get(role, {}).get("name", role)
        if not (root / name).exists():
            (root / name).symlink_to(synth_data / role, target_is_directory=True)
            for kind in ("captions", "instances"):
                (root / "annotations" / f"{kind}_{name}.json").symlink_to(
                    synth_data / "annotations" / f"{kind}_{role}.json"
                )
    return root


def _instantiate(config: Path, synth_data: Path, tmp_path: Path):
    """The config's model, data module and trainer, on the tiny synthetic set: no weights to
    download, no training. The recipe's own settings are kept; only paths are redirected."""
    configs = [config]
    if config.name in LAYERED_OVER:
        configs.insert(0, config.with_name(LAYERED_OVER[config.name]))
    written: dict = {}
    for path in configs:
        written = _merged(written, yaml.safe_load(path.read_text()))
    data = written.get("data", {})
    data_dir = (
        _under_split_names(data, synth_data, tmp_path / "data") if data.get("format", "coco") == "coco" else synth_data
    )
    overrides = ["--data.data_dir", str(data_dir), "--data.num_workers", "0", "--model.encoder.weights", "null"]
    if data.get("format") == "karpathy":
        overrides += ["--data.karpathy_json", str(synth_data / "dataset_shapes.json")]
    if "vocab_path" in data:
        overrides += ["--data.vocab_path", str(tmp_path / "vocab.json")]
    overrides += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    overrides += ["--checkpoint.dirpath", str(tmp_path / "checkpoints")]
    config_args = [arg for path in configs for arg in ("--config", str(path))]
    return written, cli_main([*config_args, *overrides], run=False)


def test_configs_are_shipped():
    assert {p.name for p in ALL_CONFIGS} >= {
        "shapes.yaml",
        "coco_resnet101.yaml",
        "coco_karpathy.yaml",
        "dates.yaml",
        "small_scratch.yaml",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_builds_the_model_and_data_it_names(config, synth_data, tmp_path):
    written, cli = _instantiate(config, synth_data, tmp_path)
    model, data = cli.model, cli.datamodule
    built_sections = {
        "encoder": model.model.encoder.config,
        "decoder": model.model.decoder.config,
        "optimizer": model.optimizer_config,
    }
    for section, built in built_sections.items():
        for key, value in written["model"].get(section, {}).items():
            if key != "weights":  # redirected: no downloads here
                assert getattr(built, key) == value, f"{config.name}: model.{section}.{key} not taken"
    for key, value in written["model"].get("decoding", {}).items():
        assert getattr(model.decoding, key) == value
    objective = written["model"].get("objective", {"class_path": "captioner.training.objectives.CrossEntropy"})
    assert isinstance(model.objective, _named_class(objective["class_path"]))
    # A layer naming another class keeps only the base's init_args that class takes.
    taken = inspect.signature(type(model.objective)).parameters
    for key, value in objective.get("init_args", {}).items():
        if key in taken:
            assert getattr(model.objective, key) == value, f"{config.name}: model.objective.{key} not taken"
    assert model.hparams.image_size == data.image_size == written["data"]["image_size"]
    assert model.model.decoder.vocab_size == len(data.vocab) > 4
    for role in ("train", "val", "test"):
        assert data.split(role).name == written["data"].get(role, {}).get("name", role)
        assert data.records(role)  # the data module reads the split under the config's name
    assert cli.trainer.max_epochs == written["trainer"]["max_epochs"]
    assert model.hparams.init_from == written["model"].get("init_from")


def _named_class(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_a_config_naming_a_missing_backbone_fails(synth_data, tmp_path):
    broken = tmp_path / "broken.yaml"
    text = (Path(__file__).parents[1] / "configs" / "shapes.yaml").read_text()
    broken.write_text(text.replace("backbone: resnet18", "backbone: resnet1010"))
    with pytest.raises(CaptionerError, match="backbone='resnet1010' is not supported"):
        _instantiate(broken, synth_data, tmp_path)


def test_small_scratch_runs_its_whole_schedule_with_the_grounding_settings(synth_data, tmp_path):
    from pytorch_lightning.callbacks import EarlyStopping

    _, cli = _instantiate(Path(__file__).parents[1] / "configs" / "small_scratch.yaml", synth_data, tmp_path)
    # A caption-statistics plateau must not end the run before attention has learned to look.
    assert not [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert cli.model.optimizer_config.lr_schedule == "cosine"
    assert cli.trainer.checkpoint_callback.monitor == "val/CIDEr"
    encoder = cli.model.model.encoder.config
    assert (encoder.weights, encoder.fine_tune, encoder.stages, encoder.coord_channels) == (None, "all", 2, False)
    assert cli.model.objective.attention_lambda == 0
    assert cli.trainer.max_epochs > 3  # the demo's budget would stop short of converging


def test_small_scratch_draws_each_cell_where_its_feature_comes_from(synth_data, tmp_path):
    """Grounding and overlays put cell i's attention at (i + 0.5)·S/grid; the recipe's trunk must
    compute that cell's feature from a region centred there (within the half pixel of rounding)."""
    _, cli = _instantiate(Path(__file__).parents[1] / "configs" / "small_scratch.yaml", synth_data, tmp_path)
    encoder, size = cli.model.model.encoder, cli.model.hparams.image_size
    drawn = [(i + 0.5) * size / encoder.grid_size for i in range(encoder.grid_size)]
    assert encoder.feature_centres(size) == pytest.approx(drawn, abs=0.5)


def test_dates_config_builds_its_model_and_data(tmp_path):
    from captioner.dates.system import cli_main as dates_cli_main

    written = yaml.safe_load(DATES_CONFIG.read_text())
    # Small splits: building the data module generates them.
    sizes = ["--data.train_size", "2000", "--data.val_size", "10", "--data.test_size", "10"]
    paths = ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    cli = dates_cli_main(["--config", str(DATES_CONFIG), *sizes, *paths], run=False)
    model, data = cli.model, cli.datamodule
    for section, built in (("encoder", model.model.encoder.config), ("decoder", model.model.decoder.config)):
        for key, value in written["model"][section].items():
            assert getattr(built, key) == value, f"dates.yaml: model.{section}.{key} not taken"
    for key, value in written["model"]["decoding"].items():
        assert getattr(model.decoding, key) == value
    assert model.hparams.lr == written["model"]["lr"]
    assert model.objective.attention_lambda == 0.0  # the dates default: no doubly stochastic term
    assert model.hparams.input_chars == data.input_chars and len(data.input_chars) > 40
    assert cli.trainer.max_epochs == written["trainer"]["max_epochs"]
    assert cli.trainer.checkpoint_callback.monitor == "val/exact_match"
