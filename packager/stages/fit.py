"""fit: estimate and measure the packaged model's peak resident memory against the budget.

The estimate comes from the graph (packager/estimate.py). The bundle's own run.py measures it (`--measure`)
in a fresh child process with the target's session options and threads: the kernel's high-water mark, reset
before the load and again before the run, so the figure is the model's and the runtime's, not packager's. A
decoder is judged at its decode step with the deployment's context of KV cache (ctx.context);
--fit auto asks peaks_at() what a shorter context would take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.estimate import Estimate, combine, decode_step_shapes, estimate, sample_shapes, seq2seq_step_shapes
from packager.families import family_for
from packager.manifest import runtime_spec
from packager.profiles import Profile
from packager.records import Memory
from packager.runtime_files import copy_runtime
from packager.runtimes import runtime_for

MEASURE_TIMEOUT_S = 1800

MiB = 2**20


def measure(ctx: Context) -> dict[str, Any]:
    runnable(ctx)
    return measure_folder(ctx.stage_dir, runtime_for(ctx.profile).host_python(ctx.profile))


def runnable(ctx: Context) -> None:
    """The staged folder as run.py can load it: the runner, and the manifest's runtime section (all that
    run.py reads of it; the bundle stage writes the full manifest)."""
    (ctx.stage_dir / "manifest.json").write_text(json.dumps({"runtime": runtime_spec(ctx)}), encoding="utf-8")
    copy_runtime(ctx.stage_dir, ctx.profile)


def measure_folder(folder: Path, python: str = sys.executable) -> dict[str, Any]:
    """`run.py --measure` of the bundle folder `folder` (its runtime files and manifest in place), in a
    fresh child process of `python` (the runtime's interpreter on this host)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(
            [python, str(folder / "run.py"), "--measure"],
            capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, env=env, cwd=folder.parent,
        )
    except subprocess.TimeoutExpired:
        raise PackagerError(f"measuring memory took over {MEASURE_TIMEOUT_S} s; the model is too slow to run on "
                            "this host.", ExitCode.TOOL_FAILED) from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackagerError(f"the packaged model failed to load or run in a fresh process: {tail}",
                            ExitCode.TOOL_FAILED)
    measured: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])  # run.py --measure's JSON
    return measured


def _encoder_length(ctx: Context) -> int:
    """The encoder's output length on the largest sample (what the decoder's cross-attention reads)."""
    import onnxruntime as ort

    assert ctx.components
    encoder = next(c.reference for c in ctx.components if c.name == "encoder")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    session = ort.InferenceSession(str(encoder), so, providers=["CPUExecutionProvider"])
    largest = max(ctx.sample_inputs, key=lambda f: sum(v.size for v in f.values()))
    return int(session.run(None, largest)[0].shape[1])


def component_estimates(ctx: Context, context: int | None) -> dict[str, Estimate]:
    """Each component's estimate on its own: the encoder on the samples, the decoder at its decode step
    with `context` tokens of its own KV cache and the encoder's length of cross-attention cache."""
    length = _encoder_length(ctx)
    tokenizer = next((f for f in ctx.tokenizer_files if f.name == "tokenizer.json"), None)
    result = {}
    for c in ctx.components:
        assert c.packaged is not None
        if c.name == "decoder":
            shapes = seq2seq_step_shapes(ctx.io.to_dict(), context or 1, length)
            result[c.name] = estimate(c.packaged, ctx.profile, "decoder", shapes, context, tokenizer)
        else:
            result[c.name] = estimate(c.packaged, ctx.profile, "tensor", sample_shapes(ctx.sample_inputs))
    return result


def estimate_at(ctx: Context, context: int | None, parts: dict[str, Estimate] | None = None) -> Estimate:
    """The packaged model's estimate; a decoder's at its decode step with `context` tokens of KV cache;
    a multi-component model's with all its components resident together (`parts`: their estimates at
    `context`, when the caller has them already)."""
    assert ctx.packaged_model is not None
    if ctx.components:
        return combine(parts or component_estimates(ctx, context), shared_bytes(ctx.profile))
    shapes = decode_step_shapes(ctx.io.to_dict(), context) if family_for(ctx.io.kind).context_sized and context \
        else sample_shapes(ctx.sample_inputs)
    tokenizer = next((f for f in ctx.tokenizer_files if f.name == "tokenizer.json"), None)
    # A runtime conversion (phones: model.ort) changed what the device loads: the runtime holds that file too.
    loaded = ctx.stage_dir / ctx.model_file
    converted = loaded.stat().st_size if loaded.name != ctx.packaged_model.name and loaded.is_file() else 0
    return estimate(ctx.packaged_model, ctx.profile, ctx.io.kind, shapes, context, tokenizer, converted)


def peaks_at(ctx: Context, contexts: list[int]) -> dict[int, int]:
    """A decoder fit has just judged (ctx.memory): its peak at each of `contexts`, predicted from the
    peak found at ctx.context (measured, else the estimate's high side) less what the estimate says
    the shorter KV cache saves; never below the load phase's peak, which no context changes. The
    saving is the low estimate's, the smaller: measured steps fall nearer its slope than the high's."""
    mem = ctx.memory
    assert mem is not None
    est = mem.estimate
    load = est.load_high_bytes if mem.load_peak_bytes is None else mem.load_peak_bytes
    run_peak = est.run_high_bytes if mem.run_peak_bytes is None else mem.run_peak_bytes
    return {c: max(load, run_peak - (est.run_low_bytes - estimate_at(ctx, c).run_low_bytes)) for c in contexts}


def run(ctx: Context) -> None:
    assert ctx.packaged_model is not None
    parts = component_estimates(ctx, ctx.context) if ctx.components else {}
    est = estimate_at(ctx, ctx.context, parts)
    measured = measure(ctx) if ctx.measure else None
    budget = ctx.profile.budget.memory_bytes
    # The verdict trusts a measurement over an estimate, and the estimate's high side over its low. A
    # measurement without the GPU providers misses their CUDA context, which the device still holds.
    unseen = runtime_for(ctx.profile).unmeasured_bytes(ctx.profile, measured)
    peak = measured["peak_bytes"] + unseen if measured else est.high_bytes
    ctx.memory = Memory(
        budget_bytes=budget,
        context=ctx.context,
        estimate=est,
        verdict_basis="measured" if measured else "estimate (high)",
        fits=peak <= budget,
        headroom_bytes=budget - peak,
        **(measured_figures(measured) if measured else {}),
        gpu_context_bytes=unseen or None,  # added to the measured peak: the GPU path was not exercised
        components=_components_memory(ctx, parts, measured) if ctx.components else None,
    )
    if peak > budget and ctx.enforce_budget:
        raise PackagerError(
            f"does not fit: {over_budget(ctx.memory.to_dict())} over {ctx.profile.name}'s budget of "
            f"{budget / MiB:.0f} MiB; "
            "pick a smaller recipe or model, or give the deployment more with --budget.",
            ExitCode.DOES_NOT_FIT,
        )


def measured_figures(measured: dict[str, Any]) -> dict[str, Any]:
    """`run.py --measure`'s figures as the memory record names them (Memory, the suite's memory)."""
    return {"measured_peak_bytes": measured["peak_bytes"], "load_peak_bytes": measured["load_peak_bytes"],
            "run_peak_bytes": measured["run_peak_bytes"], "baseline_bytes": measured["baseline_bytes"],
            "method": measured["method"], "measured_on": measured["host"]}


def shared_bytes(profile: Profile) -> int:
    """What components in one process share: the interpreter and the runtime's import and first
    initialisation (the calibration's base), and a GPU's context. Each session keeps its own cost and
    thread pool (session_bytes, per_thread_bytes): every component counts those."""
    return runtime_for(profile).memory(profile, "tensor").shared_bytes


def without_runtime(est: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """An estimate's low_bytes, high_bytes and breakdown less what models or components in one process share
    (shared_bytes): its own part of the runtime is left, its session and thread pool (and a tokenizer)."""
    share = runtime_for(profile).memory(profile, "tensor")
    shared = share.shared_bytes
    breakdown = {k: v for k, v in est["breakdown"].items() if k != "gpu_context"}
    breakdown["runtime_base"] = breakdown.get("runtime_base", 0) - (shared - share.gpu_context_bytes)
    return {"low_bytes": est["low_bytes"] - shared, "high_bytes": est["high_bytes"] - shared, "breakdown": breakdown}


def _components_memory(ctx: Context, estimates: dict[str, Estimate],
                       measured: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per component: its recipe, file, size, its own estimate (without the shared runtime, which the
    whole counts once) and, measured, the resident memory its session added at load."""
    record = {}
    for c in ctx.components:
        assert c.packaged is not None
        record[c.name] = {
            "recipe": c.recipe_name,
            "file": c.file,
            "size_bytes": c.packaged.stat().st_size,
            "resident": "loaded up front, with the others",
            "estimate": without_runtime(estimates[c.name].to_dict(), ctx.profile),
            **({"measured_load_bytes": measured["components"][c.name]["load_bytes"]}
               if measured and c.name in measured.get("components", {}) else {}),
        }
    return record


def over_budget(memory: dict[str, Any]) -> str:
    """'peak 1700 MiB (load ..., run ...)' with the largest estimated components."""
    est = memory["estimate"]
    top = sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in top)
    if "measured_peak_bytes" in memory:
        gpu = (f" plus the CUDA context's {memory['gpu_context_bytes'] / MiB:.0f} MiB (profile figure; the GPU path "
               "was not measured)" if memory.get("gpu_context_bytes") else "")
        return (f"measured peak {memory['measured_peak_bytes'] / MiB:.0f} MiB "
                f"(load {memory['load_peak_bytes'] / MiB:.0f}, run {memory['run_peak_bytes'] / MiB:.0f}; "
                f"largest parts: {parts} MiB){gpu} is")
    return f"estimated peak up to {est['high_bytes'] / MiB:.0f} MiB (largest parts: {parts} MiB) is"
