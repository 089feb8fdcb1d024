"""One error type for bad user input.

Every problem a user can fix (a wrong name, a missing file, an incompatible run folder) is raised
as :class:`AugmentError`; the CLI prints it as a single ``Error: ...`` line on stderr and exits
with code 2, without a traceback, so that scripts and people both see what to change.
"""

from __future__ import annotations

import click


class AugmentError(click.ClickException):
    """A user-fixable problem: the message names the problem and the fix, on one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
