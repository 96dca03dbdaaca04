"""`cli_error`: runs `most ARGV` in-process and checks it ends as bad input must (most_jax/cli.py)."""

from __future__ import annotations

import contextlib
import io
import re

from most_jax.cli import main


def cli_error(argv: list[str], pattern: str = "") -> str:
    """Runs main(argv) expecting bad input: exit status 2 and no traceback, the last stderr line
    `most <command>: error: ...` and the only error line (progress lines may come before it), matching
    `pattern` (re.search). Returns that line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    text = err.getvalue()
    lines = text.strip().splitlines()
    assert code == 2, (code, text[-2000:])
    assert lines and "Traceback" not in text, text[-2000:]
    assert sum(": error: " in line for line in lines) == 1, text[-2000:]
    line = lines[-1]
    assert line.startswith("most ") and ": error: " in line, line
    assert re.search(pattern, line), (pattern, line)
    return line
