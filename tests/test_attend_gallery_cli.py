"""`captioner attend` and `captioner gallery`: files written, one panel / file per word."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from PIL import Image

import captioner.commands.attend as attend_command
from captioner.cli import main
from captioner.inference.api import Captioner
from captioner.viz.overlay import save_attention


@pytest.fixture(scope="module")
def captioner(tiny_checkpoint) -> Captioner:
    return Captioner.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture
def drawn(monkeypatch) -> list[dict]:
    """Records what `attend` passes to `save_attention` (which still runs)."""
    calls: list[dict] = []

    def spy(image, words, alphas, grid, out_path, **options):
        calls.append(
            dict(
                size=image.size,
                words=list(words),
                rows=alphas.shape[0],
                grid=grid,
                out=Path(out_path),
                notes=options.get("notes"),
            )
        )
        return save_attention(image, words, alphas, grid, out_path, **options)

    monkeypatch.setattr(attend_command, "save_attention", spy)
    return calls


def test_attend_writes_one_figure_per_image_with_a_panel_per_word(
    tiny_checkpoint, captioner, synth_data, tmp_path, drawn, capsys
):
    source = sorted((synth_data / "test").glob("*.png"))[0]
    wide = tmp_path / "in" / "wide.png"  # not the model's 64x64: panels must use the original
    wide.parent.mkdir()
    Image.open(source).resize((96, 48)).save(wide)
    out = tmp_path / "overlays"
    code = main(["attend", "--ckpt", str(tiny_checkpoint), str(source), str(wide), "--out", str(out), "--smooth"])
    printed = capsys.readouterr().out.split()
    assert code == 0
    assert printed == [str(out / f"{source.stem}.png"), str(out / "wide.png")]
    assert all(Path(p).is_file() and Image.open(p).format == "PNG" for p in printed)
    expected = captioner.caption([source, wide], beam_size=3)
    assert [c["words"] for c in drawn] == [r.words for r in expected]
    assert all(c["rows"] == len(c["words"]) > 0 and c["grid"] == (4, 4) for c in drawn)
    assert [c["size"] for c in drawn] == [(64, 64), (96, 48)]


def test_attend_per_word_writes_a_file_per_word(tiny_checkpoint, captioner, synth_data, tmp_path, capsys):
    images = sorted((synth_data / "test").glob("*.png"))[:2]
    out = tmp_path / "overlays"
    code = main(
        [
            "attend",
            "--ckpt",
            str(tiny_checkpoint),
            *map(str, images),
            "--out",
            str(out),
            "--per-word",
            "--beam-size",
            "2",
            "--cols",
            "3",
        ]
    )
    printed = capsys.readouterr().out.split()
    assert code == 0
    for image, result in zip(images, captioner.caption(images, beam_size=2)):
        per_word = sorted((out / image.stem).glob("*.png"))
        assert len(per_word) == len(result.words) > 0
        assert [p.stem.split("_", 1)[1] for p in per_word] == result.words
        assert (out / f"{image.stem}.png").is_file()
        assert set(map(str, per_word)) <= set(printed)
    assert len(printed) == sum(1 + len(r.words) for r in captioner.caption(images, beam_size=2))


def test_attend_reports_bad_images_and_draws_the_rest(tiny_checkpoint, synth_data, tmp_path, capsys):
    good = sorted((synth_data / "test").glob("*.png"))[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "overlays"
    code = main(["attend", "--ckpt", str(tiny_checkpoint), str(broken), str(good), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.split() == [str(out / f"{good.stem}.png")]
    assert str(broken) in captured.err and captured.err.startswith("error: ")


def test_attend_names_images_from_different_folders_apart(tiny_checkpoint, synth_data, tmp_path, capsys):
    source = sorted((synth_data / "test").glob("*.png"))[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "photo.png").write_bytes(source.read_bytes())
    out = tmp_path / "overlays"
    code = main(["attend", "--ckpt", str(tiny_checkpoint), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert code == 0
    assert capsys.readouterr().out.split() == [str(out / "photo.png"), str(out / "photo-2.png")]


def test_gallery_writes_page_with_every_caption(tiny_checkpoint, captioner, synth_data, tmp_path, capsys):
    out = tmp_path / "gallery"
    code = main(
        [
            "gallery",
            "--ckpt",
            str(tiny_checkpoint),
            "--data",
            str(synth_data),
            "--split",
            "test",
            "--n",
            "5",
            "--out",
            str(out),
            "--beam-size",
            "2",
        ]
    )
    assert code == 0
    page = out / "index.html"
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text(encoding="utf-8")
    images = sorted((synth_data / "test").glob("*.png"))[:5]
    for result in captioner.caption(images, beam_size=2):
        assert f'<p class="caption">{html.escape(result.caption)}</p>' in text
    assert text.count("CIDEr ") == 5
    assert text.count("<article>") == 5
    copied = sorted(p.name for p in (out / "images").iterdir())
    assert len([n for n in copied if "attention" in n]) == 5 and len(copied) == 10


def test_gallery_karpathy_format(tiny_checkpoint, synth_data, tmp_path):
    out = tmp_path / "gallery"
    code = main(
        [
            "gallery",
            "--ckpt",
            str(tiny_checkpoint),
            "--data",
            str(synth_data),
            "--format",
            "karpathy",
            "--karpathy-json",
            str(synth_data / "dataset_shapes.json"),
            "--split",
            "val",
            "--n",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "index.html").read_text(encoding="utf-8").count("<article>") == 2


def test_gallery_unknown_split_is_one_error(tiny_checkpoint, synth_data, tmp_path, capsys):
    code = main(
        [
            "gallery",
            "--ckpt",
            str(tiny_checkpoint),
            "--data",
            str(synth_data),
            "--split",
            "nope",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_attend_json_gives_each_words_deletion_test_and_the_panels_show_it(
    tiny_checkpoint, captioner, synth_data, tmp_path, drawn, capsys
):
    import json

    source = sorted((synth_data / "test").glob("*.png"))[1]
    out = tmp_path / "overlays"
    assert main(["attend", "--ckpt", str(tiny_checkpoint), str(source), "--out", str(out), "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    [expected] = captioner.caption(source, beam_size=3, faithfulness=True)
    assert record["caption"] == expected.caption and record["files"] == [str(out / f"{source.stem}.png")]
    assert [w["word"] for w in record["words"]] == expected.words
    for word, tested in zip(record["words"], expected.faithfulness.as_json()):
        assert word["p"] == pytest.approx(tested["p"]) and 0 < word["p"] <= 1
        assert word["p_no_look"] == pytest.approx(tested["p_no_look"])
        assert word["area_attention"] == pytest.approx(tested["area_attention"])
        assert word["faithful"] == tested["faithful"] and 0 < word["spread"] <= 1
    assert drawn[0]["notes"] == expected.faithfulness.notes()
    assert drawn[0]["notes"][0].startswith(f"no look: {record['words'][0]['p']:.2f} → ")
