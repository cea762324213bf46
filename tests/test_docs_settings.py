"""Where the docs state a default, the number comes from the code.

- docs/training.md's settings table is the one `python -m tests.settings_table` makes, and that
  table lists exactly the settings `captioner train --print_config` shows, with its values;
- every default stated in prose is in `CLAIMS`: the sentence as the page has it, with the
  default written `{key}` (filled in from the code, so the page must say what the code does),
  or `requires` for claims in words ("the paper's order stays the default").

When a default changes, the failure names the page and line to reword. A new sentence that
states a default joins `CLAIMS` (see `default_of` for the keys it takes).
"""

from __future__ import annotations

import inspect
import pydoc
import re
from typing import Any

import pytest

from captioner.cli import command_parser
from captioner.models import search
from tests import settings_table
from tests.docs_cli import cli_settings
from tests.docs_pages import ROOT

LIMITS = "captioner.models.search.DECODING_LIMITS"
HARD = "captioner.training.objectives.HardAttention"
SERVE = "captioner.serve.limits.Limits"

# (page, the sentence with `{key}` for each default it states, {key: the value its words imply})
CLAIMS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "README.md",
        f"Beam size is at most {{{LIMITS}[beam_size]}} and caption length at most {{{LIMITS}[max_len]}} words",
        {},
    ),
    (
        "README.md",
        "`captioner train fit` alone trains `{captioner.commands.train.DEFAULT_RECIPE}`, "
        "`captioner dates fit` alone trains `{captioner.commands.dates.DEFAULT_RECIPE}`",
        {},
    ),
    (
        "README.md",
        f"at most 80 MP decode at once across requests (503 with Retry-After beyond a {{{SERVE}.max_decode_wait_s}} s",
        {f"{SERVE}.max_pixels_in_flight": 80_000_000},
    ),
    ("docs/objectives.md", "(`attention_lambda`, λ = {model.objective.attention_lambda} by default;", {}),
    ("docs/objectives.md", "(`attention_entropy`, {model.objective.attention_entropy} by default;", {}),
    (
        "docs/objectives.md",
        f"REINFORCE with a moving-average baseline (decay {{{HARD}(baseline_decay)}}, `baseline_decay`), an entropy "
        f"bonus λ_e (`entropy_lambda`, default {{{HARD}(entropy_lambda)}})",
        {f"{HARD}(baseline)": "moving_average"},
    ),
    ("docs/objectives.md", f"with probability {{{HARD}(expected_prob)}} (`expected_prob`)", {}),
    ("docs/objectives.md", f"`reinforce_lambda`, default {{{HARD}(reinforce_lambda)}};", {}),
    ("docs/objectives.md", "`--model.decoder.hard_decoding {model.decoder.hard_decoding}` (default,", {}),
    ("docs/model.md", "or 0 (`initial_state: {model.decoder.initial_state}`, the default)", {}),
    ("docs/model.md", "so `attend_from: {model.decoder.attend_from}` is the default", {}),
    (
        "docs/grounding_study.md",
        "`attend_from: {model.decoder.attend_from}`, `initial_state: {model.decoder.initial_state}`, "
        "`align_grid: {model.encoder.align_grid}`, λ = {model.objective.attention_lambda}",
        {},
    ),
    ("docs/training.md", "`runtime.tf32` (default {runtime.tf32})", {}),
    ("docs/reliability.md", "With the default `{model.optimizer.lr_schedule}` schedule", {}),
    (
        "docs/reliability.md",
        f"`--beam-size` over {{{LIMITS}[beam_size]}} or `--max-len` over {{{LIMITS}[max_len]}}",
        {},
    ),
    ("docs/reliability.md", f"(beam size {{{LIMITS}[beam_size]}}, caption length {{{LIMITS}[max_len]}} words)", {}),
    ("docs/reliability.md", "one side over {captioner.commands.attend.MAX_DRAWN_ASPECT}× the other", {}),
    ("docs/reliability.md", f"a filename over {{{SERVE}.max_filename_chars}} characters", {}),
    ("docs/reliability.md", "An upload over `Limits.max_pixels` (40 MP)", {f"{SERVE}.max_pixels": 40_000_000}),
    ("docs/reliability.md", "`Limits.max_pixels_in_flight`, 80 MP", {f"{SERVE}.max_pixels_in_flight": 80_000_000}),
    ("docs/reliability.md", f"`Limits.max_decode_wait_s` ({{{SERVE}.max_decode_wait_s}} s)", {}),
    (
        "docs/serving.md",
        "`--port {captioner serve --port}`, `--device {captioner serve --device}`, `--max-batch "
        "{captioner serve --max-batch}` and `--max-wait-ms {captioner serve --max-wait-ms}`",
        {},
    ),
    (
        "docs/serving.md",
        "`--max-images {captioner serve --max-images}`, `--max-request-mb {captioner serve --max-request-mb}`",
        {},
    ),
    (
        "docs/serving.md",
        "body over {captioner serve --max-request-mb} MiB → 413; more than {captioner serve --max-images} images → 413",
        {},
    ),
    (
        "docs/serving.md",
        f"beam_size outside 1..{{{LIMITS}[beam_size]}}, max_len outside 1..{{{LIMITS}[max_len]}}",
        {},
    ),
    ("docs/serving.md", "over 40 megapixels", {f"{SERVE}.max_pixels": 40_000_000}),
    ("docs/serving.md", "more than {captioner.serve.batching.BatchSettings.max_pending} images waiting → 503", {}),
    ("docs/datasets.md", "`{captioner data synth --kind}` (the default, and the demo's)", {}),
    ("docs/dates.md", "one over {captioner.dates.system.DatesModule(max_input_len)} characters", {}),
    ("docs/dates.md", "`captioner dates` runs torch on one thread", {"captioner.commands.dates.DEFAULT_THREADS": 1}),
    ("docs/performance.md", "(up to {captioner.inference.precision.MAX_CALIBRATION_IMAGES} are used)", {}),
    (
        "docs/attention.md",
        "hence `model.validation_faithfulness` stays off by default",
        {"model.validation_faithfulness": False},
    ),
]
FIELD = re.compile(r"\{([^{}]+)\}")


def default_of(key: str) -> Any:
    """The code's default for `key`: a setting (`model.encoder.backbone`), a flag
    (`captioner serve --port`, `captioner data synth --kind`), a parameter (`pkg.Class(param)`),
    an item (`pkg.CONSTANT[item]`) or any dotted Python name (`pkg.Class.attribute`)."""
    flag = re.fullmatch(r"captioner ([\w ]+?) (--[\w-]+)", key)
    if flag:
        command, *subcommands = flag.group(1).split()
        parser = command_parser(command)
        for name in subcommands:
            parser = next(a.choices[name] for a in parser._actions if name in (getattr(a, "choices", None) or {}))
        return next(a.default for a in parser._actions if flag.group(2) in a.option_strings)
    parameter = re.fullmatch(r"([\w.]+)\((\w+)\)", key)
    if parameter:
        return inspect.signature(pydoc.locate(parameter.group(1))).parameters[parameter.group(2)].default
    item = re.fullmatch(r"([\w.]+)\[(\w+)\]", key)
    if item:
        return pydoc.locate(item.group(1))[item.group(2)]
    if key.split(".")[0] in settings_table.roots():
        known = settings_table.settings()
        if key not in known:
            raise KeyError(f"no setting {key}")
        return known[key]
    value = pydoc.locate(key)
    if value is None:
        raise KeyError(f"nothing named {key}")
    return value


def written(value: Any) -> str:
    """A default as the docs write it: 1 not 1.0, true/false, null."""
    if isinstance(value, float):
        return f"{value:g}"
    return settings_table.format_value(value)


def flat(text: str) -> str:
    return " ".join(text.split())


def line_of(text: str, phrase: str) -> int:
    """The line of `text` where `phrase` is, found by its longest literal part (or the longest
    start of that part) that the page still has."""
    flat_text, lines = "", []
    for match in re.finditer(r"\S+", text):
        flat_text += match.group(0) + " "
        lines += [text.count("\n", 0, match.start()) + 1] * (len(match.group(0)) + 1)
    pieces = sorted((flat(piece) for piece in FIELD.split(phrase) if piece.strip()), key=len, reverse=True)
    for piece in pieces:
        if piece in flat_text:
            return lines[flat_text.index(piece)]
    words = pieces[0].split() if pieces else []
    for n in range(len(words) - 1, 0, -1):
        start = flat_text.find(" ".join(words[:n]))
        if start >= 0:
            return lines[start]
    return 1


@pytest.mark.parametrize(("page", "phrase", "requires"), CLAIMS, ids=[f"{c[0]}: {c[1][:40]}" for c in CLAIMS])
def test_a_stated_default_is_the_codes(page, phrase, requires):
    text = (ROOT / page).read_text(encoding="utf-8")
    try:
        wrong = {key: default_of(key) for key, value in requires.items() if default_of(key) != value}
        expected = FIELD.sub(lambda field: written(default_of(field.group(1))), phrase)
    except (KeyError, AttributeError, StopIteration, TypeError) as error:
        raise AssertionError(
            f"{page}:{line_of(text, phrase)}: the claim {phrase!r} names a default the code no longer has "
            f"({error!r}): update the page and its claim in tests/test_docs_settings.py"
        ) from None
    if not wrong and flat(expected) in flat(text):
        return
    where = f"{page}:{line_of(text, phrase)}"
    assert not wrong, (
        f"{where} says {phrase!r}, which holds for {requires}, but the code's defaults are now {wrong}: "
        "reword the page, and this claim in tests/test_docs_settings.py"
    )
    raise AssertionError(
        f"{where} should say {flat(expected)!r} (the defaults filled in from the code): change the page, "
        "or, if the sentence was reworded, its claim in tests/test_docs_settings.py"
    )


def test_the_settings_table_is_made_from_the_code():
    text = settings_table.PAGE.read_text(encoding="utf-8")
    begin, end = text.find(settings_table.BEGIN), text.find(settings_table.END)
    assert 0 <= begin < end, f"docs/training.md lost its settings table markers ({settings_table.BEGIN!r})"
    shown = text[begin + len(settings_table.BEGIN) : end].strip().splitlines()
    made = settings_table.table().splitlines()
    first_line = text.count("\n", 0, begin) + 2
    changed = [
        f"docs/training.md:{first_line + i}: has {old!r}\n  code: {new!r}"
        for i, (old, new) in enumerate(zip(shown, made))
        if old != new
    ]
    if len(shown) != len(made):
        changed.append(f"the table has {len(shown)} lines, the code's {len(made)}")
    assert not changed, "the settings table is behind the code; run `python -m tests.settings_table --write`:\n" + (
        "\n".join(changed)
    )


def test_the_table_lists_every_setting_the_cli_takes_with_its_default():
    """The generator walks signatures as jsonargparse does; this holds it to what the CLI shows."""
    made = settings_table.settings()
    off = {group.key for group in settings_table.groups() if group.optional}  # shown as `key: null`
    shown = {key: value for key, value in cli_settings().items() if key.split(".")[0] in settings_table.roots()}
    expected = {key: value for key, value in made.items() if not any(key.startswith(f"{o}.") for o in off)}
    expected |= dict.fromkeys(off)
    assert sorted(shown) == sorted(expected), (
        "tests/settings_table.py reads the settings otherwise than the CLI takes them (teach it the new kind of "
        f"setting): only in `--print_config`: {sorted(set(shown) - set(expected))}; "
        f"only in the table: {sorted(set(expected) - set(shown))}"
    )
    differ = {key: (shown[key], expected[key]) for key in shown if shown[key] != expected[key]}
    assert not differ, f"defaults the CLI sets otherwise than the table says (CLI, table): {differ}"


def test_the_generator_writes_between_the_markers_only():
    page = f"# Training\n\nbefore\n{settings_table.BEGIN}\n| old |\n{settings_table.END}\nafter\n"
    assert settings_table.replaced(page, "| new |") == page.replace("| old |", "| new |")
    with pytest.raises(SystemExit, match="has no settings table"):
        settings_table.replaced("# Training\n", "| new |")


def test_a_changed_default_fails_its_claim_with_the_page_and_line(monkeypatch):
    monkeypatch.setitem(search.DECODING_LIMITS, "beam_size", 12)
    with pytest.raises(AssertionError, match=r"README.md:\d+ should say 'Beam size is at most 12 and"):
        test_a_stated_default_is_the_codes(*CLAIMS[0])
