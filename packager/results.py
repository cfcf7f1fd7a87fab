"""What packager's API returns: one bundle (`PackageResult`), several models in one bundle (`SuiteResult`), a
fit verdict (`CheckResult`). Each `to_dict()` is what the CLI's `--json` prints, built here and nowhere else;
packager/api.py makes them from a run's Context."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import ExitCode

if TYPE_CHECKING:
    from packager.context import Context
    from packager.smoke import SmokeResult

__all__ = ["CheckResult", "PackageResult", "SuiteResult", "accuracy_summary", "mixed_record"]


def mixed_record(ctx: Context) -> dict[str, Any] | None:
    """int4-mixed: what the recipe kept at 8 bits and at what cost (its params), and how the pipeline chose it."""
    if ctx.recipe is None or ctx.recipe.name != "int4-mixed":
        return None
    done: dict[str, Any] = ctx.recipe.params.get("mixed", {"layers_8bit": [], "cost_bytes": 0, "layer_bytes": {}})
    return done | {k: v for k, v in ctx.recipe.extra.get("search", {}).items() if k != "layers_8bit"}


def accuracy_summary(ctx: Context) -> dict[str, Any]:
    """verify's figures as `--json` prints them: without the per-output and per-prompt detail."""
    figures = ctx.accuracy.to_dict() if ctx.accuracy is not None else {}
    return {k: v for k, v in figures.items() if k not in ("outputs", "per_prompt")}


class _Smoked:
    """A packaged bundle's verdict: ok unless its smoke test ran and failed (exit code 8)."""

    smoke: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.smoke is None or (self.smoke["exit_code"] == 0 and self.smoke["verdict"] == "PASS")

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.ok else ExitCode.SMOKE_FAILED)


@dataclass(frozen=True)
class PackageResult(_Smoked):
    """One bundle: `to_dict()` is what `packager package --json` prints for it."""

    archive: Path
    bundle: str
    target: str
    recipe: str
    sizes: dict[str, int]              # archive_bytes, model_bytes
    accuracy: dict[str, Any]           # metric, threshold and figures against the fp32 reference
    memory: dict[str, Any]             # budget, estimate, measured peaks (this run's), verdict
    fit: dict[str, Any] | None         # --fit auto, or the default recipe's fallback: tried, chosen, why
    smoke: dict[str, Any] | None       # mode, verdict, exit_code, report; None without a smoke test
    signature: dict[str, Any] | None   # the signing key's fingerprint when signed
    cache: dict[str, str]              # stage -> "hit", "miss", "corrupt" (rebuilt) or "off"
    timings_s: dict[str, float]        # seconds per stage
    mixed: dict[str, Any] | None = None   # int4-mixed: the layers at 8 bits, their cost, the sensitivity measured
    coverage: dict[str, Any] | None = None  # the weight bytes at each precision (packager/coverage.py)
    smoke_result: SmokeResult | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"archive": str(self.archive), "bundle": self.bundle, "target": self.target, "recipe": self.recipe,
                "sizes": self.sizes, "accuracy": self.accuracy, "memory": self.memory, "fit": self.fit,
                "smoke": self.smoke, "signature": self.signature, "cache": self.cache, "timings_s": self.timings_s,
                **({"mixed": self.mixed} if self.mixed is not None else {}),
                **({"coverage": self.coverage} if self.coverage else {})}

    @classmethod
    def from_context(cls, ctx: Context, smoked: SmokeResult | None = None, smoke_mode: str | None = None,
                     sign: Path | None = None) -> PackageResult:
        from packager.signing import manifest_entry

        assert ctx.archive is not None
        return cls(
            archive=ctx.archive,
            bundle=ctx.bundle_name,
            target=ctx.profile.name,
            recipe=ctx.recipe_name,
            sizes={"archive_bytes": ctx.archive.stat().st_size,
                   # what the runner loads: every component of a multi-component model
                   "model_bytes": sum(f["size"] for f in ctx.bundle_files
                                      if f["path"].startswith(tuple(c.file for c in ctx.components)
                                                              or ctx.model_file))},
            accuracy=accuracy_summary(ctx),
            memory=ctx.memory.to_dict() if ctx.memory else {},
            fit=ctx.fit.to_dict() if ctx.fit else None,
            smoke=None if smoked is None else {"mode": smoke_mode, "verdict": smoked.verdict,
                                               "exit_code": smoked.exit_code, "report": smoked.report},
            signature=manifest_entry(sign) if sign else None,
            cache=dict(ctx.cache),
            timings_s=dict(ctx.timings),
            mixed=mixed_record(ctx),
            coverage=ctx.recipe.coverage if ctx.recipe else None,
            smoke_result=smoked,
        )


@dataclass(frozen=True)
class CheckResult:
    """Will the model fit: `to_dict()` is what `packager check --json` prints."""

    model: str
    target: str
    recipe: str
    fits: bool
    budget_bytes: int
    headroom_bytes: int                # negative: over the budget by that much
    verdict_basis: str                 # "measured" or "estimate (high)"
    context: int | None                # decoders: tokens of KV cache planned for
    estimate: dict[str, Any]           # low_bytes, high_bytes, breakdown, notes
    measured: dict[str, int] | None    # load_peak_bytes, run_peak_bytes, peak_bytes; None with measure=False
    cache: dict[str, str]
    timings_s: dict[str, float]
    # Multi-component models: per component (encoder, decoder) its recipe, file, size, own estimate (the
    # shared runtime counted once, in the whole's) and measured load; all resident together. Several
    # models (`packager check A B`): per model, its recipe, size, estimate alone and measured load.
    components: dict[str, Any] | None = None
    shared: list[dict[str, Any]] | None = None   # several models: the components they share (used_by, bytes)
    coverage: dict[str, Any] | None = None       # the weight bytes at each precision (packager/coverage.py)
    # A multimodal decoder's encoders, loaded on demand: each mode's file and size (Memory.on_demand)
    on_demand: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.fits else ExitCode.DOES_NOT_FIT)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "recipe": self.recipe, "fits": self.fits,
                "budget_bytes": self.budget_bytes, "headroom_bytes": self.headroom_bytes,
                "verdict_basis": self.verdict_basis, "context": self.context, "estimate": self.estimate,
                "measured": self.measured, "cache": self.cache, "timings_s": self.timings_s,
                **({"components": self.components} if self.components else {}),
                **({"shared": self.shared} if self.shared is not None else {}),
                **({"coverage": self.coverage} if self.coverage else {}),
                **({"on_demand": self.on_demand} if self.on_demand else {})}

    @classmethod
    def from_memory(cls, model: str, target: str, recipe: str, mem: dict[str, Any], cache: dict[str, str],
                    timings: dict[str, float], shared: list[dict[str, Any]] | None = None) -> CheckResult:
        """From a fit verdict (ctx.memory, or a bundle of several models' memory)."""
        est = mem["estimate"]
        measured = None if "measured_peak_bytes" not in mem else {
            "load_peak_bytes": mem["load_peak_bytes"], "run_peak_bytes": mem["run_peak_bytes"],
            "peak_bytes": mem["measured_peak_bytes"], **({"modes": mem["modes"]} if mem.get("modes") else {})}
        return cls(model=model, target=target, recipe=recipe, fits=mem["fits"], budget_bytes=mem["budget_bytes"],
                   headroom_bytes=mem["headroom_bytes"], verdict_basis=mem["verdict_basis"],
                   context=mem.get("context"), estimate={k: est[k] for k in ("low_bytes", "high_bytes", "breakdown",
                                                                             "notes", "modes") if k in est},
                   measured=measured, cache=cache, timings_s=timings, components=mem.get("components"), shared=shared,
                   on_demand=mem.get("on_demand"))

    @classmethod
    def from_context(cls, model: str, ctx: Context) -> CheckResult:
        assert ctx.memory is not None   # the fit stage ran
        found = cls.from_memory(model, ctx.profile.name, ctx.recipe_name, ctx.memory.to_dict(), dict(ctx.cache),
                                dict(ctx.timings))
        return dataclasses.replace(found, coverage=ctx.recipe.coverage if ctx.recipe else None)


@dataclass(frozen=True)
class SuiteResult(_Smoked):
    """One bundle of several models (`packager package A B`): `to_dict()` is what `--json` prints."""

    archive: Path
    bundle: str
    target: str
    models: dict[str, dict[str, Any]]   # per model: recipe, accuracy, memory alone, cache, timings (as a PackageResult)
    blobs: list[dict[str, Any]]         # key, used_by, bytes: the component files, a shared one stored once
    sizes: dict[str, int]               # archive_bytes, model_bytes (every model's loaded files, shared ones once)
    memory: dict[str, Any]              # all models together: budget, estimate, measured peaks, verdict, per model
    smoke: dict[str, Any] | None
    signature: dict[str, Any] | None    # the signing key's fingerprint when signed
    cache: dict[str, str]               # "<model> <stage>" -> hit / miss / corrupt / off
    timings_s: dict[str, float]         # "<model> <stage>" -> seconds, and "bundle of N" for the assembly
    smoke_result: SmokeResult | None = field(default=None, repr=False, compare=False)

    @property
    def recipe(self) -> str:
        return "; ".join(f"{name}: {m['recipe']}" for name, m in self.models.items())

    def to_dict(self) -> dict[str, Any]:
        # accuracy: each model's own, against its fp32 reference (what reports show per model)
        accuracy = {"metric": "per model", "components": {n: m["accuracy"] for n, m in self.models.items()}}
        return {"archive": str(self.archive), "bundle": self.bundle, "target": self.target, "recipe": self.recipe,
                "models": self.models, "blobs": self.blobs, "sizes": self.sizes, "memory": self.memory,
                "accuracy": accuracy, "fit": None,
                "smoke": self.smoke, "signature": self.signature, "cache": self.cache, "timings_s": self.timings_s}
