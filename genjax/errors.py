"""The one exception type genjax raises for bad input, with the fix in its message."""


class GenjaxError(Exception):
    """A user-facing error: the message names the bad value and how to fix it.

    Entry points catch it, print one line `error: <message>` and exit with status 2,
    so a researcher sees the cause, not a traceback.
    """
