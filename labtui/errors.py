"""The one error type for bad input.

A LabError's message is a single line that says what was wrong and what is
accepted. The CLI prints it and exits 2; the engine refuses the command and
changes nothing; the TUI shows it as a notification.
"""


class LabError(ValueError):
    """Bad input from a user, a file, a flag or a checkpoint (one-line message)."""


def one_line(msg: str) -> str:
    return " ".join(str(msg).split())
