"""bundle: finish the staged bundle folder and move its archive into the output folder atomically.

Nothing appears in the output folder until the archive is complete: it is written beside
its final name under a temporary name and renamed in one step. An output folder that this
run created is removed again if the run fails.
"""

from __future__ import annotations

import shutil

from packager.bundle_files import file_entries, publish, requirements, run_arguments, seal, venv_command
from packager.context import Context
from packager.families import family_for
from packager.gpu import write_container_files
from packager.labels import recipe_label
from packager.manifest import build as build_manifest
from packager.runtime_files import copy_runtime
from packager.runtimes import runtime_for

MiB = 2**20


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


def run(ctx: Context) -> None:
    _write_files(ctx)
    if ctx.member_dir is not None:   # one model of several: packager/suite.py assembles the bundle
        shutil.copytree(ctx.stage_dir, ctx.member_dir)
        return
    ctx.archive = publish(ctx.stage_dir, ctx.out_dir, ctx.bundle_name)


