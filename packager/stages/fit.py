"""fit: estimate and measure the packaged model's peak resident memory against the budget.

The estimate comes from the graph (packager/estimate.py). The bundle's own run.py measures it (`--measure`)
in a fresh child process with the target's session options and threads: the kernel's high-water mark, reset
before the load and again before the run, so the figure is the model's and the runtime's, not packager's. A
decoder is judged at its decode step with the deployment's context of KV cache (ctx.context);
--fit auto asks peaks_at() what a shorter context would take.
"""

from __future__ import annotations

import json
from typing import Any

from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.estimate import (
    Estimate,
    combine,
    estimate,
    largest_pass,
    sample_shapes,
    seq2seq_step_shapes,
    step_shapes,
    with_modes,
)
from packager.families import family_for
from packager.fit_memory import measure_folder, on_demand, over_budget, shared_bytes, verdict, without_runtime
from packager.manifest import runtime_spec
from packager.runtime_files import copy_runtime
from packager.runtimes import runtime_for

MiB = 2**20


def measure(ctx: Context) -> dict[str, Any]:
    runnable(ctx)
    return measure_folder(ctx.stage_dir, runtime_for(ctx.profile).host_python(ctx.profile))


def runnable(ctx: Context) -> None:
    """The staged folder as run.py can load it: the runner, and the manifest's runtime section (all that
    run.py reads of it; the bundle stage writes the full manifest)."""
    (ctx.stage_dir / "manifest.json").write_text(json.dumps({"runtime": runtime_spec(ctx)}), encoding="utf-8")
    copy_runtime(ctx.stage_dir, ctx.profile)


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
    """The packaged model's estimate; a decoder's at its largest pass with `context` tokens of KV cache (a prompt's
    last chunk: estimate.largest_pass);
    a multi-component model's with all its components resident together (`parts`: their estimates at
    `context`, when the caller has them already)."""
    assert ctx.packaged_model is not None
    if ctx.components:
        return combine(parts or component_estimates(ctx, context), shared_bytes(ctx.profile))
    io = ctx.io.to_dict()
    shapes = step_shapes(io, context, largest_pass(io, context)) if family_for(ctx.io.kind).context_sized and context \
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
    encoders = {mode: ctx.stage_dir / "model" / e["file"]
                for mode, e in ((ctx.io.soft or {}).get("encoders") or {}).items()}
    if encoders:   # a multimodal decoder's: each encoder's mode too (loaded on demand)
        est = with_modes(est, encoders, ctx.profile)
    measured = measure(ctx) if ctx.measure else None
    ctx.memory = verdict(ctx.profile, ctx.context, est, measured,
                         _components_memory(ctx, parts, measured) if ctx.components else None,
                         on_demand(ctx.stage_dir, ctx.io.soft))
    if not ctx.memory.fits and ctx.enforce_budget:
        raise PackagerError(
            f"does not fit: {over_budget(ctx.memory.to_dict())} over {ctx.profile.name}'s budget of "
            f"{ctx.memory.budget_bytes / MiB:.0f} MiB; "
            "pick a smaller recipe or model, or give the deployment more with --budget.",
            ExitCode.DOES_NOT_FIT,
        )


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


