"""The one exception type for mistakes a user can make and fix, and the checks that raise it."""

from collections.abc import Collection


class CaptionerError(ValueError):
    """A user-caused problem (bad path, bad setting, bad file) with a message saying how to fix it.

    The command line prints it as one line and exits non-zero instead of showing a traceback.
    """


def _require_at_least(minimum: int, values: dict[str, int]) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CaptionerError(f"{name} must be an integer >= {minimum}, got {value!r}")


def require_positive(**values: int) -> None:
    """Raise CaptionerError naming the first setting that is not an integer >= 1."""
    _require_at_least(1, values)


def require_non_negative(**values: int) -> None:
    """Raise CaptionerError naming the first setting that is not an integer >= 0."""
    _require_at_least(0, values)


def require_choice(name: str, value: object, choices: Collection[object]) -> None:
    """Raise CaptionerError unless `value` is one of `choices`, naming the setting and the choices."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise CaptionerError(f"{name} must be one of {listed}; got {value!r}")
