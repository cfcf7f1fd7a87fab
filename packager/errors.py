"""One error type for everything a user can get wrong, and the exit codes it maps to.

The CLI catches `PackagerError` once, prints its sentence and exits with its code.
The table in README.md ("Exit codes") mirrors `ExitCode`; keep them in step.
"""

from __future__ import annotations

import difflib
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1           # a bug: rerun with --debug and report it
    USAGE = 2              # bad command line (typer/click's own code)
    DOES_NOT_FIT = 3       # measured or estimated memory over the budget
    ACCURACY = 4           # the packaged model's answers drift past the threshold
    BAD_INPUT = 5          # missing path, not a model, corrupt or unsupported model
    BAD_PROFILE = 6        # unknown target, invalid profile file
    MISSING_DEPENDENCY = 7 # an optional extra is not installed
    SMOKE_FAILED = 8       # a bundle's own smoke test said FAIL
    OUTPUT = 9             # the output folder cannot be written
    TOOL_FAILED = 10       # the exporter, quantizer or runtime failed on a valid input
    RUNTIME_INCOMPATIBLE = 11  # the model needs a newer runtime than the target pins (IR, opset, operator)
    INTERRUPTED = 130      # SIGINT / SIGTERM


class PackagerError(Exception):
    """A user-facing failure: one sentence naming the problem and the fix."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""
