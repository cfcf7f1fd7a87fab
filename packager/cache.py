"""The stage cache: a stage's output folder stored under a content hash of everything it depends on.

Packaging one model for several targets exports it once: the export's output (the fp32 reference
model, the tokenizer files, the io description) depends on the source's hash, the export task, the
opset and the tool versions, none of which differ between targets of the same opset.

Layout, under $PACKAGER_CACHE_DIR/stages (default ~/.cache/packager/stages):

    <stage>/<key>/meta.json     the key's inputs, the stage's data, and every file's sha256 and size
    <stage>/<key>/files/...     the stage's output folder

`key` is the sha256 of the canonical JSON of the inputs. An entry is assembled in a temporary
folder beside it (`.partial-<pid>-...`) and renamed into place once meta.json is written, so an
entry is complete or absent; a killed run's partial folder is swept by the next run
(packager/leftovers.py). An entry is
used only after each of its files has been read back against meta.json while being copied into the
run's work folder: a truncated or modified entry is removed and rebuilt, never used. The cache is an
optimisation only: a cache that cannot be written costs the next run the work, never this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.emulate import cache_dir
from packager.leftovers import CACHE_PARTIAL, cache_partial, sweep

LAYOUT = 1                 # part of every key: bump it when an entry's layout changes
META = "meta.json"
FILES = "files"
CHUNK = 1 << 20


def default_root() -> Path:
    return cache_dir() / "stages"


def cache_disabled_by_env() -> bool:
    return os.environ.get("PACKAGER_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


def key_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"layout": LAYOUT, **inputs}, sort_keys=True).encode()).hexdigest()


@dataclass
class Fetched:
    status: str                        # "hit", "miss", "corrupt" (found damaged, removed: rebuild it)
    data: dict[str, Any] | None = None
    problem: str = ""                  # what was wrong with a corrupt entry


@dataclass(frozen=True)
class StageCache:
    root: Path

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def fetch(self, stage: str, inputs: dict[str, Any], dest: Path) -> Fetched:
        """Copy the entry's files into `dest` (created) and return its data, checking every byte
        against the entry's manifest on the way. Leaves `dest` absent unless it is a hit."""
        key = key_of(inputs)
        entry = self.entry(stage, key)
        if not entry.is_dir():
            return Fetched("miss")
        try:
            meta = json.loads((entry / META).read_text(encoding="utf-8"))
            if meta.get("key") != key or not isinstance(meta.get("files"), dict):
                raise ValueError("its meta.json does not describe this entry")
            _copy_verified(entry / FILES, dest, meta["files"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            shutil.rmtree(dest, ignore_errors=True)
            if isinstance(e, OSError) and not _is_damage(e):
                # Unreadable (permissions, I/O): not ours to delete; this run does the work itself.
                return Fetched("miss", problem=f"cannot read the cache entry {entry} ({e.strerror or e})")
            _discard(entry)
            return Fetched("corrupt", problem=str(e) or type(e).__name__)
        return Fetched("hit", meta.get("data", {}))

    def store(self, stage: str, inputs: dict[str, Any], folder: Path, data: dict[str, Any]) -> str:
        """Store a copy of `folder` and `data` under the inputs' key. Returns '' when stored (or
        another run stored it first), else why it could not be (the run goes on without)."""
        key = key_of(inputs)
        entry = self.entry(stage, key)
        if _meta_key(entry) == key:
            return ""  # another run stored it meanwhile: keep theirs (a reader may be copying it)
        tmp: Path | None = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            sweep(entry.parent, CACHE_PARTIAL)
            tmp = cache_partial(entry.parent)
            files = _copy_hashed(folder, tmp / FILES)
            meta = {"key": key, "stage": stage, "inputs": inputs, "data": data, "files": files}
            (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            tmp.chmod(0o755)  # mkdtemp's 0700 would lock out other users of a shared cache
            if entry.exists() and _meta_key(entry) != key:
                _discard(entry)  # damaged: replace it
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / META).is_file():
                    raise
        except OSError as e:
            return f"could not store it in the cache {self.root} ({e.strerror or e})"
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return ""


def open_cache(setting: bool | str | os.PathLike[str] | None) -> StageCache | None:
    """True: the default cache (None, unless PACKAGER_NO_CACHE is set); a path: that folder; False: none."""
    if setting is False:
        return None
    if setting is True or setting is None:
        return None if cache_disabled_by_env() else StageCache(default_root())
    return StageCache(Path(setting).expanduser())


def _meta_key(entry: Path) -> str | None:
    """The key a complete entry's meta.json names (None when absent or unreadable)."""
    try:
        return json.loads((entry / META).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _copy_hashed(src: Path, dest: Path) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as fin, open(out, "wb") as fout:
            for chunk in iter(lambda: fin.read(CHUNK), b""):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
        files[rel] = {"sha256": h.hexdigest(), "size": size}
    return files


def _copy_verified(src: Path, dest: Path, files: dict[str, dict[str, Any]]) -> None:
    present = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
    if present != sorted(files):
        missing = sorted(set(files) - set(present))
        extra = sorted(set(present) - set(files))
        raise ValueError(f"files {'missing: ' + ', '.join(missing) if missing else 'not in its manifest: ' + ', '.join(extra)}")
    dest.mkdir(parents=True)
    for rel in sorted(files):
        if "/../" in f"/{rel}/" or rel.startswith("/"):
            raise ValueError(f"{rel!r} points outside the entry")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        with open(src / rel, "rb") as fin, open(out, "wb") as fout:
            for chunk in iter(lambda: fin.read(CHUNK), b""):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
        if size != files[rel]["size"] or h.hexdigest() != files[rel]["sha256"]:
            raise ValueError(f"{rel} does not match its recorded sha256 (truncated or modified)")


def _is_damage(e: OSError) -> bool:
    """A file missing or of the wrong kind: the entry is damaged (rather than unreadable)."""
    return isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError))


def _discard(entry: Path) -> None:
    """Remove an entry: renamed aside first, so no reader sees it half deleted."""
    aside = entry.with_name(f".partial-{os.getpid()}-discard-{entry.name}")
    try:
        os.rename(entry, aside)
    except OSError:
        aside = entry
    shutil.rmtree(aside, ignore_errors=True)

