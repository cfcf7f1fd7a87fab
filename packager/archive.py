"""Deterministic tar.gz archives and safe extraction."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

from packager.errors import ExitCode, PackagerError


def write_archive(folder: Path, dest: Path) -> None:
    """`folder` as one top-level directory in a gzip tar: sorted entries, fixed owner, mode and
    mtime (SOURCE_DATE_EPOCH, else 0), no gzip timestamp."""
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
        return info

    entries = sorted(p for p in folder.rglob("*"))
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=folder.name, recursive=False, filter=normalise)
        for p in entries:
            tar.add(p, arcname=f"{folder.name}/{p.relative_to(folder).as_posix()}", recursive=False, filter=normalise)


def extract_bundle(archive: Path, dest: Path) -> Path:
    """Unpack a bundle archive into `dest`, refusing links, devices and paths that leave it.
    Returns the bundle's single top-level folder."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            for m in members:
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise PackagerError(f"{archive}: entry {m.name!r} points outside the bundle folder; refusing "
                                        "to unpack it. Rebuild the bundle.", ExitCode.BAD_INPUT)
                if not (m.isfile() or m.isdir()):
                    raise PackagerError(f"{archive}: entry {m.name!r} is a link or device; a bundle holds only "
                                        "files and folders. Rebuild the bundle.", ExitCode.BAD_INPUT)
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise PackagerError(f"{archive}: unsafe entry ({e}); refusing to unpack it.", ExitCode.BAD_INPUT) from None
    except (tarfile.TarError, OSError, EOFError) as e:
        reason = "not a tar archive" if isinstance(e, tarfile.ReadError) else str(e).splitlines()[0]
        raise PackagerError(f"{archive}: not a readable bundle archive ({reason}); rebuild or re-download it.",
                            ExitCode.BAD_INPUT) from None
    if len(tops) != 1:
        raise PackagerError(f"{archive}: a bundle unpacks into one folder, this one into {len(tops)}; rebuild it.",
                            ExitCode.BAD_INPUT)
    return dest / tops.pop()
