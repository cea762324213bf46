"""`captioner caption`: output formats, odd and broken images, bad checkpoints, malicious files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.inference.api import Captioner
from tests.fixtures import write_bad_images, write_malicious_checkpoint, write_odd_images


@pytest.fixture(scope="module")
def test_dir(synth_data) -> Path:
    return synth_data / "test"


def _expected(tiny_checkpoint: Path, paths: list[Path], beam_size: int = 3) -> list[str]:
    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    return [r.caption for r in captioner.caption(paths, beam_size=beam_size)]


def test_plain_output_one_line_per_image(tiny_checkpoint, test_dir, capsys):
    code = main(["caption", "--ckpt", str(tiny_checkpoint), str(test_dir), "--beam-size", "2", "--batch-size", "3"])
    out, err = capsys.readouterr()
    files = sorted(test_dir.glob("*.png"))
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in files]
    assert [line.split("\t")[1] for line in lines] == _expected(tiny_checkpoint, files, beam_size=2)
    assert all(line.split("\t")[1] for line in lines)


def test_json_output(tiny_checkpoint, test_dir, capsys):
    pattern = str(test_dir / "*.png")
    code = main(["caption", "--ckpt", str(tiny_checkpoint), pattern, "--json", "--device", "cpu"])
    out, _ = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    files = sorted(test_dir.glob("*.png"))
    assert code == 0
    assert [r["path"] for r in records] == [str(p) for p in files]
    assert [r["caption"] for r in records] == _expected(tiny_checkpoint, files)
    for record in records:
        assert set(record) == {"path", "caption", "tokens", "score"}
        assert record["tokens"] == record["caption"].split(" ")
        assert isinstance(record["score"], float)


def test_every_image_format_is_captioned(tiny_checkpoint, test_dir, tmp_path, capsys):
    odd = write_odd_images(sorted(test_dir.glob("*.png"))[0], tmp_path / "odd")
    code = main(["caption", "--ckpt", str(tiny_checkpoint), *map(str, odd.values()), "--json"])
    out, err = capsys.readouterr()
    captions = {Path(r["path"]).stem: r["caption"] for r in map(json.loads, out.splitlines())}
    assert code == 0 and err == ""
    assert set(captions) == set(odd)
    assert all(captions.values())
    assert captions["grey16"] == captions["grey"], "16-bit grey must read as the same picture as 8-bit grey"


def test_bad_images_are_reported_and_the_rest_captioned(tiny_checkpoint, test_dir, tmp_path, capsys):
    good = sorted(test_dir.glob("*.png"))[:2]
    bad = write_bad_images(tmp_path / "bad", good[0])
    code = main(["caption", "--ckpt", str(tiny_checkpoint), str(good[0]), *map(str, bad.values()), str(good[1])])
    out, err = capsys.readouterr()
    assert code == 1
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(good[0]), str(good[1])]
    error_lines = err.splitlines()
    assert len(error_lines) == len(bad)
    for name, path in bad.items():
        assert any(str(path) in line for line in error_lines), name
    assert all(line.startswith("error: ") for line in error_lines)
    assert "Traceback" not in err
    reasons = {"empty": "0 bytes", "huge": "too large", "text": "not an image", "truncated": "truncated"}
    for name, reason in reasons.items():
        assert any(str(bad[name]) in line and reason in line for line in error_lines), name


@pytest.mark.parametrize(
    "ckpt_name, content, message",
    [
        ("absent.ckpt", None, "does not exist"),
        ("random.ckpt", os.urandom(2048), "not a PyTorch checkpoint"),
        ("notes.ckpt", b"just some text\n", "not a PyTorch checkpoint"),
    ],
)
def test_bad_checkpoint_is_one_error_line_exit_2(test_dir, tmp_path, capsys, ckpt_name, content, message):
    ckpt = tmp_path / ckpt_name
    if content is not None:
        ckpt.write_bytes(content)
    code = main(["caption", "--ckpt", str(ckpt), str(test_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: checkpoint ")
    assert str(ckpt) in err and message in err


def test_beam_size_zero_names_the_setting(tiny_checkpoint, test_dir, capsys):
    code = main(["caption", "--ckpt", str(tiny_checkpoint), str(test_dir), "--beam-size", "0"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err == "error: --beam-size: beam_size must be an integer >= 1, got 0\n"


def test_malicious_checkpoint_is_refused_in_process(tiny_checkpoint, test_dir, tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = write_malicious_checkpoint(tmp_path / "best.ckpt", target, tiny_checkpoint)
    code = main(["caption", "--ckpt", str(evil), str(test_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "refused" in err and str(evil) in err and err.count("\n") == 1
    assert not target.exists()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "captioner.cli", "caption", *args], capture_output=True, text=True, timeout=300
    )


def test_subprocess_captions_and_refuses_a_malicious_checkpoint(tiny_checkpoint, test_dir, tmp_path):
    image = sorted(test_dir.glob("*.png"))[0]
    done = _run("--ckpt", str(tiny_checkpoint), str(image), "--json")
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["path"] == str(image) and record["caption"] == _expected(tiny_checkpoint, [image])[0]

    target = tmp_path / "pwned"
    evil = write_malicious_checkpoint(tmp_path / "evil.ckpt", target, tiny_checkpoint)
    refused = _run("--ckpt", str(evil), str(image))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: checkpoint ") and "refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not target.exists()


def test_a_reader_that_stops_early_ends_the_run_quietly(tiny_checkpoint, test_dir):
    # `captioner caption ... | head -1`: the pipe closes after the first line.
    command = [sys.executable, "-m", "captioner.cli", "caption", "--ckpt", str(tiny_checkpoint), "--batch-size", "1"]
    with subprocess.Popen([*command, str(test_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        first = process.stdout.readline()
        process.stdout.close()
        err = process.stderr.read().decode()
        code = process.wait(timeout=300)
    assert first.decode().startswith(str(test_dir))
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code in (0, 141)  # 141: stopped by the closed pipe, as shell tools are


def test_top_level_help_describes_the_jobs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "Caption images" in out and "train fit" in out and "captioner/commands" not in out
