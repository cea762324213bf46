"""The one exception type for mistakes a user can make and fix."""


class CaptionerError(ValueError):
    """A user-caused problem (bad path, bad setting, bad file) with a message saying how to fix it.

    The command line prints it as one line and exits non-zero instead of showing a traceback.
    """


def require_positive(**values: int) -> None:
    """Raise CaptionerError naming the first setting that is not an integer >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CaptionerError(f"{name} must be an integer >= 1, got {value!r}")
