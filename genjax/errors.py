"""The one exception type genjax raises for bad input, with the fix in its message, and the helpers that
put a caught error's cause into that message in one line."""

import os
import re


class GenjaxError(Exception):
    """A user-facing error: the message names the bad value and how to fix it.

    Entry points catch it, print one line `error: <message>` and exit with status 2,
    so a researcher sees the cause, not a traceback.
    """


def os_reason(error: BaseException) -> str | None:
    """The operating system's reason behind `error` or the errors it came from ("No space left on device"), if any.

    Reads an `OSError` in the chain, or the `os_error_code='28'` that tensorstore writes into its messages.
    """
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:  # a context chain can loop back
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        code = re.search(r"os_error_code='?(\d+)", str(current))
        if code:
            return os.strerror(int(code.group(1)))
        current = current.__cause__ or current.__context__
    return None


def root_cause(error: BaseException) -> BaseException:
    """The innermost error `error` was raised from (`raise ... from`), or `error` itself.

    orbax wraps a tensorstore read error ("... Data corruption detected" in the file of array
    "opt_state...kernel") in one whose message names only an index range; the cause names the damage.
    """
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def first_line(error: BaseException) -> str:
    """`Type: first line`, shortened to its start and its end, and naming the OS reason (`os_reason`) if it was cut."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) > 300:
        line = line[:150] + " ... " + line[-150:]
    reason = os_reason(error)
    if reason and reason not in line:
        line += f" [OS error: {reason}]"
    return f"{type(error).__name__}: {line}"
