"""The modules behind `most <command>` (see most_jax/cli.py)."""


class UsageError(ValueError):
    """A command's arguments do not fit: a bad value, a missing or conflicting option, an input named on
    the command line that the command cannot use. The message names the argument; most_jax.cli reports
    it as one line `most <command>: error: <message>` with exit status 2, like every other user error."""
