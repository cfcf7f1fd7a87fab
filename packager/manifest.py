"""The bundle's manifest.json: the contract between the build host and the device."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import onnx
import onnxruntime

from packager.archive import source_date_epoch
from packager.context import Context
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.estimate import table_file_bytes
from packager.families import family_for
from packager.records import Memory
from packager.runtimes import runtime_for
from packager.signing import manifest_entry as signature_entry
from packager.version import __version__

SCHEMA_VERSION = 1

# The build host's measured memory varies by tens to hundreds of KiB from one run to the next (the
# allocator, the kernel's page accounting), so it stays out of the bundle, which the same inputs and
# tool versions must reproduce byte for byte: `packager package --json` (and the Python API) report
# it. The manifest keeps what is stable: the budget, the estimate, the verdict and how it was reached.
MEASURED_KEYS = ("measured_peak_bytes", "load_peak_bytes", "run_peak_bytes", "baseline_bytes", "measured_load_bytes",
                 "alone_peak_bytes", "modes")


def memory_record(memory: dict[str, Any]) -> dict[str, Any]:
    """ctx.memory as the manifest records it: without the run-to-run figures of the measurement."""
    record = {k: v for k, v in memory.items() if k not in MEASURED_KEYS}
    if "components" in memory:
        record["components"] = {name: {k: v for k, v in c.items() if k not in MEASURED_KEYS}
                                for name, c in memory["components"].items()}
    if memory.get("verdict_basis") == "measured":
        record.pop("headroom_bytes", None)  # the budget less the measured peak
        record["measured"] = ("within the budget on the build host; the figures are in `packager package --json`, "
                              "not here, as they vary run to run")
    return record


def built_at() -> dict[str, Any]:
    """{"built_at": ISO 8601 UTC} from SOURCE_DATE_EPOCH when it is set; no wall-clock time otherwise."""
    epoch = source_date_epoch()
    if epoch is None:
        return {}
    import datetime

    return {"built_at": datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def runtime_spec(ctx: Context) -> dict[str, Any]:
    """What run.py needs to load and feed the model the way the target does."""
    return {
        "model": ctx.model_file,
        # package, version, providers, provider_options, session: the runtime's (packager/runtimes/)
        **runtime_for(ctx.profile).session_spec(ctx.profile, ctx.memory),
        "io": ctx.io.to_dict(),
        # Multi-component models: every component's file, loaded together (`model` is the decoder's).
        **({"components": {c.name: c.file for c in ctx.components}} if ctx.components else {}),
        **({"context": ctx.context} if family_for(ctx.io.kind).generates else {}),
        **({"mapped": mapped} if (mapped := mapped_files(ctx)) else {}),
    }


def mapped_files(ctx: Context) -> list[str]:
    """The packaged model's lookup-table files beside runtime.model (estimate.table_file_bytes), which its loop
    reads a row per token from (packager/row_feed.py) and which never load whole."""
    if ctx.packaged_model is None or ctx.components or not ctx.model_file.endswith(".onnx"):
        return []   # an .ort file holds its tables in its own buffer
    return sorted(table_file_bytes(onnx.load(ctx.packaged_model, load_external_data=False)))


def smoke_spec(ctx: Context) -> dict[str, Any]:
    """The thresholds the device's smoke test holds the bundle to."""
    limits = ctx.profile.accuracy
    # --eval: the first cases of the user's eval file ship in the bundle, with the score the packaged model
    # got on them on the build host; the device must score within the tolerance of it.
    assert ctx.accuracy is not None   # verify ran
    gate = {"eval": ctx.accuracy.more["eval"]["smoke"]} if "eval" in ctx.accuracy.more else {}
    return {**family_for(ctx.io.kind).smoke_limits(limits), **gate}


def build(ctx: Context) -> dict[str, Any]:
    """The manifest, as the device's typed reader (targets/runtime/manifest.py) reads it back."""
    assert ctx.source is not None and ctx.recipe is not None and ctx.accuracy is not None and ctx.memory is not None
    return checked({
        "schema_version": SCHEMA_VERSION,
        "name": ctx.source.name,
        "target": ctx.profile.name,
        "source": {
            "kind": ctx.source.kind,
            "name": ctx.source.path.name,
            "sha256": ctx.source.sha256,
            "files": len(ctx.source.files),
            "task": ctx.source.task,
            "architecture": ctx.source.architecture,
            # --adapter: the LoRA adapter merged into the base (sha256 above) before export, and how
            **({"adapter": ctx.source.adapter.record(ctx.source.merge_method)} if ctx.source.adapter else {}),
        },
        "profile": {k: v for k, v in ctx.profile.to_dict().items() if k != "source"},
        "recipe": dataclasses.asdict(ctx.recipe) | ({"fit": ctx.fit.to_dict()} if ctx.fit else {}),
        "runtime": runtime_spec(ctx),
        "compatibility": ctx.compatibility,
        **({"mobile": ctx.mobile} if ctx.mobile else {}),
        "inputs": ctx.io.inputs,
        "outputs": ctx.io.outputs,
        "files": ctx.bundle_files,
        "memory": Memory.from_dict(memory_record(ctx.memory.to_dict())).to_dict(),
        "accuracy": ctx.accuracy.to_dict(),
        "smoke": smoke_spec(ctx),
        "built_with": {
            "packager": __version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        **built_at(),
        **({"signature": signature_entry(ctx.sign_key)} if ctx.sign_key else {}),
    })


def checked(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` through the device's reader and back: what the bundle ships is what the device reads."""
    rt = runner()
    try:
        record: dict[str, Any] = rt.manifest_record(manifest).to_dict()
    except rt.ManifestError as e:   # packager wrote what its own reader refuses: a bug, not the user's input
        raise PackagerError(f"packager built a manifest its device side cannot read ({e}); please report it",
                            ExitCode.INTERNAL) from None
    return record
