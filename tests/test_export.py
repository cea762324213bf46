"""`captioner export` and `Captioner.from_pretrained`: safetensors + JSON, bit-identical captions."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.inference.api import Captioner
from captioner.inference.export import CONFIG


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, export folder): a copy of the tiny checkpoint with test metrics beside it, exported."""
    run = tmp_path_factory.mktemp("export_run")
    ckpt = run / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    (run / "metrics.json").write_text(json.dumps({"test/CIDEr": 0.125, "test/BLEU-4": 0.5}))
    out = run / "export"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    return ckpt, out


def test_export_writes_weights_config_card_and_metrics(exported):
    ckpt, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    config = json.loads((out / CONFIG).read_text())
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert config["vocab_words"] == hparams["vocab_words"]
    assert config["image"]["size"] == hparams["image_size"]
    assert config["decoder"] == hparams["decoder"] and config["decoding"] == hparams["decoding"]
    assert config["encoder"]["grid_size"] == hparams["encoder"]["grid_size"] == 4
    card = (out / "README.md").read_text()
    assert "| test/CIDEr | 0.1250 |" in card and "data_dir:" in card and "## Limits" in card
    # The weights are exactly the checkpoint's networks, and the file is smaller than the checkpoint.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = load_file(out / "model.safetensors")
    assert {f"model.{k}" for k in weights} == {k for k in state if k.startswith("model.")}
    assert all(torch.equal(weights[k], state[f"model.{k}"]) for k in weights)
    assert (out / "model.safetensors").stat().st_size < ckpt.stat().st_size


def test_round_trip_gives_identical_captions_scores_and_attention(exported, synth_data, monkeypatch):
    ckpt, out = exported
    images = sorted((synth_data / "test").glob("*.png"))
    original = Captioner.from_checkpoint(ckpt, device="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("loading an export must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = Captioner.from_pretrained(out, device="cpu")
    monkeypatch.undo()

    assert {k: v.tolist() for k, v in loaded.model.state_dict().items()} == {
        k: v.tolist() for k, v in original.model.state_dict().items()
    }
    for beam_size in (1, 3):
        a = original.caption(images, beam_size=beam_size)
        b = loaded.caption(images, beam_size=beam_size)
        assert [r.tokens for r in a] == [r.tokens for r in b]
        assert [r.score for r in a] == [r.score for r in b]
        assert all(torch.equal(x.alphas, y.alphas) for x, y in zip(a, b))
        assert a[0].grid == b[0].grid


def test_model_flag_in_every_command(exported, synth_data, tmp_path, capsys, monkeypatch):
    ckpt, out = exported
    images = sorted(map(str, (synth_data / "test").glob("*.png")))[:3]
    assert main(["caption", "--ckpt", str(ckpt), *images, "--device", "cpu"]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["caption", "--model", str(out), *images, "--device", "cpu"]) == 0
    assert capsys.readouterr().out == from_checkpoint and from_checkpoint.count("\n") == 3

    assert main(["attend", "--model", str(out), images[0], "--out", str(tmp_path / "overlays")]) == 0
    assert list((tmp_path / "overlays").glob("*.png"))

    gallery = tmp_path / "gallery"
    argv = ["gallery", "--model", str(out), "--data", str(synth_data), "--split", "test", "--n", "2"]
    assert main([*argv, "--out", str(gallery)]) == 0
    assert "export on" in (gallery / "index.html").read_text()

    served = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.update(app=app))
    assert main(["serve", "--model", str(out), "--device", "cpu"]) == 0
    with TestClient(served["app"]) as client:
        info = client.get("/v1/model").json()
    assert info["checkpoint"] == "export" and info["metrics"] == {"test/CIDEr": 0.125, "test/BLEU-4": 0.5}


def test_ckpt_and_model_are_exclusive(exported, capsys):
    ckpt, out = exported
    with pytest.raises(SystemExit):
        main(["caption", "--model", str(out), "--ckpt", str(ckpt), "x.png"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_folder_that_is_no_export_is_one_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert main(["caption", "--model", str(tmp_path), "x.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors missing" in err[0]


def test_a_checkpoint_file_given_as_model_is_one_error(exported, capsys):
    ckpt, _ = exported
    assert main(["caption", "--model", str(ckpt), "x.png"]) == 2
    assert "is a file, not an export folder" in capsys.readouterr().err


def test_a_hub_id_without_network_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # so the id is not a local folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionerError, match="not a local folder, and fetching it from the Hugging Face Hub failed"):
        Captioner.from_pretrained("captioner-tests/no-such-model", device="cpu")
