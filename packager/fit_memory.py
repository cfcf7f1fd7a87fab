"""A packaged folder's memory as the fit stage and a bundle of several models (packager/suite.py) record it: the
measurement by the bundle's own run.py in a fresh process, the record's measured figures, and an estimate less what
models in one process share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx

from packager.errors import ExitCode, PackagerError
from packager.model_files import external_data_files
from packager.profiles import Profile
from packager.records import Estimate, Memory
from packager.runtimes import runtime_for

MEASURE_TIMEOUT_S = 1800
MiB = 2**20


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



def measured_figures(measured: dict[str, Any]) -> dict[str, Any]:
    """`run.py --measure`'s figures as the memory record names them (Memory, the suite's memory)."""
    return {"measured_peak_bytes": measured["peak_bytes"], "load_peak_bytes": measured["load_peak_bytes"],
            "run_peak_bytes": measured["run_peak_bytes"], "baseline_bytes": measured["baseline_bytes"],
            "method": measured["method"], "measured_on": measured["host"],
            **({"modes": measured["modes"]} if measured.get("modes") else {})}



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



def over_budget(memory: dict[str, Any]) -> str:
    """'peak 1700 MiB (load ..., run ...)' with the largest estimated components."""
    est = memory["estimate"]
    top = sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in top)
    if "measured_peak_bytes" in memory:
        gpu = (f" plus the CUDA context's {memory['gpu_context_bytes'] / MiB:.0f} MiB (profile figure; the GPU path "
               "was not measured)" if memory.get("gpu_context_bytes") else "")
        modes = "".join(f", {mode} {m['peak_bytes'] / MiB:.0f}" for mode, m in (memory.get("modes") or {}).items())
        return (f"measured peak {memory['measured_peak_bytes'] / MiB:.0f} MiB "
                f"(load {memory['load_peak_bytes'] / MiB:.0f}, run {memory['run_peak_bytes'] / MiB:.0f}{modes}; "
                f"largest parts: {parts} MiB){gpu} is")
    modes = "".join(f", {mode} {m['high_bytes'] / MiB:.0f}" for mode, m in (est.get("modes") or {}).items())
    worst = max([est["high_bytes"], *(m["high_bytes"] for m in (est.get("modes") or {}).values())])
    text = f"; text {est['high_bytes'] / MiB:.0f}{modes}" if modes else ""
    return f"estimated peak up to {worst / MiB:.0f} MiB (largest parts: {parts} MiB{text}) is"



def on_demand(stage_dir: Path, soft: dict[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """A multimodal decoder's encoders, loaded on demand (io.soft.encoders): each mode's file in the bundle and its
    size, the residency class the manifest names apart from the resident weights; None for other models."""
    encoders = (soft or {}).get("encoders") or {}
    found = {mode: {"file": f"model/{e['file']}", "size_bytes": file_bytes(stage_dir / "model" / e["file"])}
             for mode, e in encoders.items() if (stage_dir / "model" / e["file"]).is_file()}
    return found or None


def file_bytes(graph: Path) -> int:
    """An ONNX file's size with its external data's (an fp32 encoder past 2 GiB keeps its weights beside it)."""
    files = external_data_files(graph, onnx.load(graph, load_external_data=False))
    return graph.stat().st_size + sum(f.stat().st_size for f in files)


def verdict(profile: Profile, context: int | None, est: Estimate, measured: dict[str, Any] | None,
            components: dict[str, dict[str, Any]] | None = None,
            encoders: dict[str, dict[str, Any]] | None = None) -> Memory:
    """The memory record and its verdict: a measurement is trusted over an estimate, and the estimate's high side
    over its low. A measurement without the GPU providers misses their CUDA context, which the device still holds."""
    budget = profile.budget.memory_bytes
    unseen = runtime_for(profile).unmeasured_bytes(profile, measured)
    peak = measured["peak_bytes"] + unseen if measured else est.worst_high_bytes()
    return Memory(
        budget_bytes=budget,
        context=context,
        estimate=est,
        verdict_basis="measured" if measured else "estimate (high)",
        fits=peak <= budget,
        headroom_bytes=budget - peak,
        **(measured_figures(measured) if measured else {}),
        gpu_context_bytes=unseen or None,  # added to the measured peak: the GPU path was not exercised
        components=components,
        on_demand=encoders,
    )
