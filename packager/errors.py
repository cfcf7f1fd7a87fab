"""One error type for everything a user can get wrong, and the exit codes it maps to.

The CLI catches `PackagerError` once, prints its sentence and exits with its code.
The table in README.md ("Exit codes") mirrors `ExitCode`; keep them in step.
"""

from __future__ import annotations

import difflib
import errno
import os
import tempfile
from enum import IntEnum
from pathlib import Path


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


# A full disk or an exhausted quota: the machine's problem, not the model's or the tool's.
DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded"}


def disk_full(e: BaseException) -> PackagerError | None:
    """The OUTPUT error for a write that ran out of space, wherever it happened (a stage, a recipe
    that wrapped it as a tool failure, a temporary folder), else None. The top-level handlers (the
    CLI's and the API's) ask this once, so no stage needs its own handler for it."""
    if isinstance(e, PackagerError) and e.code == ExitCode.OUTPUT:
        return None  # said already, by the code that wrote to --out
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:  # the chain of causes: a wrapper names the tool
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in DISK_FULL:
            return _disk_full_error(cause)
        cause = cause.__cause__ or cause.__context__
    return None


def _disk_full_error(e: OSError) -> PackagerError:
    assert e.errno is not None  # the caller found it in DISK_FULL
    what = DISK_FULL[e.errno]
    tmp = Path(tempfile.gettempdir())
    written = Path(os.fsdecode(e.filename)).absolute() if isinstance(e.filename, (str, bytes)) and e.filename else None
    if written is not None and tmp not in written.parents:
        return PackagerError(f"{written.parent}: {what} (writing {written.name}); free some space there.",
                             ExitCode.OUTPUT)
    # Packager's work folders are in the temporary folder; a write with no file name is one of them.
    during = f" (writing {written})" if written is not None else " for packager's work files"
    return PackagerError(f"{tmp}: {what}{during}; free some space there or point TMPDIR at a folder with room.",
                         ExitCode.OUTPUT)
