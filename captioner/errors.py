"""The one exception type for mistakes a user can make and fix."""


class CaptionerError(ValueError):
    """A user-caused problem (bad path, bad setting, bad file) with a message saying how to fix it.

    The command line prints it as one line and exits non-zero instead of showing a traceback.
    """
