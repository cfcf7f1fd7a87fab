"""The bundle's layout: where its files are, its manifest, and the members of a bundle of several models."""

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The bundle folder: this package sits in it, as runtime/.
HERE = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
SAMPLE_INPUTS = "samples/inputs.npz"
SAMPLE_EXPECTED = "samples/expected.npz"
SAMPLE_TEXTS = "samples/texts.json"
SAMPLE_EVAL = "samples/eval.jsonl"   # --eval: the first of the user's cases, rerun by the smoke test
SIGNATURE = "manifest.sig"           # base64 Ed25519 signature over the exact bytes of manifest.json
PUBLIC_KEY_ENV = "PACKAGER_PUBLIC_KEY"
SAMPLE_MEDIA = "samples/media.json"   # encoder-decoders: the raw sample inputs (files in samples/, or texts)
SUITE = "suite"                      # manifest kind of a bundle of several models (models/<name>/, blobs/)


def sha256_file(path: Path) -> str:
    """The checksum SHA256SUMS and the manifest record for each bundle file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: Path = HERE) -> dict[str, Any]:
    """The bundle's manifest.json; ValueError (one sentence) when it is not a JSON object."""
    try:
        with open(bundle / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested past the parser's depth
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{MANIFEST} is not valid JSON ({reason}); re-download or rebuild the bundle") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{MANIFEST} holds a JSON {type(manifest).__name__}, not an object; re-download or rebuild "
                         "the bundle")
    return manifest


def members(bundle: Path = HERE) -> dict[str, Path] | None:
    """A bundle of several models: each member's folder (its manifest, samples and tokenizer; the
    component files it loads sit in blobs/, by hash) by name. None for a bundle of one model."""
    manifest = read_manifest(bundle)
    if manifest.get("kind") != SUITE:
        return None
    return {m["name"]: bundle / m["path"] for m in manifest["models"]}


def member(bundle: Path, name: str | None) -> Path:
    """The folder of the model to run: `bundle` itself, or, in a bundle of several, the member `name`."""
    found = members(bundle)
    if found is None:
        if name is not None:
            raise ValueError(f"this bundle holds one model; drop --model {name}")
        return bundle
    if name not in found:
        raise ValueError(f"this bundle holds several models ({', '.join(found)}); pick one with --model NAME"
                         if name is None else f"no model {name!r} in this bundle; it holds {', '.join(found)}")
    return found[name]


SUMS = "SHA256SUMS"


def configured_public_key(option: Path | None = None) -> Path | None:
    """The public key this device trusts: --public-key, else $PACKAGER_PUBLIC_KEY, else none."""
    if option is not None:
        return option
    env = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return Path(env) if env else None


# ---------------------------------------------------------------- the typed reader
# The manifest is the contract between the build host and the device: each part below is a dataclass whose
# fields are its keys (schemas/manifest.schema.json describes the same JSON). `read_record` checks a JSON
# object against a dataclass's annotations and refuses, in one sentence naming the key, what packager does
# not write; `record_dict` turns a record back into the JSON it came from. The build host reads manifests
# with these same functions (packager/runtime_files.py loads this package) and types its own records with
# them (packager/records.py).

REST = "more"   # a record with a field of this name is open: it keeps the keys it does not name there


class ManifestError(ValueError):
    """A manifest that does not have the shape packager writes: which key, what is wrong, the fix."""


def _problem(where: str, what: str) -> ManifestError:
    return ManifestError(f"{MANIFEST}: {where or 'the top level'} {what}; rebuild the bundle with packager")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "an object"}


def _scalar(hint: Any, value: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _convert(hint: Any, value: Any, where: str) -> Any:
    """`value` as the annotation `hint` has it: a record, a list or object of them, or a JSON scalar."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(option, value, where)
            except ManifestError:
                if len(options) == 1:
                    raise
        raise _problem(where, f"is {_json_kind(value)}, not " + " or ".join(_name(o) for o in options))
    if dataclasses.is_dataclass(hint):
        return read_record(hint, value, where)
    base = origin or hint
    if not _scalar(base, value):
        raise _problem(where, f"is {_json_kind(value)}, not {_name(hint)}")
    if base is list and args:
        return [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if base is dict and args:
        return {key: _convert(args[1], item, f"{where}.{key}") for key, item in value.items()}
    return value


def _name(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "an object"
    return _EXPECTED.get(typing.get_origin(hint) or hint, str(hint))


def read_record(cls: Any, data: Any, where: str = "") -> Any:
    """The record `cls` (a dataclass) from the JSON object `data` at `where` ("runtime.io"): every key the
    record needs, each of the annotated type; ManifestError (one sentence) otherwise."""
    if not isinstance(data, dict):
        raise _problem(where, f"is {_json_kind(data)}, not an object")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    names = set()
    for f in dataclasses.fields(cls):
        if f.name == REST:
            continue
        names.add(f.name)
        at = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _problem(at, "is missing")
    unknown = {k: v for k, v in data.items() if k not in names}
    if unknown and REST not in hints:
        raise _problem(where, f"has a key packager does not write ({next(iter(unknown))!r})")
    if unknown:
        values[REST] = unknown
    return cls(**values)


def record_dict(record: Any) -> dict[str, Any]:
    """The JSON object of a record: its fields in order (an optional one, None, left out), then its `more`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == REST:
            out.update(value)
        elif not (value is None and f.default is None):
            out[f.name] = _json(value)
    return out


def _json(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record_dict(value)
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


class Record:
    """from_dict / to_dict for the manifest's parts (frozen dataclasses)."""

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Any:
        return read_record(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)


@dataclass(frozen=True)
class Tensor(Record):
    name: str
    dtype: str
    shape: list[int | str | None]


@dataclass(frozen=True)
class Io(Record):
    """runtime.io: what the model reads and answers, and how its family feeds it."""

    kind: str                                   # "text" | "tensor" | "decoder" | "seq2seq"
    inputs: list[Tensor]
    outputs: list[Tensor]
    checked_outputs: list[str]
    primary_outputs: list[str]
    tokenizer: str | None = None
    max_length: int | None = None
    eos_token_ids: list[int] | None = None
    kv: dict[str, Any] | None = None
    modality: str | None = None
    components: dict[str, Any] | None = None
    decoder_start_ids: list[int] | None = None
    preprocess: dict[str, Any] | None = None
    logits: str | None = None                   # "last": the last position's only (decoders, the E-class exporter)
    soft: dict[str, Any] | None = None          # decoders taking soft tokens (soft.py): inputs, hidden, pad_token_id


@dataclass(frozen=True)
class Session(Record):
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: str
    execution_mode: str
    cpu_mem_arena: bool
    mem_pattern: bool
    config: dict[str, str] | None = None


@dataclass(frozen=True)
class RuntimeSpec(Record):
    """runtime: what run.py needs to load and feed the model the way the target does."""

    model: str
    package: str
    version: str
    providers: list[str]
    provider_options: dict[str, dict[str, Any]]
    session: Session
    io: Io
    components: dict[str, str] | None = None   # multi-component models: every component's file
    context: int | None = None                 # decoders: the KV cache length the deployment holds
    mapped: list[str] | None = None            # lookup-table files beside `model`, read a row per token


@dataclass(frozen=True)
class Source(Record):
    kind: str
    name: str
    sha256: str
    files: int
    task: str
    architecture: str
    adapter: dict[str, Any] | None = None


@dataclass(frozen=True)
class Recipe(Record):
    name: str
    params: dict[str, Any]
    quantized_nodes: int
    note: str
    extra: dict[str, Any]
    fit: dict[str, Any] | None = None           # --fit auto (packager/records.py Fit)
    coverage: dict[str, Any] | None = None      # weight bytes at each precision (packager/coverage.py)


@dataclass(frozen=True)
class FileEntry(Record):
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class EvalGate(Record):
    file: str
    cases: int
    packaged_score: float
    reference_score: float
    tolerance: float
    min_score: float


@dataclass(frozen=True)
class Smoke(Record):
    """The thresholds the device's smoke test holds the bundle to."""

    expected: str
    min_cosine: float | None = None
    min_token_agreement: float | None = None
    min_logits_cosine: float | None = None
    eval: EvalGate | None = None


@dataclass(frozen=True)
class Budget(Record):
    """memory, as the device reads it: the budget and the verdict (packager/records.py Memory is the whole)."""

    budget_bytes: int
    verdict_basis: str
    fits: bool
    more: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltWith(Record):
    packager: str
    onnxruntime: str
    python: str
    machine: str


@dataclass(frozen=True)
class Signature(Record):
    algorithm: str
    public_key_sha256: str


@dataclass(frozen=True)
class Manifest(Record):
    """The manifest.json of one model's bundle."""

    schema_version: int
    name: str
    target: str
    source: Source
    profile: dict[str, Any]
    recipe: Recipe
    runtime: RuntimeSpec
    inputs: list[Tensor]
    outputs: list[Tensor]
    files: list[FileEntry]
    memory: Budget
    accuracy: dict[str, Any]
    smoke: Smoke
    built_with: BuiltWith
    compatibility: dict[str, Any] | None = None
    mobile: dict[str, Any] | None = None
    built_at: str | None = None
    signature: Signature | None = None


@dataclass(frozen=True)
class SuiteModel(Record):
    name: str
    path: str
    source: dict[str, Any]
    recipe: str
    kind: str


@dataclass(frozen=True)
class SuiteManifest(Record):
    """The manifest.json of a bundle of several models (models/<name>/ each hold a Manifest)."""

    schema_version: int
    kind: str
    name: str
    target: str
    profile: dict[str, Any]
    runtime: dict[str, Any]
    models: list[SuiteModel]
    blobs: list[dict[str, Any]]
    files: list[FileEntry]
    memory: Budget
    built_with: dict[str, Any]
    built_at: str | None = None
    signature: Signature | None = None


def manifest_record(manifest: dict[str, Any]) -> Manifest | SuiteManifest:
    """A manifest read (read_manifest) as its record: ManifestError when it lacks a key or has one of another type."""
    if manifest.get("kind") == SUITE:
        return SuiteManifest.from_dict(manifest)
    return Manifest.from_dict(manifest)


def load_manifest(bundle: Path = HERE) -> Manifest | SuiteManifest:
    """The bundle's manifest.json, checked and typed."""
    return manifest_record(read_manifest(bundle))


def read_runtime(bundle: Path = HERE) -> RuntimeSpec:
    """The manifest's runtime section: all that run.py needs (the fit stage's staged folder has no more)."""
    return RuntimeSpec.from_dict(read_manifest(bundle).get("runtime"), "runtime")
