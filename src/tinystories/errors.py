"""The one exception type for user mistakes.

Library code raises `UserError` for anything the user can fix (a missing file,
an unknown preset, a mismatched checkpoint). The CLI prints its message as one
line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
