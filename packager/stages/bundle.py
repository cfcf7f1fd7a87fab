"""bundle: finish the staged bundle folder and move its archive into the output folder atomically.

Nothing appears in the output folder until the archive is complete: it is written beside
its final name under a temporary name and renamed in one step. An output folder that this
run created is removed again if the run fails.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packager.archive import write_archive
from packager.context import Context
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.gpu import write_container_files
from packager.labels import recipe_label
from packager.leftovers import bundle_partial
from packager.manifest import build as build_manifest
from packager.records import Io
from packager.runtime_files import copy_runtime, family_requirements, signing_requirements
from packager.runtimes import runtime_for
from packager.signing import sign_manifest

SUMS = runner().SUMS
MiB = 2**20


def requirements(ctx: Context) -> str:
    p = ctx.profile
    lines = [f"# Pinned for {p.name}: {p.os.name}, Python {p.os.python}, {p.device.arch}.",
             *runtime_for(p).requirements(p), *family_requirements(ctx.io.kind)]
    if ctx.sign_key:  # the device checks the signature with `cryptography`
        lines += signing_requirements()
    return "\n".join(lines) + "\n"


def readme(ctx: Context) -> str:
    p = ctx.profile
    run_example = "python run.py " + run_arguments(ctx.io)
    mem = ctx.memory
    assert mem is not None   # the fit stage ran
    # The measured figure varies run to run: the bundle says only that it was within the budget.
    measured = f", measured within the budget on the build host ({mem.measured_on})" \
        if mem.verdict_basis == "measured" else ""
    low, high = mem.estimate.low_bytes / MiB, mem.estimate.high_bytes / MiB
    return f"""# {ctx.bundle_name}

`{ctx.source.name if ctx.source else ''}` packaged by packager for **{p.name}** ({p.description}),
recipe `{_recipe(ctx)}`.

On the device ({p.os.name}, Python {p.os.python}):

    {venv_command(ctx.bundle_name)}
    python smoke_test.py          # checksums, load, sample outputs, peak memory; last line PASS or FAIL
    {run_example}

- Inputs and outputs: `manifest.json` (`inputs`, `outputs`); samples in `samples/`.
- Accuracy on the build host: {_accuracy_line(ctx)}.
{_components_readme(ctx)}- Memory: estimated peak {low:.0f}-{high:.0f} MiB{measured};
  budget {p.budget.memory_bytes / MiB:.0f} MiB.
- Execution providers, in order: {', '.join(p.runtime.providers)} (missing ones fall back to CPU).
{runtime_for(p).readme(ctx)}"""


def _recipe(ctx: Context) -> str:
    """What the recipe did (its coverage: "fp32 (int8-dynamic found nothing to quantize)"), as the summary says."""
    return recipe_label(ctx.recipe_name, ctx.recipe.coverage if ctx.recipe else None)


def venv_command(bundle_name: str) -> str:
    """The device's install line. The virtual environment lives outside the bundle folder: the smoke test
    refuses any file in that folder that the bundle does not list (SECURITY.md)."""
    venv = f"~/venvs/{bundle_name}"
    return f"python3 -m venv {venv} && . {venv}/bin/activate && pip install -r requirements.txt"


def run_arguments(io: Io, samples: str = "samples") -> str:
    """run.py's arguments for a first run of a model with this io (manifest runtime.io)."""
    return family_for(io.kind).run_arguments(io, samples)


def _components_readme(ctx: Context) -> str:
    if not ctx.components:
        return ""
    lines = [f"  - `{c.file}`: the {c.name}, recipe `{c.recipe_name}`" for c in ctx.components]
    return ("- Components, all loaded together (the memory figures count them together):\n" + "\n".join(lines)
            + "\n")


def _accuracy_line(ctx: Context) -> str:
    assert ctx.accuracy is not None   # verify ran
    figures, limits = ctx.accuracy.more, ctx.profile.accuracy
    if family_for(ctx.io.kind).generates:
        return (f"{figures['token_agreement']:.1%} of the fp32 reference's greedy tokens (threshold "
                f"{limits.min_token_agreement:.0%}), first-token logits cosine {figures['min_logits_cosine']:.5f} "
                f"(threshold {limits.min_logits_cosine})")
    return f"min cosine {figures.get('min_cosine', 0):.5f} against the fp32 reference (threshold {limits.min_cosine})"


def _write_files(ctx: Context) -> None:
    stage = ctx.stage_dir
    copy_runtime(stage, ctx.profile)
    runtime_for(ctx.profile).write_bundle_files(ctx, stage)   # phones: the app examples
    if ctx.profile.os.container:
        write_container_files(stage, ctx.bundle_name, ctx.profile)
    (stage / "requirements.txt").write_text(requirements(ctx), encoding="utf-8")
    (stage / "README.md").write_text(readme(ctx), encoding="utf-8")
    (stage / "manifest.json").unlink(missing_ok=True)
    ctx.bundle_files = file_entries(stage)
    seal(stage, ctx.bundle_files, build_manifest(ctx), ctx.sign_key)


def file_entries(folder: Path, known: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every file under `folder` as the manifest lists it (path, sha256, size), sorted by path; an entry in
    `known` (by path: a file hashed before, unchanged since) is taken as it is, not hashed again."""
    known = known or {}
    return [known.get(path) or {"path": path, "sha256": runner().sha256_file(p), "size": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() for path in [p.relative_to(folder).as_posix()]]


def seal(stage: Path, files: list[dict[str, Any]], manifest: dict[str, Any], sign_key: Path | None) -> None:
    """Write manifest.json, its signature with `sign_key` (if any), and SHA256SUMS over `files` and those."""
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    extra = ["manifest.json"]
    if sign_key:
        # Signed once manifest.json is final, and before SHA256SUMS, which lists the signature too.

        extra.append(sign_manifest(sign_key, stage).name)
    sums = [*files, *({"path": name, "sha256": runner().sha256_file(stage / name)} for name in extra)]
    (stage / SUMS).write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(sums, key=lambda f: f["path"])),
                              encoding="utf-8")


def check_output_dir(out: Path, option: str = "--out", what: str = "the bundle") -> None:
    """Fail before any work when `what` could not be written to `out` (given by `option`): a file
    in the way, or a folder that cannot be created. Leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise PackagerError(f"{out}: the {option} path is a file; pass a folder with {option}.", ExitCode.OUTPUT)
    missing = [p for p in [out, *out.parents] if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
        probe = out / f".packager-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise PackagerError(f"{out}: cannot write {what} there ({e.strerror or e}); pick another folder with {option}.",
                            ExitCode.OUTPUT) from None
    finally:
        for folder in missing:
            if folder.is_dir():
                folder.rmdir()


def run(ctx: Context) -> None:
    _write_files(ctx)
    if ctx.member_dir is not None:   # one model of several: packager/suite.py assembles the bundle
        shutil.copytree(ctx.stage_dir, ctx.member_dir)
        return
    ctx.archive = publish(ctx.stage_dir, ctx.out_dir, ctx.bundle_name)


def publish(stage: Path, out: Path, name: str) -> Path:
    """The archive of the finished folder `stage` as OUT/<name>.tar.gz, written whole or not at all."""
    check_output_dir(out)
    created = not out.exists()
    final = out / f"{name}.tar.gz"
    partial = bundle_partial(final)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_archive(stage, partial)
        os.replace(partial, final)
    except OSError as e:
        raise PackagerError(f"{out}: cannot write the bundle there ({e.strerror or e}); pick another folder with "
                            "--out or free some space.", ExitCode.OUTPUT) from None
    finally:
        partial.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return final
