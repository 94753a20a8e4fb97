"""The one exception type genjax raises for bad input, with the fix in its message."""


class GenjaxError(Exception):
    """A user-facing error: the message names the bad value and how to fix it.

    Entry points catch it, print one line `error: <message>` and exit with status 2,
    so a researcher sees the cause, not a traceback.
    """


def first_line(error: BaseException) -> str:
    """`Type: first line`, shortened to its start and its end (where tensorstore puts the OS error)."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return f"{type(error).__name__}: {line if len(line) <= 300 else line[:150] + ' ... ' + line[-150:]}"
