"""Runtime compatibility: does a model load and run on the runtime version a profile pins?

The model's facts (IR version, opset imports, operators by domain, subgraphs and local functions
included) are read without its weights, and checked against what that onnxruntime release can
run: profiles/runtimes/onnxruntime.toml, one row per release, each figure with its source. Each
problem names what the model uses and the lowest release that would run it.

    facts = read_model(path)
    result = check(facts, profile)     # Compatibility: ok, problems, notes, needs
    require(result, "model.onnx")      # PackagerError (exit 11) with one sentence, unless ok
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import onnx

from packager.errors import ExitCode, PackagerError
from packager.paths import profiles_dir
from packager.profile_types import Profile

TABLE = "runtimes/onnxruntime.toml"
ONNX_DOMAIN = "ai.onnx"
ML_DOMAIN = "ai.onnx.ml"
MS_DOMAIN = "com.microsoft"
BASES = {"documented", "derived", "verified", "lower-bound", "predates", "inferred"}


# ---------------------------------------------------------------------------------------------
# The runtime table


@dataclass(frozen=True)
class Release:
    version: str                   # minor release, "1.21": covers 1.21.0, 1.21.1 ...
    ir_version: int                # highest IR version it reads
    opset: int                     # highest ai.onnx opset it implements
    ml_opset: int                  # highest ai.onnx.ml opset it implements
    basis: str                     # documented | derived | verified | lower-bound


@dataclass(frozen=True)
class ContribOp:
    domain: str
    op: str
    since: str                     # the first release whose CPU provider runs it
    basis: str
    source: str


@dataclass(frozen=True)
class Variant:
    """A newer form of an operator (an attribute value) that needs a newer release."""

    domain: str
    op: str
    attribute: str
    value: int | str
    since: str
    basis: str
    source: str
    arch: str = ""                 # only on this device.arch ("" = everywhere)


@dataclass(frozen=True)
class RuntimeTable:
    packages: tuple[str, ...]
    releases: dict[str, Release]   # by minor version, oldest first
    contrib: dict[tuple[str, str], ContribOp]
    variants: tuple[Variant, ...]
    source: str

    def release(self, version: str) -> Release | None:
        return self.releases.get(minor(version))

    def lowest(self, ok: Any) -> str | None:
        """The oldest release for which ok(release) holds, as "1.23.0"; None when none does."""
        return next((f"{r.version}.0" for r in self.releases.values() if ok(r)), None)

    def span(self) -> str:
        versions = list(self.releases)
        return f"{versions[0]} to {versions[-1]}"


def minor(version: str) -> str:
    return ".".join(version.strip().split(".")[:2])


def version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in minor(version).split("."))
    except ValueError:
        return (0,)


def _table_error(where: str, problem: str) -> PackagerError:
    return PackagerError(f"{where}: {problem}; fix the runtime table.", ExitCode.BAD_PROFILE)


@functools.lru_cache(maxsize=4)
def load_table(path: Path | None = None) -> RuntimeTable:
    """The onnxruntime table (profiles/runtimes/onnxruntime.toml by default), validated."""
    path = path or profiles_dir() / TABLE
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise _table_error(where, f"cannot read it ({e})") from None
    releases = []
    for version, row in data.get("release", {}).items():
        if not isinstance(row, dict) or set(row) != {"ir_version", "opset", "ml_opset", "basis"}:
            raise _table_error(where, f"release {version!r} needs exactly ir_version, opset, ml_opset and basis")
        if version_key(version) == (0,) or minor(version) != version:
            raise _table_error(where, f"release {version!r} is not a MAJOR.MINOR version")
        if not all(isinstance(row[k], int) and not isinstance(row[k], bool) and row[k] > 0
                   for k in ("ir_version", "opset", "ml_opset")) or row["basis"] not in BASES:
            raise _table_error(where, f"release {version!r} has a figure that is not a positive integer, "
                                      "or an unknown basis")
        releases.append(Release(version, row["ir_version"], row["opset"], row["ml_opset"], row["basis"]))
    if not releases:
        raise _table_error(where, "it lists no release")
    releases.sort(key=lambda r: version_key(r.version))
    contrib = {}
    for domain, ops in data.get("contrib", {}).items():
        for op, row in ops.items():
            if not isinstance(row, dict) or minor(str(row.get("since", ""))) not in {r.version for r in releases} \
                    or row.get("basis") not in BASES:
                raise _table_error(where, f"contrib {domain} {op} needs a listed `since` release and a known basis")
            contrib[(domain, op)] = ContribOp(domain, op, row["since"], row["basis"], row.get("source", ""))
    variants = []
    for row in data.get("variant", []):
        try:
            variants.append(Variant(**row))
        except TypeError as e:
            raise _table_error(where, f"variant {row!r} is malformed ({e})") from None
        if (variants[-1].domain, variants[-1].op) not in contrib or minor(variants[-1].since) not in \
                {r.version for r in releases}:
            raise _table_error(where, f"variant of {row.get('op')!r} names no listed contrib operator or release")
    return RuntimeTable(tuple(data.get("packages", [])), {r.version: r for r in releases}, contrib,
                        tuple(variants), where)


# ---------------------------------------------------------------------------------------------
# The model's facts


@dataclass(frozen=True)
class ModelFacts:
    name: str                                  # for messages: the file name
    ir_version: int
    opsets: dict[str, int]                     # domain ("ai.onnx" for "") -> version
    ops: dict[tuple[str, str], int]            # (domain, op_type) -> nodes, subgraphs and functions included
    functions: frozenset[tuple[str, str]]      # local functions (domain, name): calls to them are not operators
    attributes: dict[tuple[str, str, str], frozenset[Any]]  # (domain, op, attribute) -> values seen (int/str)

    def histogram(self) -> list[dict[str, Any]]:
        """Operators by count, most used first."""
        rows = sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"domain": d, "op_type": op, "count": n} for (d, op), n in rows]

    def contrib_ops(self) -> list[str]:
        return sorted(f"{d}.{op}" for d, op in self.ops if d not in (ONNX_DOMAIN, ML_DOMAIN)
                      and (d, op) not in self.functions)


def _domain(name: str) -> str:
    return ONNX_DOMAIN if name in ("", ONNX_DOMAIN) else name


def load(path: Path) -> onnx.ModelProto:
    """The model's graph without its weights' external data; a damaged file is exit code 5."""
    try:
        return onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        raise PackagerError(f"{path}: no such file; check the path.", ExitCode.BAD_INPUT) from None
    except Exception as e:  # DecodeError and friends from a file that is not a model
        raise PackagerError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-export it.",
                            ExitCode.BAD_INPUT) from None


def facts_of(model: onnx.ModelProto, name: str) -> ModelFacts:
    """IR version, opset imports and operator histogram, walking subgraphs and local functions."""
    ops: Counter[tuple[str, str]] = Counter()
    attributes: dict[tuple[str, str, str], set[Any]] = {}

    def walk(nodes: Any) -> None:
        for node in nodes:
            key = (_domain(node.domain), node.op_type)
            ops[key] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.INT:
                    attributes.setdefault((*key, attr.name), set()).add(attr.i)
                elif attr.type == onnx.AttributeProto.STRING:
                    attributes.setdefault((*key, attr.name), set()).add(attr.s.decode("utf-8", "replace"))
                elif attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(model.graph.node)
    for function in model.functions:
        walk(function.node)
    opsets: dict[str, int] = {}
    for imp in model.opset_import:
        opsets[_domain(imp.domain)] = max(opsets.get(_domain(imp.domain), 0), imp.version)
    return ModelFacts(name, model.ir_version, opsets, dict(ops),
                      frozenset((_domain(f.domain), f.name) for f in model.functions),
                      {k: frozenset(v) for k, v in attributes.items()})


def read_model(path: Path, name: str | None = None) -> ModelFacts:
    return facts_of(load(path), name or path.name)


def parameters(model: onnx.ModelProto) -> int:
    """Elements of the initializers and of Constant nodes' tensors (some exporters keep weights there),
    subgraphs' and external data's included: counted from the shapes, no data read."""

    def walk(graph: onnx.GraphProto) -> int:
        n: int = sum(math.prod(t.dims) for t in graph.initializer)
        n += sum(math.prod(s.dims) for s in graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                if (node.op_type == "Constant" and node.domain in ("", ONNX_DOMAIN)
                        and attr.type == onnx.AttributeProto.TENSOR):
                    n += math.prod(attr.t.dims)
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += walk(attr.g)
                n += sum(walk(g) for g in attr.graphs)
        return n

    return walk(model.graph)


# ---------------------------------------------------------------------------------------------
# The check


@dataclass(frozen=True)
class Problem:
    kind: str                      # "ir" | "opset" | "operator"
    subject: str                   # "IR version 11", "ai.onnx opset 23", "com.microsoft GatherBlockQuantized"
    clause: str                    # "which onnxruntime 1.21.0 on jetson-orin-nano does not have (...)"
    fix: str                       # what to do, for the end of the sentence
    needs: str | None              # lowest release that runs it ("1.23.0"), None when no listed one does

    def head(self, model: str) -> str:
        verb = {"ir": "is saved with", "opset": "imports"}.get(self.kind, "uses")
        return f"{model} {verb} {self.subject}, {self.clause}"

    def sentence(self, model: str) -> str:
        return f"{self.head(model)}; {self.fix}."


@dataclass(frozen=True)
class Compatibility:
    target: str
    package: str
    version: str
    status: str                    # "ok" | "incompatible" | "unknown" (the runtime version is not in the table)
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    release: Release | None = None
    facts: ModelFacts | None = None
    reason: str = ""               # for "unknown": why

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def needs(self) -> str | None:
        """The lowest listed release that runs everything the model uses (None when none does)."""
        if not self.problems or any(p.needs is None for p in self.problems):
            return None
        return max((p.needs for p in self.problems if p.needs), key=version_key)

    def message(self) -> str:
        """One sentence for the first problem (and how many more there are)."""
        if self.status == "unknown":
            return self.reason
        if not self.problems:
            return ""
        first = self.problems[0]
        model = self.facts.name if self.facts else "the model"
        rest = len(self.problems) - 1
        more = f" (and {rest} more problem{'s' if rest > 1 else ''}: `packager inspect` lists them)" if rest else ""
        return f"{first.head(model)}{more}; {first.fix}."

    def to_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "target": self.target,
            "runtime": f"{self.package}=={self.version}",
            "status": self.status,
            "ok": self.ok,
            "runtime_limits": None if self.release is None else {
                "table_release": self.release.version, "ir_version": self.release.ir_version,
                "opset": self.release.opset, "ml_opset": self.release.ml_opset, "basis": self.release.basis},
            "ir_version": f.ir_version if f else None,
            "opsets": dict(f.opsets) if f else {},
            "contrib_ops": f.contrib_ops() if f else [],
            "problems": [p.sentence(f.name if f else "the model") for p in self.problems],
            "needs": self.needs,
            "notes": list(self.notes),
            **({"reason": self.reason} if self.reason else {}),
        }


class _Pinned(TypedDict):
    """The fields of a Compatibility that name the runtime the profile pins, and the model's facts."""
    target: str
    package: str
    version: str
    facts: ModelFacts


def _host_schemas() -> set[tuple[str, str]]:
    """The operators the installed onnxruntime registers (to judge ops the table does not list)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    return {(_domain(s.domain), s.name) for s in C.get_all_operator_schema()}


def _onnx_since(domain: str, op: str, opset: int) -> int | None:
    try:
        return int(onnx.defs.get_schema(op, max_inclusive_version=opset, domain="" if domain == ONNX_DOMAIN else domain)
                   .since_version)
    except onnx.defs.SchemaError:
        return None


# Element types that need a newer IR than their opset implies (onnx/onnx docs/IR.md, "IR version").
_TYPE_IR = {onnx.TensorProto.INT4: 10, onnx.TensorProto.UINT4: 10, onnx.TensorProto.FLOAT8E4M3FN: 9,
            onnx.TensorProto.FLOAT8E4M3FNUZ: 9, onnx.TensorProto.FLOAT8E5M2: 9, onnx.TensorProto.FLOAT8E5M2FNUZ: 9}


def lower_ir_version(path: Path, profile: Profile, table: RuntimeTable | None = None) -> dict[str, int] | None:
    """Re-stamp `path` with the runtime's highest IR version when the model is newer only by its
    stamp: a file saved by a recent onnx (IR 14) whose opsets and types an older runtime's IR reads.
    The IR version is the file format's; the graph stays as it is. Returns {from, to} when lowered."""
    table = table or load_table()
    release = table.release(profile.runtime.version) if profile.runtime.package in table.packages else None
    model = onnx.load(path, load_external_data=False)
    if release is None or model.ir_version <= release.ir_version or model.functions:
        return None  # functions' IR rules changed across versions: leave those to the check
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    types = {i.data_type for i in model.graph.initializer} | {v.type.tensor_type.elem_type
                                                             for v in [*model.graph.input, *model.graph.output]}
    needed = max([needed, *(_TYPE_IR.get(t, 0) for t in types)])
    if needed > release.ir_version:
        return None
    lowered = {"from": model.ir_version, "to": release.ir_version}
    model.ir_version = release.ir_version
    onnx.save(model, path)  # external data stays where it is: only the references are written
    return lowered


def check(facts: ModelFacts, profile: Profile, table: RuntimeTable | None = None,
          setting: str = "runtime.version") -> Compatibility:
    """Check the model against the runtime the profile pins; never raises for an incompatible model.
    `setting` names the profile key that pins it, for the fix (mobile.android_version for a phone app)."""
    table = table or load_table()
    rt = profile.runtime
    runtime = f"{rt.package} {rt.version}"
    base: _Pinned = {"target": profile.name, "package": rt.package, "version": rt.version, "facts": facts}
    release = table.release(rt.version) if rt.package in table.packages else None
    if release is None:
        known = ("packages " + ", ".join(table.packages) if rt.package not in table.packages
                 else f"releases {table.span()}")
        reason = (f"{runtime} (pinned by {profile.name}) is not in packager's runtime table ({table.source} knows "
                  f"{known}); pin a listed runtime, or add the release's figures to the table with their sources.")
        return Compatibility(status="unknown", reason=reason, **base)

    where = f"which {runtime} on {profile.name}"
    raise_it = f"raise {setting} in the profile"
    problems: list[Problem] = []
    notes: list[str] = []

    if facts.ir_version > release.ir_version:
        needs = table.lowest(lambda r: r.ir_version >= facts.ir_version)
        problems.append(Problem(
            "ir", f"IR version {facts.ir_version}",
            f"{where} cannot read (it reads up to IR {release.ir_version}; {_needs(f'IR {facts.ir_version}', needs)})",
            f"{raise_it} or re-export the model for an older runtime", needs))

    limits = {ONNX_DOMAIN: ("opset", release.opset), ML_DOMAIN: ("ml_opset", release.ml_opset)}
    used = {d for d, _ in facts.ops} | {ONNX_DOMAIN}
    for domain, version in sorted(facts.opsets.items()):
        if domain not in used:
            continue  # an import no operator uses asks nothing of the runtime (the quantizer declares several)
        if domain in limits:
            attr, limit = limits[domain]
            if version <= limit:
                continue
            needs = table.lowest(lambda r, a=attr, v=version: getattr(r, a) >= v)
            # An operator's version at opset N is its schema's since_version: the newest of them is the
            # lowest opset the model keeps every operator at, so a restamp to `limit` is exact when it fits.
            newest = max((s for (d, op) in facts.ops if d == domain
                          for s in [_onnx_since(d, op, version)] if s is not None), default=1)
            fix = raise_it + (f" or convert the model to opset {limit} with onnx.version_converter (none of its "
                              f"operators changed after opset {newest})" if newest <= limit else
                              f" or re-export the model at opset {limit} or lower")
            problems.append(Problem("opset", f"{domain} opset {version}",
                                    f"{where} does not implement (it implements up to {limit}; "
                                    f"{_needs(f'opset {version}', needs)})", fix, needs))
        elif domain == MS_DOMAIN and version > 1:
            problems.append(Problem("opset", f"{domain} opset {version}",
                                    f"{where} does not have (it has version 1 only; "
                                    "no release in packager's table has it)",
                                    "re-export the model", None))

    host: set[tuple[str, str]] | None = None
    for domain, op in sorted(facts.ops):
        if (domain, op) in facts.functions:
            continue
        if domain in (ONNX_DOMAIN, ML_DOMAIN):
            imported = facts.opsets.get(domain, 1)
            if _onnx_since(domain, op, imported) is not None:
                continue  # a standard operator: its version follows the opset, checked above
            first = _onnx_since(domain, op, 10**6)
            # A standard operator from a later opset than the model imports is a broken model, unless onnxruntime
            # defines it below that opset itself (its LayerNorm fusion writes LayerNormalization at any opset):
            # then the contrib table says from which release.
            if first is not None and (domain, op) not in table.contrib:
                problems.append(Problem("operator", f"{domain} {op}",
                                        f"which {domain} opset {imported} does not define "
                                        f"(it arrived in opset {first})", "re-export the model", None))
                continue
        entry = table.contrib.get((domain, op))
        if entry is not None:
            # The operator itself, or the newest of its forms the model uses (an attribute value, on this arch).
            since, subject, verb = entry.since, f"{domain} {op}", "does not have"
            for v in table.variants:
                if (v.domain, v.op) == (domain, op) and v.arch in ("", profile.device.arch) \
                        and v.value in facts.attributes.get((domain, op, v.attribute), frozenset()) \
                        and version_key(v.since) > version_key(since):
                    since, subject = v.since, f"{domain} {op} with {v.attribute}={v.value}"
                    verb = f"does not run{f' on {v.arch}' if v.arch else ''}"
            if version_key(since) > version_key(release.version):
                needs = f"{minor(since)}.0"
                problems.append(Problem("operator", subject, f"{where} {verb} (it needs {needs} or newer)",
                                        f"{raise_it} or choose another recipe", needs))
            continue
        if host is None:
            host = _host_schemas()
        if (domain, op) in host:
            import onnxruntime

            notes.append(f"{domain} {op} is not in packager's runtime table: onnxruntime {onnxruntime.__version__} on "
                         f"this host has it, but its first release is unknown, so {runtime} was not checked for it")
            continue
        custom = domain not in (ONNX_DOMAIN, ML_DOMAIN, MS_DOMAIN)
        problems.append(Problem(
            "operator", f"{'custom operator' if custom else 'operator'} {domain} {op}",
            "which no onnxruntime release provides" + (" without a custom-operator library" if custom else ""),
            "replace it, or export the model without it", None))

    if release.basis == "lower-bound":
        notes.append(f"the table's figures for {rt.package} {release.version} are lower bounds (no direct source), "
                     "so a refusal may be stricter than the runtime itself")
    order = {"ir": 0, "opset": 1, "operator": 2}
    problems.sort(key=lambda p: order[p.kind])
    return Compatibility(status="incompatible" if problems else "ok", problems=tuple(problems), notes=tuple(notes),
                         release=release, **base)


def _needs(what: str, version: str | None) -> str:
    return f"{what} needs {version} or newer" if version else f"no onnxruntime release in packager's table has {what}"


def require(result: Compatibility) -> None:
    """Raise the result's one-sentence error unless the model runs on the target's runtime."""
    if result.status == "unknown":
        raise PackagerError(result.message(), ExitCode.BAD_PROFILE)
    if not result.ok:
        raise PackagerError(result.message(), ExitCode.RUNTIME_INCOMPATIBLE)
