"""Deterministic tar.gz archives and safe extraction."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from packager.errors import ExitCode, PackagerError


def source_date_epoch() -> int | None:
    """$SOURCE_DATE_EPOCH (reproducible-builds.org): the time a reproducible build claims, or None."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise PackagerError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since 1970; set it to an integer "
                            "(e.g. $(git log -1 --format=%ct)) or unset it.", ExitCode.USAGE)
    return int(value)


def write_archive(folder: Path, dest: Path) -> None:
    """`folder` as one top-level directory in a gzip tar: sorted entries, fixed owner, mode and
    mtime (SOURCE_DATE_EPOCH, else 0), no gzip timestamp. Level 1: weights barely compress at any
    level (measured: all-MiniLM fp32 0.921 of its size at level 1, 0.917 at 6; tiny-llama int4
    0.820 and 0.808), and level 1 takes 1.4-1.7x less CPU, which is minutes on gigabytes."""
    mtime = source_date_epoch() or 0

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
        return info

    entries = sorted(p for p in folder.rglob("*"))
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=folder.name, recursive=False, filter=normalise)
        for p in entries:
            tar.add(p, arcname=f"{folder.name}/{p.relative_to(folder).as_posix()}", recursive=False, filter=normalise)


# What an archive may declare before a byte is extracted. Weights barely compress (0.82-0.92 of their
# size, see write_archive), so a bundle's files never add up to 64 times its archive; a GNU sparse
# member, or a gzip stream of zeros, can claim terabytes in a few megabytes. Documented in SECURITY.md.
EXPANSION_LIMIT = 64
EXPANSION_FLOOR = 256 * 2**20     # a small bundle may still hold, say, a tokenizer that compresses well
MAX_BUNDLE_BYTES = 64 * 2**30     # ten times the largest budget packager knows
MAX_MEMBERS = 100_000


def extract_bundle(archive: Path, dest: Path) -> Path:
    """Unpack a bundle archive into `dest`, refusing links, devices and paths that leave it, and
    archives that declare more than they could hold (see EXPANSION_LIMIT). Returns the bundle's
    single top-level folder."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _members(archive, tar)
            top = _single_folder(archive, members)
            _check_sizes(archive, members, dest)
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise PackagerError(f"{archive}: unsafe entry ({e}); refusing to unpack it.", ExitCode.BAD_INPUT) from None
    except (tarfile.TarError, OSError, EOFError) as e:
        reason = "not a tar archive" if isinstance(e, tarfile.ReadError) else (str(e).splitlines() or [""])[0]
        raise PackagerError(f"{archive}: not a readable bundle archive ({reason or type(e).__name__}); rebuild or "
                            "re-download it.", ExitCode.BAD_INPUT) from None
    folder = dest / top
    if not folder.is_dir():
        raise PackagerError(f"{archive}: {top!r} did not unpack into a folder; rebuild the bundle.", ExitCode.BAD_INPUT)
    return folder


def _members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's members, read one at a time so that a million empty entries stop at MAX_MEMBERS."""
    members = []
    for member in tar:
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise PackagerError(f"{archive}: more than {MAX_MEMBERS:,} entries, which no bundle has; refusing to "
                                "unpack it. Rebuild the bundle.", ExitCode.BAD_INPUT)
    return members


def _check_sizes(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Refuse sparse members and declared sizes past what the archive could hold, before extracting;
    OUTPUT when `dest` has no room for what it declares."""
    for m in members:
        if m.issparse():
            raise PackagerError(f"{archive}: entry {m.name!r} is a sparse file, which packager never writes; "
                                "refusing to unpack it. Rebuild the bundle.", ExitCode.BAD_INPUT)
    declared = sum(m.size for m in members if m.isfile())
    limit = min(MAX_BUNDLE_BYTES, max(EXPANSION_FLOOR, EXPANSION_LIMIT * archive.stat().st_size))
    if declared > limit:
        raise PackagerError(f"{archive}: its entries declare {declared / 2**30:.1f} GiB, more than a bundle archive "
                            f"of this size unpacks to (at most {limit / 2**30:.1f} GiB); refusing to unpack it. "
                            "Rebuild or re-download the bundle.", ExitCode.BAD_INPUT)
    existing = next(p for p in (dest, *dest.parents) if p.exists())  # extraction makes `dest` when missing
    free = shutil.disk_usage(existing).free
    if declared > free:
        raise PackagerError(f"{dest}: {declared / 2**20:.0f} MiB are needed to unpack {archive.name} and "
                            f"{free / 2**20:.0f} MiB are free; free some space or point TMPDIR elsewhere.",
                            ExitCode.OUTPUT)


def _single_folder(archive: Path, members: list[tarfile.TarInfo]) -> str:
    """The one top-level folder all members sit in; refuses links, devices, paths that leave it, and
    archives with several top-level entries or a file where the folder should be."""
    tops: set[str] = set()
    for m in members:
        parts = PurePosixPath(m.name).parts   # "./b//x" -> ("b", "x"); "." and "" -> ()
        if m.name.startswith("/") or ".." in parts:
            raise PackagerError(f"{archive}: entry {m.name!r} points outside the bundle folder; refusing "
                                "to unpack it. Rebuild the bundle.", ExitCode.BAD_INPUT)
        if not (m.isfile() or m.isdir()):
            raise PackagerError(f"{archive}: entry {m.name!r} is a link or device; a bundle holds only "
                                "files and folders. Rebuild the bundle.", ExitCode.BAD_INPUT)
        if not parts and not m.isdir():
            raise PackagerError(f"{archive}: entry {m.name!r} names no path; rebuild the bundle.", ExitCode.BAD_INPUT)
        if parts:
            tops.add(parts[0])
    if len(tops) != 1:
        raise PackagerError(f"{archive}: a bundle unpacks into one folder, this one into {len(tops)}; rebuild it.",
                            ExitCode.BAD_INPUT)
    top = next(iter(tops))
    if any(PurePosixPath(m.name).parts == (top,) and not m.isdir() for m in members):
        raise PackagerError(f"{archive}: its top-level entry {top!r} is a file, not the bundle's folder; rebuild it.",
                            ExitCode.BAD_INPUT)
    return top
