"""The date example: generator, data, a model trained in-session through `captioner dates fit`,
translation (greedy and beam), the attention matrix, and bad input at the command line."""

from __future__ import annotations

import datetime
import json
import random
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.cli import main as cli
from captioner.dates import generate
from captioner.dates.data import DatesDataModule
from captioner.dates.generate import FORMATS, HELD_OUT, TRAINING_FORMATS, examples, split_dates
from captioner.dates.model import TARGET_VOCAB, Translation, load_dates_model
from captioner.dates.plot import save_attention_matrix
from captioner.errors import CaptionerError
from captioner.models.search import DecodingConfig
from tests.fixtures import NO_VALIDATION, QUIET

GREEDY = DecodingConfig(beam_size=1)

# One epoch of 250 steps of batch 128: about 30 s of one CPU core, enough for exact
# translations and sharp attention (the shipped config trains longer, for the ≥ 99 % target).
FIXTURE_TRAINING = [
    "--data.train_size",
    "32000",
    "--trainer.max_time",
    "null",
    *NO_VALIDATION,
    *QUIET,
]
CONFIG = Path(__file__).parents[1] / "configs" / "dates.yaml"


@pytest.fixture(scope="session")
def dates_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a short `captioner dates fit --config configs/dates.yaml` run, in-process."""
    out = tmp_path_factory.mktemp("dates_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is too small to gain from a second thread on a busy machine
    try:
        code = cli(
            [
                "dates",
                "fit",
                "--config",
                str(CONFIG),
                *FIXTURE_TRAINING,
                "--trainer.default_root_dir",
                str(out),
                "--checkpoint.dirpath",
                str(out / "checkpoints"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def dates_model(dates_checkpoint: Path):
    loaded = load_dates_model(dates_checkpoint)
    assert loaded.decoding.beam_size == 1  # configs/dates.yaml's
    return loaded.model


# ---------------------------------------------------------------- generator
def test_ordinals():
    assert [generate.ordinal(d) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 30, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "30th", "31st",
    ]  # fmt: skip


def test_generator_is_seeded_and_spans_the_years():
    pool = split_dates(0, 10, 10)[0]
    assert examples(pool, 50, list(FORMATS), seed=5) == examples(pool, 50, list(FORMATS), seed=5)
    assert examples(pool, 50, list(FORMATS), seed=5) != examples(pool, 50, list(FORMATS), seed=6)
    train, val, test = split_dates(0, 100, 100)
    days = sorted(train + val + test)
    assert datetime.date.fromordinal(days[0]) == datetime.date(1000, 1, 1)
    assert datetime.date.fromordinal(days[-1]) == datetime.date(2099, 12, 31)
    assert len(days) == len(set(days)) == days[-1] - days[0] + 1


def test_every_format_writes_the_date_it_claims():
    """Read each spelling back with an independent parser: the numbers and names in the text
    must give the target date, under the documented numeric conventions."""
    months = {name.lower(): i + 1 for i, name in enumerate(generate.MONTHS)}
    months.update({abbr.lower(): i + 1 for i, abbr in enumerate(generate.MONTH_ABBREVIATIONS)}, sept=9)
    weekdays = [d.lower() for d in generate.WEEKDAYS] + [d.lower() for d in generate.WEEKDAY_ABBREVIATIONS]
    pool = split_dates(1, 10, 10)[0]
    for name in FORMATS:
        for example in examples(pool, 300, [name], seed=2):
            text = example.text.lower()
            words = re.findall(r"[a-z]+|\d+", text)
            month_words = [w for w in words if w in months]
            numbers = [w for w in words if w.isdigit()]
            if month_words:
                (year,) = [n for n in numbers if len(n) == 4]
                (day,) = [n for n in numbers if len(n) != 4]
                date = datetime.date(int(year), months[month_words[0]], int(day))
            elif len(numbers) == 1:  # compact YYYYMMDD
                n = numbers[0]
                date = datetime.date(int(n[:4]), int(n[4:6]), int(n[6:]))
            elif len(numbers[0]) == 4:
                date = datetime.date(*map(int, numbers))
            elif "/" in text:
                month, day, year = map(int, numbers)
                date = datetime.date(year, month, day)
            else:
                day, month, year = map(int, numbers)
                date = datetime.date(year, month, day)
            assert date.isoformat() == example.target, (name, example.text)
            named_days = [w for w in words if w in weekdays]
            if named_days:
                assert weekdays.index(named_days[0]) % 7 == date.weekday(), example.text


def test_no_spelling_means_two_dates():
    seen: dict[str, str] = {}
    for example in examples(split_dates(0, 10, 10)[0], 100_000, list(FORMATS), seed=3):
        assert seen.setdefault(example.text.lower(), example.target) == example.target, example.text


def test_case_commas_and_weekdays_vary():
    texts = [e.text for e in examples(split_dates(0, 10, 10)[0], 3000, list(FORMATS), seed=4)]
    assert any(t.isupper() for t in texts) and any(t.islower() and t[0].isalpha() for t in texts)
    assert any("," in t for t in texts) and any(t.startswith(("Sunday", "Mon", "TUE", "wed")) for t in texts)
    assert any(re.search(r"\d(st|nd|rd|th)\b", t, re.IGNORECASE) for t in texts)


def test_data_splits_hold_out_formats_and_dates():
    data = DatesDataModule(seed=0, train_size=20_000, val_size=500, test_size=1000)
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    assert {e.format for e in train} == set(TRAINING_FORMATS) >= {e.format for e in val}
    assert {e.format for e in test} == set(FORMATS)
    assert len({e.target for e in test}) == 1000  # each test date once
    train_dates = {e.target for e in train}
    assert not train_dates & {e.target for e in test} and not train_dates & {e.target for e in val}
    assert not {e.format for e in train} & set(HELD_OUT)
    batch = data.collate(test[:4])
    assert batch["inputs"].shape == (4, max(len(e.text) for e in test[:4]))
    assert batch["targets"].shape == (4, 12)
    assert "".join(TARGET_VOCAB.decode_tokens(batch["targets"][0])) == test[0].target


def test_data_sizes_are_checked():
    with pytest.raises(CaptionerError, match="data.train_size must be at least 1"):
        DatesDataModule(train_size=0)


# ----------------------------------------------------------- trained model
@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_two_examples_translate_exactly(dates_model, beam_size):
    results = dates_model.translate(["July 20th 1969", "23 April, 1564"], DecodingConfig(beam_size=beam_size))
    assert [r.output for r in results] == ["1969-07-20", "1564-04-23"]
    for result in results:
        assert result.alphas.shape == (10, len(result.text))
        assert torch.allclose(result.alphas.sum(-1), torch.ones(10), atol=1e-5)


def test_trained_model_is_accurate_on_held_out_dates(dates_model):
    """The short fixture run is not the 99 % run (that one is measured with the shipped
    config); it must still get most unseen dates right, held-out formats included."""
    test = DatesDataModule(seed=0, train_size=1, val_size=1, test_size=300).splits["test"]
    results = dates_model.translate([e.text for e in test], GREEDY)
    right = [r.output == e.target for r, e in zip(results, test)]
    assert sum(right) / len(right) >= 0.9
    held_out = [ok for ok, e in zip(right, test) if e.format in HELD_OUT]
    assert len(held_out) > 30 and sum(held_out) / len(held_out) >= 0.85


def _words(text: str) -> list[range]:
    return [range(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


@pytest.mark.parametrize(
    "text, sources",
    [
        # Output YYYY-MM-DD: which input word each digit comes from (year, month, day).
        ("July 20th 1969", (2, 0, 1)),
        ("23 April, 1564", (2, 1, 0)),
        ("Sunday the 20th of July 1969", (5, 4, 2)),
    ],
)
def test_output_characters_look_at_the_word_they_come_from(dates_model, text, sources):
    """argmax_t' α⟨t, t'⟩ of each output digit lies in its source word, for ≥ 90 % of the
    digits (the dashes come from no word and are not counted)."""
    [result] = dates_model.translate([text], GREEDY)
    words = _words(result.text)
    year, month, day = (words[i] for i in sources)
    expected = [year] * 4 + [None] + [month] * 2 + [None] + [day] * 2
    looked = result.alphas.argmax(dim=-1).tolist()
    hits = [looked[t] in span for t, span in enumerate(expected) if span is not None]
    assert sum(hits) / len(hits) >= 0.9, (text, result.output, looked)


def test_impossible_date_is_copied_and_flagged(dates_model):
    """The model copies what it reads: 31 February 2001 becomes 2001-02-31, which the
    translation marks as not a calendar date (the CLI warns and exits 1)."""
    [result] = dates_model.translate(["31 February 2001"], GREEDY)
    assert result.output == "2001-02-31" and not result.valid
    [real] = dates_model.translate(["28 February 2001"], GREEDY)
    assert real.output == "2001-02-28" and real.valid


def test_model_refuses_bad_input(dates_model):
    with pytest.raises(CaptionerError, match="empty"):
        dates_model.translate(["   "], GREEDY)
    with pytest.raises(CaptionerError, match="10000 characters long; this model reads at most 64"):
        dates_model.translate(["1" * 10_000], GREEDY)
    with pytest.raises(CaptionerError, match="never saw in training: 'é☃'"):
        dates_model.translate(["20 juillet ☃ 1969 é"], GREEDY)


# ------------------------------------------------------------ command line
def test_translate_command_prints_iso_dates_and_draws_attention(dates_checkpoint, tmp_path, capsys):
    out = tmp_path / "moon.png"
    code = cli(["dates", "translate", "July 20th 1969", "--ckpt", str(dates_checkpoint), "--attention", str(out)])
    assert code == 0
    assert capsys.readouterr().out == "1969-07-20\n"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height > 100
    code = cli(["dates", "translate", "July 20th 1969", "23 April, 1564", "--ckpt", str(dates_checkpoint)])
    assert code == 0 and capsys.readouterr().out == "1969-07-20\n1564-04-23\n"
    code = cli(["dates", "translate", "23 April, 1564", "--beam-size", "4", "--ckpt", str(dates_checkpoint)])
    assert code == 0 and capsys.readouterr().out == "1564-04-23\n"


@pytest.mark.parametrize(
    "date, message",
    [
        ("", "error: the date is empty"),
        ("1" * 10_000, "error: the date is 10000 characters long"),
        ("20 Jul 1969 ☃", "error: '20 Jul 1969 ☃' has characters the model never saw in training: '☃'"),
    ],
    ids=["empty", "10000 characters", "unseen characters"],
)
def test_translate_command_refuses_bad_input(dates_checkpoint, capsys, date, message):
    assert cli(["dates", "translate", date, "--ckpt", str(dates_checkpoint)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(message) and captured.err.count("\n") == 1


def test_translate_command_checks_its_flags(dates_checkpoint, tmp_path, capsys):
    ckpt = ["--ckpt", str(dates_checkpoint)]
    assert cli(["dates", "translate", "July 20th 1969", "--beam-size", "0", *ckpt]) == 2
    assert "--beam-size: beam_size must be an integer >= 1" in capsys.readouterr().err
    assert cli(["dates", "translate", "July 20th 1969", "--attention", str(tmp_path / "a.jpg"), *ckpt]) == 2
    assert "must name a .png file" in capsys.readouterr().err


def test_translate_command_warns_about_impossible_dates(dates_checkpoint, capsys):
    assert cli(["dates", "translate", "31 February 2001", "--ckpt", str(dates_checkpoint)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "2001-02-31\n"
    assert captured.err.startswith("warning: '2001-02-31' (from '31 February 2001') is not a calendar date")


def test_translate_command_refuses_a_captioning_checkpoint(tmp_path, capsys):
    path = tmp_path / "captioning.ckpt"
    torch.save({"hyper_parameters": {"vocab_words": ["<pad>"], "image_size": 64}, "state_dict": {}}, path)
    assert cli(["dates", "translate", "July 20th 1969", "--ckpt", str(path)]) == 2
    assert "is not a dates model" in capsys.readouterr().err


def test_dates_command_needs_a_subcommand(capsys):
    assert cli(["dates"]) == 2
    assert "name a subcommand" in capsys.readouterr().err
    assert cli(["dates", "translat"]) == 2
    assert cli(["dates", "--help"]) == 0
    assert "captioner dates translate" in capsys.readouterr().out


def test_attention_matrix_png(tmp_path):
    alphas = torch.eye(10, 14)
    result = Translation("July 20th 1969", "1969-07-20", alphas, 0.0)
    path = save_attention_matrix(result, tmp_path / "sub" / "m.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
    with pytest.raises(CaptionerError, match="cannot write the attention matrix"):
        save_attention_matrix(result, Path("/proc/no/such/dir/m.png"))


def test_random_module_is_not_touched():
    """The generator draws only from its own seeded Random: global random state is left alone."""
    random.seed(7)
    before = random.random()
    random.seed(7)
    examples(split_dates(0, 10, 10)[0], 100, list(FORMATS), seed=1)
    assert random.random() == before


def test_dates_test_writes_exact_match_per_format(dates_checkpoint, tmp_path):
    """`captioner dates test` decodes the held-out split and writes metrics.json beside the
    checkpoint: overall, per format, and for the training and held-out formats."""
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(dates_checkpoint.read_bytes())
    args = ["--config", str(CONFIG), "--ckpt_path", str(ckpt), "--data.train_size", "32000", "--data.test_size", "200"]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "checkpoints")]
    assert cli(["dates", "test", *args]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {
        "test/exact_match",
        "test/exact_match/held_out_formats",
        "test/exact_match/training_formats",
        *(f"test/exact_match/{name}" for name in FORMATS),
    }
    assert metrics["test/exact_match"] >= 0.9
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
