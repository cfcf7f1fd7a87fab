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
from packager.errors import ExitCode, PackagerError
from packager.gpu import image_name, trt_workspace, write_container_files
from packager.leftovers import bundle_partial
from packager.manifest import build as build_manifest
from packager.mobile import write_examples
from packager.runtime_files import copy_runtime, family_requirements, runner, signing_requirements

SUMS = runner().SUMS
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
    run_example = "python run.py " + run_arguments(ctx.io)
    mem = ctx.memory
    # The measured figure varies run to run: the bundle says only that it was within the budget.
    measured = f", measured within the budget on the build host ({mem['measured_on']})" \
        if mem.get("verdict_basis") == "measured" else ""
    return f"""# {ctx.bundle_name}

`{ctx.source.name if ctx.source else ''}` packaged by packager for **{p.name}** ({p.description}),
recipe `{ctx.recipe_name}`.

On the device ({p.os.name}, Python {p.os.python}):

    {venv_command(ctx.bundle_name)}
    python smoke_test.py          # checksums, load, sample outputs, peak memory; last line PASS or FAIL
    {run_example}

- Inputs and outputs: `manifest.json` (`inputs`, `outputs`); samples in `samples/`.
- Accuracy on the build host: {_accuracy_line(ctx)}.
{_components_readme(ctx)}- Memory: estimated peak {mem['estimate']['low_bytes'] / MiB:.0f}-{mem['estimate']['high_bytes'] / MiB:.0f} MiB{measured};
  budget {p.budget.memory_bytes / MiB:.0f} MiB.
- Execution providers, in order: {', '.join(p.runtime.providers)} (missing ones fall back to CPU).
{_phone_readme(ctx)}{_gpu_readme(ctx)}"""


def venv_command(bundle_name: str) -> str:
    """The device's install line. The virtual environment lives outside the bundle folder: the smoke test
    refuses any file in that folder that the bundle does not list (SECURITY.md)."""
    venv = f"~/venvs/{bundle_name}"
    return f"python3 -m venv {venv} && . {venv}/bin/activate && pip install -r requirements.txt"


def run_arguments(io: dict[str, Any], samples: str = "samples") -> str:
    """run.py's arguments for a first run of a model with this io (manifest runtime.io)."""
    if io["kind"] == "seq2seq":
        return {"audio": f"{samples}/sweep.wav --max-new-tokens 32     # any 16-bit PCM WAV",
                "image": f"{samples}/gradient.png --max-new-tokens 32  # any 8-bit PNG",
                }.get(io["modality"], '"some text" --max-new-tokens 32')
    return {"text": '"some sentence"', "decoder": '--prompt "Once upon a time" --max-new-tokens 32'}.get(
        io["kind"], "--inputs feeds.npz --output out.npz")


def _components_readme(ctx: Context) -> str:
    if not ctx.components:
        return ""
    lines = [f"  - `{c.file}`: the {c.name}, recipe `{c.recipe_name}`" for c in ctx.components]
    return ("- Components, all loaded together (the memory figures count them together):\n" + "\n".join(lines)
            + "\n")


def _phone_readme(ctx: Context) -> str:
    if not ctx.mobile or ctx.profile.mobile is None:
        return ""
    m, mob = ctx.profile.mobile, ctx.mobile
    android, ios = (next((e for e in mob.get("examples", []) if e.startswith(f"{d}/") and not e.endswith(".md")), "")
                    for d in ("android", "ios"))
    examples = (f"`{android}` and `{ios}` load it with this profile's session options and providers and run the "
                "first\nsample; `android/README.md` and `ios/README.md` give the dependency lines. Neither was compiled "
                "by packager.") if android else (
        "No app example is generated for a model of several components yet: the app loads each `.ort` file that\n"
        "`manifest.json` lists under `runtime.components`, with the session options there, and runs run.py's loop.")
    verdict = mob["usability"].get("verdict") or f"not rated ({mob['usability'].get('error', '')})"
    return f"""
## In a phone app

The app loads `{mob['model']}` (ORT format {mob['ort_format_version']}, converted by {mob['converted_with']}) with
`{m.android_package}:{m.android_version}` on Android, or the `{m.ios_pod}` pod / Swift package {m.ios_version} on iOS.
{examples}

- Reduced-size runtime: `{mob['reduced_build_config']}` lists the operators and types the model needs, for
  ONNX Runtime's `build.py --minimal_build --include_ops_by_config` at the converter's release ({mob['converted_with']}).
- NNAPI and CoreML, as the runtime's mobile usability check rates this model: {verdict}.
- `model/model.onnx` is the model before conversion: for an app on another runtime release, convert it with that
  release (`python -m onnxruntime.tools.convert_onnx_models_to_ort --enable_type_reduction model/model.onnx`).
- `python smoke_test.py` runs `{mob['model']}` with the Python runtime, on a computer (or Termux): the checks an app
  does not run.
"""


def _accuracy_line(ctx: Context) -> str:
    acc, limits = ctx.accuracy, ctx.profile.accuracy
    if acc.get("metric") == "token agreement":
        return (f"{acc['token_agreement']:.1%} of the fp32 reference's greedy tokens (threshold "
                f"{limits.min_token_agreement:.0%}), first-token logits cosine {acc['min_logits_cosine']:.5f} "
                f"(threshold {limits.min_logits_cosine})")
    return f"min cosine {acc.get('min_cosine', 0):.5f} against the fp32 reference (threshold {limits.min_cosine})"


def _gpu_readme(ctx: Context) -> str:
    p = ctx.profile
    if "TensorrtExecutionProvider" not in p.runtime.providers:
        return ""
    workspace = ctx.memory.get("tensorrt_workspace", {})
    bound = f"{workspace['bytes'] / MiB:.0f} MiB" if workspace else "the profile's figure"
    text = f"""
## On the GPU

TensorRT builds its engines on the first load (minutes) and caches them under
`$XDG_CACHE_HOME/packager-bundle/trt-engines` (default `~/.cache`); later loads reuse them. Its build workspace
(`trt_max_workspace_size`) is bounded to {bound}: the profile's ceiling, or less where the memory budget leaves
less after the measured peak, the CUDA context and the engine's copy of the weights. Without the GPU providers
(`onnxruntime` installed beside `onnxruntime-gpu` leaves only the CPU one) the smoke test runs on the CPU and says
the GPU path was not exercised.
"""
    if p.os.container:
        text += f"""
In a container on the device (Docker with the NVIDIA runtime; base image `{p.os.container}`):

    docker build -t {image_name(ctx.bundle_name)} .
    docker run --rm --runtime nvidia -v {image_name(ctx.bundle_name)}-cache:/cache {image_name(ctx.bundle_name)}    # the smoke test; engines cached in the volume
"""
    return text


def _write_files(ctx: Context) -> None:
    stage = ctx.stage_dir
    copy_runtime(stage)
    if ctx.mobile and ctx.profile.mobile is not None and not ctx.components:
        # The app examples run one model on one sample; an encoder-decoder's loop has none yet.
        ctx.mobile["examples"] = write_examples(stage, ctx.bundle_name, ctx.profile, ctx.io, ctx.sample_inputs[0],
                                                _sample_note(ctx), ctx.mobile["usability"])
    if ctx.profile.os.container:
        write_container_files(stage, ctx.bundle_name, ctx.profile)
    workspace = trt_workspace(ctx.profile, ctx.memory)
    if workspace is not None:
        ctx.memory["tensorrt_workspace"] = workspace
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
        from packager.signing import sign_manifest

        extra.append(sign_manifest(sign_key, stage).name)
    sums = [*files, *({"path": name, "sha256": runner().sha256_file(stage / name)} for name in extra)]
    (stage / SUMS).write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(sums, key=lambda f: f["path"])),
                              encoding="utf-8")


def _sample_note(ctx: Context) -> str:
    if ctx.io["kind"] == "decoder":
        return f"the prompt {json.dumps(ctx.texts[0])} as token ids, with an empty KV cache"
    if ctx.io["kind"] == "text":
        return f"{json.dumps(ctx.texts[0])} as the bundle's tokenizer encodes it"
    return "the smoke test's first input (large tensors as zeros)"


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
