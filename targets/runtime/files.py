"""The files present against the lists that name them: checked before anything of the bundle's is loaded."""

import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any

from .manifest import MANIFEST, SIGNATURE, SUMS, members, read_manifest, sha256_file

# ---------------------------------------------------------------- the files present
#
# Checked before anything of the bundle's is loaded: every file present must be one the manifest
# lists, with its recorded sha256. A file added beside them (a numpy.py, a sitecustomize.py, a .pth,
# a cached .pyc) is never listed, so it is refused whatever SHA256SUMS claims: that file is not signed.


class IntegrityError(ValueError):
    """A bundle file is missing, altered, or not listed: refuse to run the bundle."""


def unlisted_entries(bundle: Path, expected: set[str]) -> list[str]:
    """What lies in `bundle` besides the regular files `expected` (relative POSIX paths) and the
    folders that hold them: added files, links, devices, empty or stray folders (folders end in /)."""
    wanted = {posixpath.normpath(p) for p in expected}
    folders = {str(parent) for p in wanted for parent in PurePosixPath(p).parents if str(parent) != "."}
    found: list[str] = []
    stack = [""]
    while stack:  # no recursion: a folder nested ten thousand deep is just more entries
        rel = stack.pop()
        with os.scandir(bundle / rel if rel else bundle) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False) and not entry.is_symlink():
                    if path in folders:
                        stack.append(path)
                    else:
                        found.append(path + "/")
                elif entry.is_symlink() or not entry.is_file(follow_symlinks=False) or path not in wanted:
                    found.append(path)
    return sorted(found)


def refuse_unlisted(bundle: Path, expected: set[str], where: str) -> None:
    """IntegrityError naming the first entry of `bundle` that `where` (the list it should be in) lacks."""
    extra = unlisted_entries(bundle, expected)
    if not extra:
        return
    name = extra[0]
    if "__pycache__" in name.split("/"):
        hint = "Python's bytecode cache, which the bundle never writes: delete the __pycache__ folder"
    elif name.endswith("/") and (bundle / name / "pyvenv.cfg").is_file() or name.split("/")[0] in (".venv", "venv"):
        hint = "a virtual environment: make it outside the bundle folder (python3 -m venv ~/venvs/NAME)"
    else:
        hint = "added after packaging: remove it, or re-download the bundle from its publisher"
    more = f", nor are {len(extra) - 1} other entries" if len(extra) > 1 else ""
    raise IntegrityError(f"{name} is in the bundle but not in {where}{more}; {hint}; refusing to run it")


def read_sums(bundle: Path) -> dict[str, str]:
    """SHA256SUMS as path -> sha256."""
    try:
        text = (bundle / SUMS).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntegrityError(f"{SUMS} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{SUMS} cannot be read ({e})") from None
    # Exactly the lines `packager package` writes ("<sha256>  <path>\n", sorted): split on "\n" alone, so
    # that no other line break (a vertical tab, a form feed) makes a changed file read the same.
    lines = text.split("\n")
    listed: dict[str, str] = {}
    for line in lines[:-1]:
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64 or digest.strip("0123456789abcdef") or name in listed:
            raise IntegrityError(f"malformed line in {SUMS}: {line!r}")
        listed[name] = digest
    if lines[-1] != "" or list(listed) != sorted(listed):
        raise IntegrityError(f"{SUMS} is not as packager writes it (lines sorted by path, each ending in a newline)")
    return listed


def manifest_files(manifest: dict[str, Any], what: str = MANIFEST) -> dict[str, str]:
    """The files a manifest lists, path -> sha256 (IntegrityError when `files` is not such a list)."""
    entries = manifest.get("files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                                and isinstance(e.get("sha256"), str) for e in entries):
        raise IntegrityError(f"{what} lists no files to check; rebuild the bundle")
    return {e["path"]: e["sha256"] for e in entries}


def check_files(bundle: Path, manifest: dict[str, Any]) -> int:
    """An unsigned bundle's integrity: every file SHA256SUMS lists is present, inside the bundle and
    unchanged; SHA256SUMS and the manifest list the same files with the same sha256 (a bundle of
    several: each model's manifest too); nothing else is in the folder. The number of files checked."""
    listed = read_sums(bundle)
    root = bundle.resolve()
    for name, digest in sorted(listed.items()):
        path = (bundle / name).resolve()
        if root not in path.parents:
            raise IntegrityError(f"{SUMS} names a path outside the bundle: {name}")
        if not path.is_file():
            raise IntegrityError(f"missing file: {name}")
        if sha256_file(path) != digest:
            raise IntegrityError(f"checksum mismatch: {name} was modified after packaging")
    recorded = manifest_files(manifest)
    for path, digest in recorded.items():
        if listed.get(path) != digest:
            raise IntegrityError(f"manifest and {SUMS} disagree about {path}")
    for name in sorted(set(listed) - set(recorded) - {MANIFEST, SIGNATURE}):
        raise IntegrityError(f"{name} is in {SUMS} but not in {MANIFEST}; refusing to run it (rebuild the bundle)")
    for name, folder in (members(bundle) or {}).items():
        # each member's manifest names its files from its own folder (blobs by ../../blobs/<sha256>/...)
        for entry_path, digest in manifest_files(read_manifest(folder), f"{name}'s {MANIFEST}").items():
            path = posixpath.normpath(posixpath.join(folder.relative_to(bundle).as_posix(), entry_path))
            if listed.get(path) != digest:
                raise IntegrityError(f"{name}'s manifest and {SUMS} disagree about {path}")
    refuse_unlisted(bundle, set(listed) | {SUMS}, SUMS)
    return len(listed)
