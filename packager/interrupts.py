"""Ctrl-C and SIGTERM stop the CLI by unwinding its stages, so that each removes what it wrote (exit 130).

Python raises a signal's KeyboardInterrupt at whatever bytecode runs next, and Python code that C or C++ called
cannot take it: a C extension's module init that calls back into Python aborts the process (`terminate called after
throwing an instance of 'pybind11::error_already_set'`, exit -6, the work folder left behind), torch's tensor
constructor turns it into a ValueError (the export "failed", exit 10), a `__del__` prints "Exception ignored" and the
run goes on to finish. Python cannot see whether C sits between two frames, so the interrupt is raised where no C
caller can be: in packager's own code (the device code that verify and fit run included), the standard library that
code calls, or the pure-Python packages the stages spend long loops in (SAFE_FILES), outside imports, finalizers and
torch's tracing. Elsewhere it waits, re-checked every RECHECK_S seconds by a timer (SIGALRM), until a long call into a
library returns; a second signal raises it at once, wherever the stack is."""

from __future__ import annotations

import signal
import sys
import sysconfig
from pathlib import Path
from types import FrameType

from packager.paths import targets_dir

RECHECK_S = 0.05
# as the frames name their files: the paths the modules were imported by
SAFE_FILES = (str(Path(__file__).parent), str(targets_dir()), "/onnxruntime/quantization/")
STDLIB = tuple({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
# Frames a C caller may be running, whatever calls them.
UNSAFE_FILES = ("<frozen importlib", "/weakref.py")
UNSAFE_FUNCTIONS = ("__del__",)

_pending: list[int] = []


def install() -> None:
    """The CLI's handlers for SIGINT and SIGTERM (a library caller keeps its own), and the timer's re-check."""
    _pending.clear()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _recheck)


def uninstall() -> None:
    """The command returned: a signal still waiting for a safe frame came after the work was done and written (while
    the result printed), and is dropped rather than raised in the interpreter's shutdown (death by SIGINT, -2).
    Also where the interrupt is raised: a third signal must not cut short the cleanup it starts."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def signalled() -> bool:
    """Whether SIGINT or SIGTERM came since install(). A failure that follows is the interrupt's: where C code sat
    unseen between two Python frames (torch's tensor constructor called into the standard library), the
    KeyboardInterrupt raised there came out as another exception (a ValueError: the export "failed", exit 10)."""
    return bool(_pending)


def safe(frame: FrameType | None) -> bool:
    """Whether an exception may be raised in the stack from `frame` down (the module's docstring)."""
    caller = ""
    while frame is not None:
        code = frame.f_code
        if code.co_name in UNSAFE_FUNCTIONS or any(part in code.co_filename for part in UNSAFE_FILES):
            return False
        if not caller and not _stdlib(code.co_filename):
            caller = code.co_filename
        frame = frame.f_back
    return (not caller or any(part in caller for part in SAFE_FILES)) and not _tracing()


def _stdlib(filename: str) -> bool:
    return filename.startswith(STDLIB) or filename.startswith("<frozen ")


def _tracing() -> bool:
    torch = sys.modules.get("torch")
    state = getattr(getattr(torch, "_C", None), "_get_tracing_state", None)
    return bool(state is not None and state() is not None)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _pending:   # a second signal: at once
        _raise()
    _pending.append(signum)
    _raise_when_safe(frame)


def _recheck(_signum: int, frame: FrameType | None) -> None:
    if _pending:   # the timer runs only while a signal waits
        _raise_when_safe(frame)


def _raise_when_safe(frame: FrameType | None) -> None:
    if safe(frame):
        _raise()
    signal.setitimer(signal.ITIMER_REAL, RECHECK_S)


def _raise() -> None:
    uninstall()
    raise KeyboardInterrupt
