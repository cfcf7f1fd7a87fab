"""Temporary names that carry their writer's PID, and the sweeping of a killed run's leftovers.

Whatever packager writes before it is whole goes under a temporary name first: a cache entry being
assembled beside its place, a bundle archive being written in --out, a run's work folder in TMPDIR.
Every cleanup removes them, but SIGKILL (or a power cut) skips every cleanup. So each such name
carries the PID of the process that made it, and a later run removes one when:

- its name matches one of the patterns below exactly (nothing else in the folder is ever touched),
- it belongs to this user (a shared TMPDIR or cache holds other users' files: theirs to remove),
- its process is gone: a concurrent run's names are never touched, as its process is alive (a PID
  since reused by another process keeps the leftover until that one ends too: late, never wrong),
- and it has not changed for STALE_AFTER_S: a writer in another PID namespace (a container sharing
  the folder) looks dead from here, but a live writer keeps changing what it writes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 60.0
_PID = r"(?P<pid>[1-9][0-9]{0,9})"

# A cache entry assembled beside its place (cache.py, emulate.py, sample_models.py): .partial-<pid>-<rest>
CACHE_PARTIAL = re.compile(rf"\.partial-{_PID}-.+")
# A bundle archive being written in --out (stages/bundle.py): .<name>.tar.gz.partial-<pid>
BUNDLE_PARTIAL = re.compile(rf"\..+\.tar\.gz\.partial-{_PID}")
# A run's temporary folder in TMPDIR (temp_folder): packager-<pid>-<kind>-<mkdtemp's 8 characters>
WORK_FOLDER = re.compile(rf"packager-{_PID}-[a-z0-9]+(?:-[a-z0-9]+)*-[a-z0-9_]{{8}}")


def cache_partial(folder: Path, label: str = "") -> Path:
    """A fresh folder in `folder` (which holds cache entries) to assemble an entry in."""
    return Path(tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-{label}", dir=folder))


def bundle_partial(final: Path) -> Path:
    """Where the archive `final` is written before it is renamed into place."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def work_folder(kind: str) -> Path:
    """A fresh folder in TMPDIR for this run's `kind` of work (lower-case words joined by '-')."""
    return Path(tempfile.mkdtemp(prefix=f"packager-{os.getpid()}-{kind}-"))


def temp_folder(kind: str) -> tempfile.TemporaryDirectory[str]:
    """work_folder, removed when the `with` block ends."""
    return tempfile.TemporaryDirectory(prefix=f"packager-{os.getpid()}-{kind}-")


def sweep(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the leftovers in `folder` that `pattern` names (see the module's rules); what was removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is not None and _stale(folder / name, int(match["pid"])):
            _remove(folder / name)
            removed.append(folder / name)
    return removed


def sweep_run_leftovers(out: Path | None) -> None:
    """At the start of a run: killed runs' work folders in TMPDIR, and their half-written bundles in `out`."""
    sweep(Path(tempfile.gettempdir()), WORK_FOLDER)
    if out is not None:
        sweep(out, BUNDLE_PARTIAL)


def _stale(path: Path, pid: int) -> bool:
    if pid == os.getpid() or _alive(pid):
        return False
    try:
        st = path.lstat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and time.time() - st.st_mtime >= STALE_AFTER_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:   # no process can have this PID
        return False
    except OSError:         # PermissionError: another user's process, alive
        return True
    return True


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass   # not ours to remove after all (permissions): a leftover is never worth failing a run
