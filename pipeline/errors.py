"""User-facing errors: each carries every problem found, each naming the field or line and the fix."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user. The CLI prints it without a traceback and exits with code 2."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class JobError(UserError):
    """An episode job (or profile) that does not validate."""
