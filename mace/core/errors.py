"""Errors that a user can cause and fix (bad file, missing key, unknown element, bad flag).

The command line catches :class:`UserInputError`, prints its message and exits non-zero
instead of showing a traceback, so each message must name what to fix: the file, frame
index, key or element.
"""


class UserInputError(Exception):
    """A problem with the user's input, reported as one clear sentence without a traceback."""


def one_line(error: BaseException) -> str:
    """A library's exception as one line for a UserInputError: its type and first line of text."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
