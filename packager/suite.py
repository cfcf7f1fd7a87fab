"""A bundle of several models for one target (`packager package A B --target T`): an assistant's
speech model, vision model and LLM, deployed and budgeted together.

Each model goes through the whole pipeline on its own (verified, and fitted alone against the
budget); then the bundle is assembled from their finished folders:

    <name>-<target>/
      manifest.json        kind "suite": the models, the blobs, the memory of all of them together
      models/<model>/      each model's manifest.json, samples/ and tokenizer files
      blobs/<key>/         each component file a model loads, with its external data and, on phones,
                           its .ort; <key> is the sha256 over the names and sha256s of the component's
                           source files (the .onnx and its data), so a component two models share (a
                           common encoder) is stored once; each model's manifest names it by that path
      run.py, smoke_test.py, requirements.txt, README.md, SHA256SUMS   one set for all

The verdict is for all the models resident in one process, as the app holds them, a shared
component's session loaded once: run.py --measure in a fresh process loads them all, then runs
each one's samples.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.context import Context
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.estimate import combine
from packager.gpu import write_container_files
from packager.leftovers import temp_folder
from packager.manifest import SCHEMA_VERSION, built_at, memory_record
from packager.names import MAX_NAME, check_name, joined_name
from packager.profiles import Profile
from packager.records import Memory
from packager.runtime_files import copy_runtime
from packager.runtimes import runtime_for
from packager.signing import manifest_entry as signature_entry
from packager.stages.bundle import file_entries, publish, requirements, run_arguments, seal, venv_command
from packager.stages.fit import measure_folder, measured_figures, over_budget, shared_bytes, without_runtime
from packager.version import __version__

MiB = 2**20
KIND = "suite"            # run.SUITE: the manifest kind run.py and smoke_test.py look for
KEPT = ("manifest.json", "model", "samples")   # what a model's folder keeps; the rest is the bundle's, once


@dataclass
class Blob:
    key: str
    files: list[dict[str, Any]]                          # name, sha256, size
    used_by: list[str] = field(default_factory=list)    # "<model>/<component>"
    notes: list[str] = field(default_factory=list)


@dataclass
class Suite:
    """The assembled bundle: what the API reports of it."""

    name: str
    profile: Profile
    members: list[Context]
    names: list[str]                                    # each member's folder name, in order
    blobs: list[Blob]
    memory: dict[str, Any]
    archive: Path | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    sign_key: Path | None = None       # --sign: the Ed25519 private key that signs the top manifest
    # Files hashed already (by the models' own bundle stage, or as they went into blobs/), by their path in
    # the bundle: the manifest takes their entries instead of hashing the weights again.
    hashed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model_bytes(self, name: str | None = None) -> int:
        """What the runner loads (its .ort rather than the .onnx beside it, with external data), for the model
        `name` or, by default, for all of them, a shared component once."""
        return sum(f["size"] for b in self.blobs if name is None or any(u.startswith(f"{name}/") for u in b.used_by)
                   for f in b.files
                   if not (f["name"].endswith(".onnx") and any(g["name"].endswith(".ort") for g in b.files)))


def member_names(contexts: list[Context]) -> list[str]:
    """Folder names for the models: their bundle names, a second model of the same name numbered."""
    names: list[str] = []
    for ctx in contexts:
        assert ctx.source is not None
        base = ctx.name or ctx.source.name
        name, n = base, 2
        while name in names:   # numbered within MAX_NAME: the name stays plain
            name, n = f"{base[:MAX_NAME - len(str(n)) - 1]}-{n}", n + 1
        names.append(name)
    return names


def assemble(members: list[tuple[str, Path]], dest: Path) -> tuple[list[Blob], dict[str, dict[str, Any]]]:
    """models/<name>/ from each finished member folder, its component files moved to blobs/<key>/; and the
    entries (path, sha256, size) of every file under models/ and blobs/ but the models' manifests, by path."""
    blobs: dict[str, Blob] = {}
    hashed: dict[str, dict[str, Any]] = {}
    for name, finished in members:
        folder = dest / "models" / name
        folder.mkdir(parents=True)
        for kept in KEPT:
            source = finished / kept
            if source.is_dir():
                shutil.copytree(source, folder / kept)
            elif source.is_file():
                shutil.copy2(source, folder / kept)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        # A packaged model's manifest lists its files' sha256 (a checked one, `packager check`, has none yet).
        recorded = {f["path"]: f for f in manifest.get("files", [])}
        moved: dict[str, dict[str, Any]] = {}
        loaded = manifest["runtime"].get("components") or {"model": manifest["runtime"]["model"]}
        for component, file in loaded.items():
            moved |= _to_blob(folder, file, f"{name}/{component}", dest / "blobs", blobs, recorded)
        for entry in _rewrite(folder, manifest, moved, recorded):
            path = posixpath.normpath(f"models/{name}/{entry['path']}")
            hashed[path] = entry | {"path": path}
    return sorted(blobs.values(), key=lambda b: b.key), hashed


def _to_blob(folder: Path, file: str, user: str, store: Path, blobs: dict[str, Blob],
             recorded: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Move the component `file` (and its companions: external data, .ort) into the store under its key;
    the files it moved: old path (from the member folder) -> the entry of the new one."""
    loaded = folder / file
    base = loaded.parent.relative_to(folder).as_posix()
    group = sorted(p for p in loaded.parent.iterdir() if p.is_file() and p.name.startswith(loaded.stem + "."))
    sums = {p.name: recorded[f"{base}/{p.name}"]["sha256"] if f"{base}/{p.name}" in recorded
            else runner().sha256_file(p) for p in group}
    # The .ort is derived from the .onnx beside it (onnxruntime's conversion is not byte-deterministic):
    # the key covers the source, so one component converted twice is still one component.
    sources = [n for n in sums if not n.endswith(".ort")] or list(sums)
    key = hashlib.sha256("".join(f"{n} {sums[n]}\n" for n in sorted(sources)).encode()).hexdigest()
    blob = blobs.get(key)
    if blob is None:
        (store / key).mkdir(parents=True)
        for p in group:
            shutil.move(p, store / key / p.name)
        blob = blobs[key] = Blob(key, [{"name": n, "sha256": sums[n], "size": (store / key / n).stat().st_size}
                                       for n in sorted(sums)])
    else:
        stored = {f["name"]: f["sha256"] for f in blob.files}
        if any(stored.get(n) != sums[n] for n in sums if n.endswith(".ort")):
            blob.notes.append(f"{user}: its own .ort conversion differed in bytes from the stored one, converted "
                              "from the same source; the stored one serves both")
        for p in group:
            p.unlink()
    if loaded.parent != folder and not any(loaded.parent.iterdir()):
        # An empty folder left behind is an entry no manifest lists: the smoke test refuses those.
        loaded.parent.rmdir()
    blob.used_by.append(user)
    return {f"{base}/{f['name']}": {"path": f"../../blobs/{key}/{f['name']}", "sha256": f["sha256"], "size": f["size"]}
            for f in blob.files}


def _rewrite(folder: Path, manifest: dict[str, Any], moved: dict[str, dict[str, Any]],
             recorded: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The member's manifest naming its components in blobs/, listing only the files it still has (those
    entries returned)."""
    manifest = _replace(manifest, {old: new["path"] for old, new in moved.items()})
    kept = [f for f in file_entries(folder, recorded) if f["path"] != "manifest.json"]
    manifest["files"] = sorted([*kept, *moved.values()], key=lambda f: f["path"])
    if "mobile" in manifest:
        manifest["mobile"]["examples"] = []   # the app examples load one model: the bundle of several has none
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files: list[dict[str, Any]] = manifest["files"]
    return files


def _replace(value: Any, moved: dict[str, str]) -> Any:
    if isinstance(value, str):
        return moved.get(value, value)
    if isinstance(value, list):
        return [_replace(v, moved) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, moved) for k, v in value.items()}
    return value


def estimate(contexts: list[Context], names: list[str], blobs: list[Blob], profile: Profile) -> dict[str, Any]:
    """All models resident together: each one's estimate, the runtime once, a shared component once."""
    whole = combine({n: _memory(c).estimate for n, c in zip(names, contexts)}, shared_bytes(profile))
    by_name = dict(zip(names, contexts))
    low, high, breakdown = whole.low_bytes, whole.high_bytes, dict(whole.breakdown)
    for blob in blobs:
        for user in blob.used_by[1:]:   # loaded once: the other users' own share of it is not resident again
            name, component = user.split("/", 1)
            own = _own_estimate(by_name[name], component, profile)
            low, high = low - own["low_bytes"], high - own["high_bytes"]
            breakdown = {k: max(0, v - own["breakdown"].get(k, 0)) for k, v in breakdown.items()}
    record = whole.to_dict() | {"low_bytes": low, "high_bytes": high, "breakdown": breakdown}
    if any(len(b.used_by) > 1 for b in blobs):
        record["notes"] = [*record["notes"], "a component several models load is counted once: its session is "
                           "shared"]
    return record


def _own_estimate(ctx: Context, component: str, profile: Profile) -> dict[str, Any]:
    """A component's own estimate (low_bytes, high_bytes, breakdown), without the runtime the whole counts once."""
    memory = _memory(ctx)
    if memory.components is not None:
        own: dict[str, Any] = memory.components[component]["estimate"]
        return own
    return without_runtime(memory.estimate.to_dict(), profile)


def _memory(ctx: Context) -> Memory:
    """A member's memory verdict alone (its fit stage has run)."""
    assert ctx.memory is not None
    return ctx.memory


def judge(suite: Suite, folder: Path, measure: bool, enforce: bool) -> None:
    """suite.memory: the estimate and the measurement of all the models together, and the verdict."""
    est = estimate(suite.members, suite.names, suite.blobs, suite.profile)
    measured = measure_folder(folder) if measure else None
    unseen = runtime_for(suite.profile).unmeasured_bytes(suite.profile, measured)
    budget = suite.profile.budget.memory_bytes
    peak = measured["peak_bytes"] + unseen if measured else est["high_bytes"]
    memory: dict[str, Any] = {"budget_bytes": budget, "estimate": est, "fits": peak <= budget,
                              "headroom_bytes": budget - peak,
                              "verdict_basis": "measured" if measured else "estimate (high)",
                              "resident": "all models together in one process; a shared component loaded once"}
    if measured:
        memory |= measured_figures(measured)
    if unseen:
        memory["gpu_context_bytes"] = unseen
    memory["components"] = {name: _member_memory(ctx, suite.model_bytes(name),
                                                 measured["members"][name] if measured else None)
                            for name, ctx in zip(suite.names, suite.members)}
    suite.memory = memory
    if not memory["fits"] and enforce:
        alone = ", ".join(f"{n} {_alone_peak(_memory(c)) / MiB:.0f}" for n, c in zip(suite.names, suite.members))
        raise PackagerError(
            f"the {len(suite.members)} models do not fit together: {over_budget(memory)} over "
            f"{suite.profile.name}'s budget of {budget / MiB:.0f} MiB (each alone: {alone} MiB); leave a model out, "
            "pick smaller recipes, or give the deployment more with --budget.", ExitCode.DOES_NOT_FIT)


def _alone_peak(memory: Memory) -> int:
    """A member's peak alone: measured, else its estimate's high side."""
    return memory.estimate.high_bytes if memory.measured_peak_bytes is None else memory.measured_peak_bytes


def _member_memory(ctx: Context, size: int, measured: dict[str, Any] | None) -> dict[str, Any]:
    """One model's line of the whole's breakdown (the report's per-component table reads it): its own
    estimate, without the runtime the whole counts once."""
    return {"recipe": ctx.recipe_name,
            "size_bytes": size,
            "resident": "loaded up front, with the others",
            "estimate": without_runtime(_memory(ctx).estimate.to_dict(), ctx.profile),
            "alone_peak_bytes": _memory(ctx).measured_peak_bytes,
            **({"measured_load_bytes": measured["load_bytes"]} if measured else {})}


def together(contexts: list[Context], name: str, folder: Path, measure: bool = True, enforce: bool = True,
             progress: Callable[[str], None] = lambda line: None) -> Suite:
    """models/ and blobs/ of the `contexts` (each with its staged folder in ctx.member_dir) in `folder`,
    runnable, and the verdict for all of them loaded together (over the budget: DOES_NOT_FIT with
    `enforce`, else a verdict in suite.memory, as `packager check` reports it)."""
    names = member_names(contexts)
    blobs, hashed = assemble([(n, c.member_dir) for n, c in zip(names, contexts) if c.member_dir], folder)
    suite = Suite(name, contexts[0].profile, contexts, names, blobs, {}, hashed=hashed)
    copy_runtime(folder, suite.profile)
    (folder / "manifest.json").write_text(json.dumps(_manifest(suite, [])), encoding="utf-8")
    progress(f"measuring the {len(contexts)} models together" if measure else "estimating the models together")
    judge(suite, folder, measure, enforce)
    return suite


def build(contexts: list[Context], name: str | None, out: Path, sign_key: Path | None = None,
          progress: Callable[[str], None] = lambda line: None) -> Suite:
    """The bundle of the packaged `contexts`, judged against the budget together, archived into
    OUT/<name>-<target>.tar.gz (name: the models' names joined by "+", cut to MAX_NAME, unless given). With
    `sign_key`, its top manifest is signed: it lists every file's sha256, the models' manifests and the blobs
    included."""
    # The folder and the archive are named from it: a plain file name (package() refused any other --name).
    name = check_name(name, "--name", ExitCode.USAGE) if name is not None else joined_name(member_names(contexts))
    with temp_folder("suite") as tmp:
        folder = Path(tmp) / f"{name}-{contexts[0].profile.name}"
        folder.mkdir()
        suite = together(contexts, name, folder, progress=progress)
        suite.sign_key = sign_key
        _write_files(suite, folder)
        suite.archive = publish(folder, out, folder.name)
    return suite


def _write_files(suite: Suite, folder: Path) -> None:
    (folder / "requirements.txt").write_text(_requirements(suite), encoding="utf-8")
    if suite.profile.os.container:
        write_container_files(folder, folder.name, suite.profile)
    (folder / "README.md").write_text(_readme(suite, folder.name), encoding="utf-8")
    (folder / "manifest.json").unlink()
    suite.files = file_entries(folder, suite.hashed)
    seal(folder, suite.files, _manifest(suite, suite.files), suite.sign_key)


def _requirements(suite: Suite) -> str:
    """Every model's pins, once each (one target: one runtime)."""
    lines: list[str] = []
    for ctx in suite.members:
        lines += [line for line in requirements(ctx).splitlines() if line not in lines]
    return "\n".join(lines) + "\n"


def _manifest(suite: Suite, files: list[dict[str, Any]]) -> dict[str, Any]:
    first = suite.members[0]
    runtime = first.profile.runtime
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "name": suite.name,
        "target": suite.profile.name,
        "profile": {k: v for k, v in suite.profile.to_dict().items() if k != "source"},
        "runtime": {"package": runtime.package, "version": runtime.version, "providers": list(runtime.providers)},
        "models": [{"name": n, "path": f"models/{n}", "source": {"name": c.source.path.name, "sha256": c.source.sha256}
                    if c.source else {}, "recipe": c.recipe_name, "kind": c.io.kind}
                   for n, c in zip(suite.names, suite.members)],
        "blobs": [{"key": b.key, "files": b.files, "used_by": b.used_by, **({"notes": b.notes} if b.notes else {})}
                  for b in suite.blobs],
        "files": files,
        "memory": memory_record(suite.memory) if suite.memory else {"budget_bytes": suite.profile.budget.memory_bytes},
        "built_with": {"packager": __version__},
        **built_at(),
        **({"signature": signature_entry(suite.sign_key)} if suite.sign_key else {}),
    }


def _readme(suite: Suite, bundle: str) -> str:
    p, mem = suite.profile, suite.memory
    runs = "\n".join(f"    python run.py --model {n} {run_arguments(c.io, f'models/{n}/samples')}"
                     for n, c in zip(suite.names, suite.members))
    shared = [b for b in suite.blobs if len(b.used_by) > 1]
    shared_text = "".join(f"\n  - `blobs/{b.key[:12]}...`: {', '.join(b.used_by)}" for b in shared) or " none"
    models = "\n".join(f"- `{n}`: `{c.model_spec}`, recipe `{c.recipe_name}`, in "
                       f"`models/{n}/`" for n, c in zip(suite.names, suite.members))
    smoke = ("python smoke_test.py          # checksums, loads every model, each one's samples, peak memory; "
             "last line PASS or FAIL")
    low, high = mem['estimate']['low_bytes'] / MiB, mem['estimate']['high_bytes'] / MiB
    measured = ', measured within the budget on the build host' if mem.get('verdict_basis') == 'measured' else ''
    return f"""# {bundle}

{len(suite.members)} models packaged together by packager for **{p.name}** ({p.description}), to be loaded
together in one process.

On the device ({p.os.name}, Python {p.os.python}):

    {venv_command(bundle)}
    {smoke}
{runs}

{models}

- The files each model loads are in `blobs/<sha256>/`, named by each model's `manifest.json` (`runtime`); a
  component several models load is stored once and loaded once (one session). Shared:{shared_text}
- Memory, all models together: estimated peak {low:.0f}-{high:.0f} MiB,
  budget {p.budget.memory_bytes / MiB:.0f} MiB{measured}.
- Execution providers, in order: {', '.join(p.runtime.providers)} (missing ones fall back to CPU).
"""
