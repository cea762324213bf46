"""Every command line in the README and docs/*.md parses with today's code (tests/docs_cli.py
says how each is parsed without running it), and the commands' own texts say what the code does.

A new page in docs/ is checked without registering it; a new placeholder word goes into
`PLACEHOLDERS` in tests/docs_cli.py.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from captioner.cli import main
from tests.docs_cli import problem, problems
from tests.docs_pages import PAGES, ROOT, is_python, page_id, read


@pytest.fixture(autouse=True)
def _beside_the_configs(tmp_path: Path) -> None:
    """Relative paths in the docs (`--config configs/shapes.yaml`) are written from the checkout's root."""
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)


def command_failures(page: Path) -> list[str]:
    """`page:line: command: what is wrong` for each command line of `page` the code does not accept:
    every line of its shell blocks, and its inline code (as fragments, see tests/docs_cli.py)."""
    parsed = read(page)
    lines = [(line, False) for block in parsed.blocks if not is_python(block) for line in block.logical_lines()]
    lines += [(span, True) for span in parsed.spans]
    lines.sort(key=lambda item: item[0].line)
    found = problems([(code.text, fragment) for code, fragment in lines])
    return [f"{code.where}: `{code.text.strip()}`: {error}" for (code, _), error in zip(lines, found) if error]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_line_parses(page):
    failures = command_failures(page)
    assert not failures, "command lines the code does not accept (fix the page, or the code):\n" + "\n".join(failures)


@pytest.mark.parametrize(
    ("text", "fragment", "complaint"),
    [
        ("captioner train fit --config configs/shapes.yaml --model.optimizer.decoder_lr 0.1", False, None),
        ("captioner train fit --model.decoder_lr 0.1", False, "unrecognized arguments: --model.decoder_lr"),
        ("`--model.compile true`", True, "unrecognized arguments: --model.compile"),
        ("captioner train fit --config nosuch", False, "neither a file nor a recipe name"),
        ("captioner train test --ckpt_path CKPT", True, None),
        ("captioner train fit --config", True, None),
        ("captioner train fit --model.optimizer.decoder_rate", True, "no setting model.optimizer.decoder_rate"),
        ("python train.py fit --trainer.max_epochs three", False, "trainer.max_epochs"),
        ("captioner dates fit --threads x", False, "--threads must be an integer"),
        ("captioner dates translate ... --attention moon.png", True, None),
        ("captioner dates translate 'July 20th 1969' --ckpt d.ckpt --atention a.png", False, "unrecognized arguments"),
        ("captioner data synth --out DIR [--kind shapes|glyphs|scenes]", False, None),
        ("captioner data synth --out DIR --kind shapes|photo", False, "invalid choice: 'photo'"),
        ("captioner attend --scale word", True, None),
        ("captioner attend --scale words", True, "invalid choice: 'words'"),
        ("captioner attend --scale word", False, "required"),
        ("captioner caption|attend|gallery --precision {fp32,bf16,int8}", True, None),
        ("captioner caption|attend|galery --precision fp32", True, "`captioner galery` is no command"),
        ("captioner features extract --config shapes --out f --data.workers 2", False, "--data.workers"),
        ("--beam-size 3", True, None),
        ("--beam-width 3", True, "no command has an option --beam-width"),
        ("--model.decoding.*", True, None),
        ("--model.decodings.*", True, "no settings under `model.decodings`"),
        ("OMP_NUM_THREADS=1 captioner train fit --config shapes --seed_everything S", True, None),
        ("captioner data synth --out DIR --kind KIND", False, "placeholder 'KIND' has no sample value"),
        ("make demo", False, None),
        ("make demos", False, "no make target ['demos']"),
        ("python -m benchmarks.no_such_study --rows ROW", False, "no such module"),
        ("curl -s http://127.0.0.1:8000/healthz", False, None),
    ],
)
def test_the_checker_accepts_what_parses_and_names_what_does_not(text, fragment, complaint):
    found = problem(text.strip("`"), fragment)
    if complaint is None:
        assert found is None
    else:
        assert found is not None and complaint in found


def test_a_failure_names_the_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\nTrain with `captioner train fit --model.decoder.atend_from current`.\n\n"
        "```bash\ncaptioner caption --ckpt best.ckpt photo.jpg \\\n    --beams 3\n```\n"
    )
    failures = command_failures(page)
    assert [failure.split(": `")[0] for failure in failures] == ["page.md:3", "page.md:6"]
    assert "atend_from" in failures[0] and "--beams 3" in failures[1]


@pytest.mark.parametrize("command", ["train", "dates"])
def test_a_training_cli_names_itself_as_typed_and_its_tip_works(command, capsys, monkeypatch):
    monkeypatch.setattr("captioner.commands.dates.use_threads", lambda threads: None)
    with pytest.raises(SystemExit) as exit:
        main([command, "fit", "--bogus", "1"])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert f"usage: captioner {command} [options] fit" in err
    tip = re.search(r"run: (.+) --help", err).group(1)
    assert tip == f"captioner {command} fit"
    with pytest.raises(SystemExit) as exit:
        main([*tip.split()[1:], "--help"])
    assert exit.value.code == 0
    assert f"usage: captioner {command} [options] fit" in capsys.readouterr().out


def test_train_py_names_itself_python_train_py(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--bogus", "1"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert "usage: python train.py [options] fit" in err and "run: python train.py fit --help" in err


def test_synth_help_gives_the_scenes_object_counts_the_code_draws(capsys):
    from captioner.data import scenes

    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    said = re.search(r"scenes: (\w+) to (\w+) objects", help_text)
    assert said, f"`captioner data synth --help` no longer says how many objects a scene has: {help_text}"
    drawn = {len(scenes._sample_things(np.random.default_rng(seed), 96)) for seed in range(60)}
    assert set(range(words[said.group(1)], words[said.group(2)] + 1)) == drawn
