"""The stage cache: a stage's output folder stored under a content hash of everything it depends on.

Packaging one model for several targets exports it once: the export's output (the fp32 reference
model, the tokenizer files, the io description) depends on the source's hash, the export task, the
opset and the tool versions, none of which differ between targets of the same opset.

Layout, under $PACKAGER_CACHE_DIR/stages (default ~/.cache/packager/stages):

    <stage>/<key>/meta.json     the key's inputs, the stage's data, every file's sha256 and size, and
                                the sha256 of all that (`content`)
    <stage>/<key>/files/...     the stage's output folder

`key` is the sha256 of the canonical JSON of the inputs. An entry is assembled in a temporary
folder beside it (`.partial-<pid>-...`) and renamed into place once meta.json is written, so an
entry is complete or absent; a killed run's partial folder is swept by the next run
(packager/leftovers.py). An entry is used only after its meta.json has parsed into a `Meta` whose
`content` matches what it holds (so an edited `data` is caught as surely as an edited file), and
each of its files has been read back against it while being copied into the run's work folder: a
damaged, truncated or modified entry is removed and rebuilt, never used. The cache is an
optimisation only: a cache that cannot be written costs the next run the work, never this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packager.leftovers import CACHE_PARTIAL, cache_partial, sweep
from packager.paths import cache_dir

LAYOUT = 2                 # part of every key: bump it when an entry's layout changes (2: `content`)
META = "meta.json"
FILES = "files"
CHUNK = 1 << 20
META_LIMIT = 64 << 20      # a stage's data is an io description (kilobytes): a larger meta.json is damage
SHA256 = re.compile(r"[0-9a-f]{64}")


def default_root() -> Path:
    return cache_dir() / "stages"


def cache_disabled_by_env() -> bool:
    return os.environ.get("PACKAGER_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


def key_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"layout": LAYOUT, **inputs}, sort_keys=True).encode()).hexdigest()


class BadMeta(ValueError):
    """An entry's meta.json is not a `Meta`: the entry is damaged."""


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


@dataclass(frozen=True)
class Meta:
    """What an entry's meta.json holds. `content` is the sha256 of the rest, so that an edit of any of
    it (the stage's data, which no file hash covers) makes the entry damaged rather than used."""
    key: str
    stage: str
    inputs: dict[str, Any]
    data: dict[str, Any]
    files: dict[str, FileRecord]
    content: str

    @staticmethod
    def make(key: str, stage: str, inputs: dict[str, Any], data: dict[str, Any],
             files: dict[str, FileRecord]) -> Meta:
        return Meta(key, stage, inputs, data, files, _content(key, stage, inputs, data, files))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def _content(key: str, stage: str, inputs: dict[str, Any], data: dict[str, Any],
             files: Mapping[str, FileRecord]) -> str:
    record = {"key": key, "stage": stage, "inputs": inputs, "data": data,
              "files": {rel: asdict(f) for rel, f in files.items()}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def parse_meta(text: str) -> Meta:
    """The `Meta` that `text` holds; BadMeta (a short reason) for anything else."""
    try:
        return _parse_meta(text)
    except RecursionError:   # JSON nested deeper than Python's parser goes
        raise BadMeta("its meta.json is nested too deeply") from None


def _parse_meta(text: str) -> Meta:
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise BadMeta(f"its meta.json is not JSON ({e})") from None
    fields = ("key", "stage", "inputs", "data", "files", "content")
    if not isinstance(raw, dict) or sorted(raw) != sorted(fields):
        raise BadMeta(f"its meta.json is not an object of {', '.join(fields)}")
    key, stage, inputs, data, files, content = (raw[f] for f in fields)
    if not (_is_sha256(key) and isinstance(stage, str) and isinstance(inputs, dict) and isinstance(data, dict)
            and isinstance(files, dict) and _is_sha256(content)):
        raise BadMeta("its meta.json has a field of the wrong type")
    records = {rel: _file_record(rel, f) for rel, f in files.items()}
    if _content(key, stage, inputs, data, records) != content:
        raise BadMeta("its meta.json does not match its recorded content sha256 (edited)")
    return Meta(key, stage, inputs, data, records, content)


def _file_record(rel: str, raw: Any) -> FileRecord:
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        raise BadMeta(f"its meta.json names {rel!r}, which points outside the entry")
    if not (isinstance(raw, dict) and sorted(raw) == ["sha256", "size"] and _is_sha256(raw["sha256"])
            and type(raw["size"]) is int and raw["size"] >= 0):
        raise BadMeta(f"its meta.json's record of {rel!r} is not a sha256 and a size")
    return FileRecord(raw["sha256"], raw["size"])


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and SHA256.fullmatch(value) is not None


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

    def fetch(self, stage: str, inputs: dict[str, Any], dest: Path,
              data_problem: Callable[[dict[str, Any]], str] = lambda data: "") -> Fetched:
        """Copy the entry's files into `dest` (created) and return its data, checking every byte
        against the entry's manifest on the way. Leaves `dest` absent unless it is a hit.
        `data_problem` says what is wrong with the data the stage needs ('' when nothing is)."""
        key = key_of(inputs)
        entry = self.entry(stage, key)
        if not entry.is_dir():
            return Fetched("miss")
        try:
            meta = _read_meta(entry)
            if meta.key != key or meta.stage != stage:
                raise BadMeta("its meta.json describes another entry")
            if problem := data_problem(meta.data):
                raise BadMeta(problem)
            _copy_verified(entry / FILES, dest, meta.files)
        except (OSError, ValueError) as e:
            shutil.rmtree(dest, ignore_errors=True)
            if isinstance(e, OSError) and not _is_damage(e):
                # Unreadable (permissions, I/O): not ours to delete; this run does the work itself.
                return Fetched("miss", problem=f"cannot read the cache entry {entry} ({e.strerror or e})")
            _discard(entry)
            return Fetched("corrupt", problem=f"{entry}: {e or type(e).__name__}")
        return Fetched("hit", meta.data)

    def store(self, stage: str, inputs: dict[str, Any], folder: Path, data: dict[str, Any]) -> str:
        """Store a copy of `folder` and `data` under the inputs' key. Returns '' when stored (or
        another run stored it first), else why it could not be (the run goes on without)."""
        key = key_of(inputs)
        entry = self.entry(stage, key)
        if _is_whole(entry, key):
            return ""  # another run stored it meanwhile: keep theirs (a reader may be copying it)
        tmp: Path | None = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            sweep(entry.parent, CACHE_PARTIAL)
            tmp = cache_partial(entry.parent)
            files = _copy_hashed(folder, tmp / FILES)
            (tmp / META).write_text(Meta.make(key, stage, inputs, data, files).to_json(), encoding="utf-8")
            tmp.chmod(0o755)  # mkdtemp's 0700 would lock out other users of a shared cache
            if entry.exists() and not _is_whole(entry, key):
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


def _read_meta(entry: Path) -> Meta:
    with open(entry / META, "rb") as f:
        raw = f.read(META_LIMIT + 1)
    if len(raw) > META_LIMIT:
        raise BadMeta(f"its meta.json is over {META_LIMIT >> 20} MiB")
    return parse_meta(raw.decode("utf-8"))   # UnicodeDecodeError is a ValueError: damage too


def _is_whole(entry: Path, key: str) -> bool:
    """Whether `entry` holds a meta.json of `key` that parses (its files are checked when fetched)."""
    try:
        return _read_meta(entry).key == key
    except (OSError, ValueError):
        return False


def _copy_hashed(src: Path, dest: Path) -> dict[str, FileRecord]:
    files: dict[str, FileRecord] = {}
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
        files[rel] = FileRecord(h.hexdigest(), size)
    return files


def _copy_verified(src: Path, dest: Path, files: Mapping[str, FileRecord]) -> None:
    present = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
    if present != sorted(files):
        missing = sorted(set(files) - set(present))
        extra = sorted(set(present) - set(files))
        raise ValueError("files " + ("missing: " + ", ".join(missing) if missing
                                     else "not in its manifest: " + ", ".join(extra)))
    dest.mkdir(parents=True)
    for rel in sorted(files):   # each a path inside the entry: parse_meta checked
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        with open(src / rel, "rb") as fin, open(out, "wb") as fout:
            for chunk in iter(lambda: fin.read(CHUNK), b""):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
        if size != files[rel].size or h.hexdigest() != files[rel].sha256:
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

