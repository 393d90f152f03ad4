"""The one exception type for mistakes a user can fix.

`cli.py` prints a `UserError` as a single line on stderr and exits with status 2; any other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, named together with its fix."""
