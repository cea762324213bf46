"""Human-written dates in many formats, from a seed; no downloads.

    >>> FORMATS["month_ordinal_year"].example
    'July 20th 1969'
    >>> import random; FORMATS["month_ordinal_year"].render(datetime.date(1564, 4, 23), random.Random(3))
    'April 23rd, 1564'

Every format is a small function of a date and a random generator; most of them also vary
their surface per example (letter case, commas, zero padding, "Jul" or "Jul."), so a
format stands for a family of spellings. Years run from 1000 to 2099, always with four
digits: two-digit years would be ambiguous over eleven centuries.

Numeric dates follow one convention per separator, because "03/04/2001" means 4 March to
an American and 3 April to a German: "/" before the year is month/day/year (US), "." and
"-" and " " before the year are day.month.year, and a leading year is year-month-day.

Held-out formats (`HELD_OUT`) never appear in training: each recombines pieces the
training formats use (an ordinal before a month name without "of", dots after a leading
year, abbreviations between dashes, ...), so the test measures generalisation to a new
arrangement, not to unseen characters. Test dates are never seen in training in any
format: `split_dates` reserves them before any training example is drawn.
"""

from __future__ import annotations

import calendar
import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass

FIRST_YEAR, LAST_YEAR = 1000, 2099
_FIRST = datetime.date(FIRST_YEAR, 1, 1).toordinal()
_LAST = datetime.date(LAST_YEAR, 12, 31).toordinal()

MONTHS = [calendar.month_name[m] for m in range(1, 13)]
MONTH_ABBREVIATIONS = [calendar.month_abbr[m] for m in range(1, 13)]
WEEKDAYS = [calendar.day_name[d] for d in range(7)]
WEEKDAY_ABBREVIATIONS = [calendar.day_abbr[d] for d in range(7)]


@dataclass(frozen=True)
class Format:
    name: str
    render: Callable[[datetime.date, random.Random], str]
    example: str  # 1969-07-20 in its plainest spelling, for the docs


def iso(date: datetime.date) -> str:
    """The target: YYYY-MM-DD."""
    return date.isoformat()


def ordinal(day: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 22 -> '22nd'."""
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# ------------------------------------------------------------------ pieces
def _case(text: str, rng: random.Random) -> str:
    """As written (title case), lower or upper case."""
    return rng.choice((text, text, text.lower(), text.upper()))


def _num(value: int, rng: random.Random) -> str:
    """A day or month number, zero-padded or not."""
    return f"{value:02d}" if rng.random() < 0.5 else str(value)


def _month(date: datetime.date) -> str:
    return MONTHS[date.month - 1]


def _mon(date: datetime.date, rng: random.Random) -> str:
    """Abbreviated month, sometimes with a full stop ("Sep" and "Sept" both occur)."""
    abbr = MONTH_ABBREVIATIONS[date.month - 1]
    if date.month == 9 and rng.random() < 0.3:
        abbr = "Sept"
    return abbr + ("." if rng.random() < 0.3 else "")


def _weekday(date: datetime.date) -> str:
    return WEEKDAYS[date.weekday()]


def _wkd(date: datetime.date) -> str:
    return WEEKDAY_ABBREVIATIONS[date.weekday()]


def _comma(rng: random.Random) -> str:
    return "," if rng.random() < 0.5 else ""


# ----------------------------------------------------------------- formats
def _numeric(order: str, sep: str, pad: bool | None = None) -> Callable[[datetime.date, random.Random], str]:
    """order: "ymd", "dmy" or "mdy"; pad None = zero-pad at random."""

    def render(date: datetime.date, rng: random.Random) -> str:
        def part(value: int) -> str:
            return (f"{value:02d}" if pad else str(value)) if pad is not None else _num(value, rng)

        parts = {"y": str(date.year), "m": part(date.month), "d": part(date.day)}
        return sep.join(parts[c] for c in order)

    return render


def _day_month_year(date, rng):  # 20 July 1969
    return _case(f"{date.day} {_month(date)}{_comma(rng)} {date.year}", rng)


def _day_mon_year(date, rng):  # 20 Jul 1969
    return _case(f"{_num(date.day, rng)} {_mon(date, rng)} {date.year}", rng)


def _month_day_year(date, rng):  # July 20, 1969
    return _case(f"{_month(date)} {date.day}, {date.year}", rng)


def _month_ordinal_year(date, rng):  # July 20th 1969
    return _case(f"{_month(date)} {ordinal(date.day)}{_comma(rng)} {date.year}", rng)


def _mon_day_year(date, rng):  # Jul 20 1969
    return _case(f"{_mon(date, rng)} {date.day}{_comma(rng)} {date.year}", rng)


def _ordinal_of_month(date, rng):  # the 20th of July 1969
    article = "the " if rng.random() < 0.5 else ""
    return _case(f"{article}{ordinal(date.day)} of {_month(date)}{_comma(rng)} {date.year}", rng)


def _year_month_day(date, rng):  # 1969 July 20
    return _case(f"{date.year} {_month(date)} {date.day}", rng)


def _weekday_month_day_year(date, rng):  # Sunday, July 20, 1969
    return _case(f"{_weekday(date)}{_comma(rng)} {_month(date)} {date.day}, {date.year}", rng)


def _weekday_day_mon_year(date, rng):  # Sun 20 Jul 1969
    return _case(f"{_wkd(date)}{_comma(rng)} {date.day} {_mon(date, rng)} {date.year}", rng)


def _weekday_ordinal_of_month(date, rng):  # Sunday the 20th of July 1969
    return _case(f"{_weekday(date)}{_comma(rng)} the {ordinal(date.day)} of {_month(date)} {date.year}", rng)


# Held out: recombinations of the pieces above, for the test set only.
def _ordinal_month_year(date, rng):  # 20th July 1969
    return _case(f"{ordinal(date.day)} {_month(date)}{_comma(rng)} {date.year}", rng)


def _wkd_mon_ordinal_year(date, rng):  # Sun, Jul 20th, 1969
    return _case(f"{_wkd(date)}, {_mon(date, rng)} {ordinal(date.day)}, {date.year}", rng)


def _day_mon_year_dashes(date, rng):  # 20-Jul-1969
    return _case(f"{_num(date.day, rng)}-{MONTH_ABBREVIATIONS[date.month - 1]}-{date.year}", rng)


def _month_day_year_no_comma(date, rng):  # July 20 1969
    return _case(f"{_month(date)} {date.day} {date.year}", rng)


def _weekday_ordinal_month_year(date, rng):  # Sunday 20th July 1969
    return _case(f"{_weekday(date)} {ordinal(date.day)} {_month(date)} {date.year}", rng)


_TRAINING = [
    ("iso", _numeric("ymd", "-", pad=True)),
    ("year_month_day_slashes", _numeric("ymd", "/")),
    ("compact", _numeric("ymd", "", pad=True)),
    ("us_slashes", _numeric("mdy", "/")),
    ("day_month_dots", _numeric("dmy", ".")),
    ("day_month_dashes", _numeric("dmy", "-")),
    ("day_month_spaces", _numeric("dmy", " ")),
    ("day_month_year", _day_month_year),
    ("day_mon_year", _day_mon_year),
    ("month_day_comma_year", _month_day_year),
    ("month_ordinal_year", _month_ordinal_year),
    ("mon_day_year", _mon_day_year),
    ("ordinal_of_month", _ordinal_of_month),
    ("year_month_day", _year_month_day),
    ("weekday_month_day_year", _weekday_month_day_year),
    ("weekday_day_mon_year", _weekday_day_mon_year),
    ("weekday_ordinal_of_month", _weekday_ordinal_of_month),
]
_HELD_OUT = [
    ("year_month_dots", _numeric("ymd", ".")),
    ("ordinal_month_year", _ordinal_month_year),
    ("wkd_mon_ordinal_year", _wkd_mon_ordinal_year),
    ("day_mon_year_dashes", _day_mon_year_dashes),
    ("month_day_year_no_comma", _month_day_year_no_comma),
    ("weekday_ordinal_month_year", _weekday_ordinal_month_year),
]


class _Plain(random.Random):
    """Picks the plainest spelling: title case, no padding, no optional comma or full stop."""

    def random(self) -> float:
        return 0.99

    def choice(self, seq):
        return seq[0]


def _formats(pairs) -> dict[str, Format]:
    moon = datetime.date(1969, 7, 20)
    return {name: Format(name, render, render(moon, _Plain())) for name, render in pairs}


TRAINING_FORMATS = _formats(_TRAINING)
HELD_OUT = _formats(_HELD_OUT)
FORMATS = {**TRAINING_FORMATS, **HELD_OUT}


@dataclass(frozen=True)
class Example:
    text: str  # as a person wrote it
    target: str  # ISO 8601, YYYY-MM-DD
    format: str  # name in FORMATS


def split_dates(seed: int, val: int, test: int) -> tuple[list[int], list[int], list[int]]:
    """All dates from 1000-01-01 to 2099-12-31 as proleptic ordinals, shuffled with `seed` and
    split into (train, val, test) pools; val and test hold `val` and `test` dates, reserved
    before training draws from the rest, so no test date is ever seen in training."""
    ordinals = list(range(_FIRST, _LAST + 1))
    random.Random(seed).shuffle(ordinals)
    return ordinals[val + test :], ordinals[:val], ordinals[val : val + test]


def examples(pool: list[int], count: int, formats: list[str], seed: int, *, each_once: bool = False) -> list[Example]:
    """`count` examples: dates from `pool` (ordinals), formats drawn uniformly from `formats`.

    each_once: use each date of the pool at most once (then count <= len(pool)); otherwise
    dates are drawn with replacement.
    """
    rng = random.Random(seed)
    dates = rng.sample(pool, count) if each_once else [rng.choice(pool) for _ in range(count)]
    out = []
    for day in dates:
        date = datetime.date.fromordinal(day)
        name = rng.choice(formats)
        out.append(Example(FORMATS[name].render(date, rng), iso(date), name))
    return out
