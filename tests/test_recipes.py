"""Recipes by name (`--config shapes`), from any folder, and the default recipe of `fit`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from captioner import recipes
from captioner.cli import main
from captioner.training.cli import cli_main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_every_config_is_a_recipe_by_its_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = recipes.recipes()
    assert set(found) == {p.stem for p in CONFIGS.glob("*.yaml")}
    for name, path in found.items():
        assert Path(recipes.resolve(name)).read_text() == (CONFIGS / f"{name}.yaml").read_text()
        assert path.is_absolute()


def test_a_path_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").write_text("seed_everything: 1\n")  # a file named like a recipe wins
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "shapes.yaml").write_text("seed_everything: 2\n")
    (tmp_path / "x.yaml").write_text("")  # empty: the defaults
    assert recipes.resolve("shapes") == "shapes"
    assert recipes.resolve("mine/shapes.yaml") == "mine/shapes.yaml"
    assert recipes.resolve_config_args(["fit", "--config=dates", "--config", "x.yaml"]) == [
        "fit",
        f"--config={CONFIGS / 'dates.yaml'}",
        "--config",
        "x.yaml",
    ]


def test_recipe_by_name_from_another_folder(synth_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", "shapes", "--data.data_dir", str(synth_data), "--trainer.logger", "false"], run=False)
    # configs/shapes.yaml's sizes, not the model's defaults.
    assert cli.model.hparams.encoder["grid_size"] == 8
    assert cli.model.hparams.decoder["hidden_dim"] == 256


def test_unknown_recipe_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "fit", "--config", "no_such_recipe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 'no_such_recipe' is neither a file nor a recipe")
    assert "small_scratch" in err[0]


def test_recipes_command_lists_and_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for path in CONFIGS.glob("*.yaml"):
        assert f"{path.stem} " in listing
    assert main(["recipes", "dates"]) == 0
    assert capsys.readouterr().out == (CONFIGS / "dates.yaml").read_text()


@pytest.mark.timeout(300)
def test_bare_dates_fit_trains_with_the_dates_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(
        [
            "dates",
            "fit",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--checkpoint.monitor",
            "null",
            "--trainer.enable_progress_bar",
            "false",
            "--data.train_size",
            "256",
        ]
    )
    assert status == 0
    assert capsys.readouterr().err.count("no --config given: using the dates recipe") == 1
    # The recipe's folders (relative to the working folder) and sizes, not Lightning's defaults.
    checkpoint = torch.load(tmp_path / "runs/dates/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["decoder"]["hidden_dim"] == 128


def test_bare_train_fit_uses_the_shapes_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:  # --print_config prints the resolved settings and stops
        main(["train", "fit", "--print_config"])
    assert done.value.code in (0, None)
    out, err = capsys.readouterr()
    assert err.count("no --config given: using the shapes recipe") == 1
    printed = yaml.safe_load(out)
    assert printed["model"]["decoder"]["init_args"]["hidden_dim"] == 256
    assert printed["data"]["data_dir"] == "data/shapes"


def test_an_empty_inline_config_means_no_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["train", "fit", "--config", "{}", "--print_config"])
    out, err = capsys.readouterr()
    assert "no --config given" not in err
    assert yaml.safe_load(out)["model"]["decoder"]["init_args"]["hidden_dim"] == 512  # DecoderConfig's default
