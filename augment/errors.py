"""One error type for bad user input.

Every problem a user can fix (a wrong name, a missing file, an incompatible run folder) is raised
as :class:`AugmentError`, a plain exception so that the library does not depend on the CLI
library. The CLI (``augment.cli.options.handle_errors``) prints it as one ``Error: ...`` line on
stderr and exits with :data:`EXIT_USAGE`, without a traceback, so that scripts and people both see
what to change.
"""

from __future__ import annotations

#: exit code of a user-fixable problem (the same code click uses for bad flags)
EXIT_USAGE = 2


class AugmentError(Exception):
    """A user-fixable problem: the message names the problem and the fix, on one line."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        self.message = " ".join(str(message).split())
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class AugmentErrors(AugmentError):
    """Several user-fixable problems found by one check, each on its own line (the CLI prints one
    ``Error:`` line per problem), so that a user fixes them all before running again instead of
    discovering them one run at a time."""

    def __init__(self, problems: list[AugmentError]) -> None:
        self.problems = list(problems)
        super().__init__("")
        self.message = "\n".join(p.message for p in self.problems)


def raise_all(problems: list[AugmentError]) -> None:
    """Raise nothing for no problem, the problem itself for one, :class:`AugmentErrors` for several."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise AugmentErrors(problems)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the same ``finally``
    blocks run (the pool shuts down, the lock is released, empty folders are removed) and the CLI
    says one line. Ray's driver installs a native SIGTERM handler that prints a C++ stack and
    aborts; :func:`augment.distributed.connection.connect` puts this one back."""

    #: the signal last received by augment's handler (a KeyboardInterrupt that Ray raised in place
    #: of a Terminated is told apart by it)
    received: int | None = None

    def __init__(self, signum: int = 15) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")
