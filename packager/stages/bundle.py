"""bundle: finish the staged bundle folder and move its archive into the output folder atomically.

Nothing appears in the output folder until the archive is complete: it is written beside
its final name under a temporary name and renamed in one step. An output folder that this
run created is removed again if the run fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from packager.archive import write_archive
from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.manifest import build as build_manifest
from packager.runtime_files import copy_runtime, family_requirements, runner, signing_requirements

SUMS = "SHA256SUMS"
MiB = 2**20


def requirements(ctx: Context) -> str:
    rt = ctx.profile.runtime
    lines = [f"# Pinned for {ctx.profile.name}: {ctx.profile.os.name}, Python {ctx.profile.os.python}, {ctx.profile.device.arch}."]
    if rt.index_url:
        lines.append(f"--extra-index-url {rt.index_url}")
    lines += [f"{rt.package}=={rt.version}", f"numpy=={rt.numpy}", *family_requirements(ctx.io["kind"])]
    if ctx.sign_key:  # the device checks the signature with `cryptography`
        lines += signing_requirements()
    return "\n".join(lines) + "\n"


def readme(ctx: Context) -> str:
    p = ctx.profile
    run_example = {"text": 'python run.py "some sentence"',
                   "decoder": 'python run.py --prompt "Once upon a time" --max-new-tokens 32'}.get(
        ctx.io["kind"], "python run.py --inputs feeds.npz --output out.npz")
    mem = ctx.memory
    # The measured figure varies run to run: the bundle says only that it was within the budget.
    measured = f", measured within the budget on the build host ({mem['measured_on']})" \
        if mem.get("verdict_basis") == "measured" else ""
    return f"""# {ctx.bundle_name}

`{ctx.source.name if ctx.source else ''}` packaged by packager for **{p.name}** ({p.description}),
recipe `{ctx.recipe_name}`.

On the device ({p.os.name}, Python {p.os.python}):

    python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt
    python smoke_test.py          # checksums, load, sample outputs, peak memory; last line PASS or FAIL
    {run_example}

- Inputs and outputs: `manifest.json` (`inputs`, `outputs`); samples in `samples/`.
- Accuracy on the build host: {_accuracy_line(ctx)}.
- Memory: estimated peak {mem['estimate']['low_bytes'] / MiB:.0f}-{mem['estimate']['high_bytes'] / MiB:.0f} MiB{measured};
  budget {p.budget.memory_bytes / MiB:.0f} MiB.
- Execution providers, in order: {', '.join(p.runtime.providers)} (missing ones fall back to CPU).
"""


def _accuracy_line(ctx: Context) -> str:
    acc, limits = ctx.accuracy, ctx.profile.accuracy
    if acc.get("metric") == "token agreement":
        return (f"{acc['token_agreement']:.1%} of the fp32 reference's greedy tokens (threshold "
                f"{limits.min_token_agreement:.0%}), first-token logits cosine {acc['min_logits_cosine']:.5f} "
                f"(threshold {limits.min_logits_cosine})")
    return f"min cosine {acc.get('min_cosine', 0):.5f} against the fp32 reference (threshold {limits.min_cosine})"


def _write_files(ctx: Context) -> None:
    stage = ctx.stage_dir
    copy_runtime(stage)
    (stage / "requirements.txt").write_text(requirements(ctx), encoding="utf-8")
    (stage / "README.md").write_text(readme(ctx), encoding="utf-8")
    (stage / "manifest.json").unlink(missing_ok=True)
    ctx.bundle_files = [
        {"path": p.relative_to(stage).as_posix(), "sha256": runner().sha256_file(p), "size": p.stat().st_size}
        for p in sorted(stage.rglob("*")) if p.is_file()
    ]
    manifest = build_manifest(ctx)
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    extra = ["manifest.json"]
    if ctx.sign_key:
        # Signed once manifest.json is final, and before SHA256SUMS, which lists the signature too.
        from packager.signing import sign_manifest

        extra.append(sign_manifest(ctx.sign_key, stage).name)
    sums = [*ctx.bundle_files, *({"path": name, "sha256": runner().sha256_file(stage / name)} for name in extra)]
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
    out = ctx.out_dir
    check_output_dir(out)
    created = not out.exists()
    final = out / f"{ctx.bundle_name}.tar.gz"
    partial = out / f".{final.name}.partial-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_archive(ctx.stage_dir, partial)
        os.replace(partial, final)
    except OSError as e:
        raise PackagerError(f"{out}: cannot write the bundle there ({e.strerror or e}); pick another folder with "
                            "--out or free some space.", ExitCode.OUTPUT) from None
    finally:
        partial.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    ctx.archive = final
