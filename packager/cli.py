"""The `packager` command line. Errors are caught once, here."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from packager import interrupts
from packager.cli_bench import bench
from packager.cli_bundle import inspect_model, keygen, smoke
from packager.cli_common import (
    AllTargetsOpt,
    BudgetOpt,
    DebugOpt,
    JsonOpt,
    KvBitsOpt,
    PickleOpt,
    ShapeOpt,
    TargetsOpt,
    ValueOpt,
    VerboseOpt,
    _dims,
    _guarded,
    _interrupted,
    _parse_pairs,
    _recipes,
    _samples,
    _say,
    _timing,
)
from packager.cli_env import env_app
from packager.cli_print import (
    _print_check,
    _print_checks,
    _print_many,
    _print_package,
    _print_packaged,
    _print_plan,
    _print_smoke_failure,
)
from packager.cli_targets import _each_target, _exit_several, _several_targets, _shared_cache, _write_report
from packager.errors import ExitCode, PackagerError
from packager.labels import provider_name
from packager.version import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Package models into self-testing bundles for phones, Raspberry Pi and Jetson Orin.",
    pretty_exceptions_enable=False,
    # Plain help: no markup to eat "[tool.packager]" or "[default: dist]", and nothing to escape in it.
    rich_markup_mode=None,
)


def _no_type_labels() -> None:
    """Help names each value by its metavar (--budget SIZE), never by a Python type (<list[str]>): an
    argument is named by its metavar already, so typer's type label after it goes."""
    from typer.core import TyperArgument

    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]


_no_type_labels()


@app.command()
@_timing("targets")
def targets(as_json: bool = JsonOpt, verbose: bool = VerboseOpt, debug: bool = DebugOpt) -> None:
    """List the target profiles (with --json: the CI matrix)."""
    from packager.paths import profiles_dir
    from packager.profile_types import DEFAULT_RUNTIME
    from packager.profiles import builtin_profiles

    profiles = _guarded(builtin_profiles, debug=debug, as_json=as_json)
    _say(verbose, as_json, f"profiles from {profiles_dir()}")
    rows = [{
        "name": p.name, "aliases": list(p.aliases), "description": p.description, "arch": p.device.arch,
        "cpu": p.device.cpu, "cores": p.device.cores, "ram_bytes": p.device.ram_bytes,
        "budget_bytes": p.budget.memory_bytes, "providers": list(p.runtime.providers), "recipe": p.recipe,
        "runtime": f"{p.runtime.package}=={p.runtime.version}", "runtime_name": p.runtime.name, "python": p.os.python,
        "debian": p.os.debian,  # "" where no Debian release matches the device: no `smoke --emulate`
        # decoder LLMs whose architecture its builder makes go to [decoder_runtime] (docs/llms.md)
        "decoder_runtime": (f"{p.decoder_runtime.runtime.package}=={p.decoder_runtime.runtime.version}"
                            if p.decoder_runtime else None),
        "decoder_recipe": p.decoder_runtime.recipe if p.decoder_runtime else (p.decoder_recipe or None),
    } for p in profiles.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("target", "aliases", "device", "RAM", "budget", "recipe", "LLMs", "providers", box=box.SIMPLE_HEAD)
    for r in rows:
        # decoder LLMs: their recipe, and their runtime where it is not ONNX Runtime itself
        genai = r["decoder_runtime"] or (r["runtime"] if r["runtime_name"] != DEFAULT_RUNTIME else "")
        llms = (r["decoder_recipe"] or r["recipe"]) + (f" ({genai.split('==')[0]})" if genai else "")
        table.add_row(r["name"], " ".join(r["aliases"]), f"{r['cores']}x {r['cpu']}",
                      f"{r['ram_bytes'] / 2**30:.0f} GiB",
                      f"{r['budget_bytes'] / 1e9:.1f} GB", r["recipe"], llms,
                      " > ".join(provider_name(p) for p in r["providers"]))
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # piped: no terminal width to fit, so do not fold the names
    out.print(table)

@app.command()
@_timing("package")
def package(
    model: list[str] = typer.Argument(..., metavar="MODEL", help="A Hugging Face folder, an .onnx file, or a built-in "
                                      f"sample ({_samples()}); several make one bundle of them all, loaded together, a "
                                      "component they share stored once."),
    target: list[str] = TargetsOpt,
    all_targets: bool = AllTargetsOpt,
    out: str | None = typer.Option(None, "--out", "-o", metavar="FOLDER",
                                   help="Folder for the bundle archive [default: dist]."),
    recipe: str | None = typer.Option(None, "--recipe", metavar="RECIPE", help=f"Quantization recipe ({_recipes()}); "
                                      "encoder-decoders also per component: encoder=int8-dynamic,decoder=int4 "
                                      "[default: the profile's for the model's kind]."),
    budget: str | None = BudgetOpt,
    context: str | None = typer.Option(None, "--context", metavar="TOKENS", help="Decoders: tokens of KV cache the "
                                       "deployment holds, e.g. 8K (K = 1024) or 4096 [default: the profile's]."),
    kv_bits: int | None = KvBitsOpt,
    calibration: Path | None = typer.Option(None, "--calibration", metavar="FILE", help="int8-static: text lines (text "
                                            "models) or an .npz of inputs to calibrate on [default: built-in]."),
    fit: str | None = typer.Option(None, "--fit", metavar="auto",
                                   help="auto: try the profile's recipes, most precise first, until one fits."),
    smoke: str | None = typer.Option(None, "--smoke", metavar="host|emulate", help="Then run the bundle's smoke test: "
                                     "host (this machine) or emulate (qemu, arm64 targets)."),
    sign: Path | None = typer.Option(None, "--sign", metavar="KEY", help="Sign the bundle's manifest with this Ed25519 "
                                     "private key (from `packager keygen`)."),
    name: str | None = typer.Option(None, "--name", metavar="NAME", help="Bundle name: letters, digits, '.', '-', '_', "
                                    "'+', at most 100 [default: from the model; with --adapter, <base>-<adapter "
                                    "folder>]."),
    adapter: str | None = typer.Option(None, "--adapter", metavar="FOLDER", help="A PEFT LoRA adapter folder "
                                       "(adapter_config.json + adapter_model.safetensors), or sample:tiny-llama-lora, "
                                       "merged into MODEL's weights before export."),
    eval_file: str | None = typer.Option(None, "--eval", metavar="FILE", help="A JSONL file of your own cases "
                                         "(decoders: prompt/expected/match; encoders: anchor/positive/negative): "
                                         "verify fails (exit 4) when the packaged model scores more than the profile's "
                                         "eval_tolerance below fp32."),
    allow_pickle: bool = PickleOpt,
    shape: list[str] = ShapeOpt,
    value: list[str] = ValueOpt,
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the stage cache "
                                  "(PACKAGER_NO_CACHE=1 does the same); several targets still share one export."),
    report: Path | None = typer.Option(None, "--report", metavar="FOLDER", help="Also write report.json, report.md and "
                                       "report.html of the run (every target, failures included) into this folder."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Export, quantize, verify, fit and bundle MODEL for a target (or several).

    Several MODELs make one bundle per target holding them all (an assistant's speech, vision and
    language models): each is verified on its own, and the budget is judged for all of them loaded
    together.

    Settings resolve as: option > PACKAGER_TARGET / _OUT / _RECIPE / _BUDGET > [tool.packager]
    in the nearest pyproject.toml > the target profile > defaults. The export is cached by content
    ($PACKAGER_CACHE_DIR/stages, default ~/.cache/packager/stages).
    """
    from packager.progress import Reporter

    reporter = Reporter(quiet=as_json)

    def prepare() -> tuple[Any, list[str] | None]:
        from packager.options import PackageOptions

        options = PackageOptions.build(   # every option checked once, before any target's work
            out=out, recipe=recipe, budget=budget, context=context, calibration=calibration, fit=fit, smoke=smoke,
            sign=sign, name=name, allow_pickle=allow_pickle, shapes=_parse_pairs(shape, "--shape", _dims),
            values=_parse_pairs(value, "--value", float), cache=not no_cache, adapter=adapter, eval_file=eval_file,
            kv_bits=kv_bits)
        if report is not None:
            from packager.bundle_files import check_output_dir

            check_output_dir(report, "--report", "the report")  # before minutes of work, not after
        return options, _several_targets(target, all_targets)

    options, targets = _guarded(prepare, debug=debug, as_json=as_json)
    if targets is None:  # one target, or none named (PACKAGER_TARGET, pyproject): the one-bundle output
        def one() -> Any:
            try:
                return _api().package(_models(model), target[0] if target else None, options, progress=reporter,
                                      verbose=verbose)
            except PackagerError as e:  # the report says so too
                if report is not None:
                    name = target[0] if target else os.environ.get("PACKAGER_TARGET") or "(default target)"
                    _write_report(report, [{"target": name, "error": e.message, "exit_code": int(e.code)}], reporter)
                raise

        result = _guarded(one, debug=debug, as_json=as_json)
        if report is not None:
            _guarded(lambda: _write_report(report, [result.to_dict()], reporter), debug=debug, as_json=as_json)
        if as_json:
            print(json.dumps(result.to_dict()))
        else:
            _print_package(result)
        _exit_on_smoke_failure(result, as_json)
        return
    rows: list[dict[str, Any]] = []
    try:
        with _shared_cache(no_cache) as cache:
            shared = dataclasses.replace(options, cache=cache)
            _each_target(targets, lambda t: _api().package(_models(model), t, shared, progress=reporter,
                                                           verbose=verbose), _print_packaged, reporter, rows,
                         debug=debug)
    except KeyboardInterrupt:  # after every cleanup, this run's cache folder included
        done = [r["archive"] for r in rows if "archive" in r]
        _interrupted(as_json, f"interrupted; {len(done)} of {len(targets)} bundles were finished before it "
                              f"({', '.join(done) or 'none'}), and nothing else was written." if done else
                     "interrupted; nothing was written.")
    if report is not None:
        _guarded(lambda: _write_report(report, rows, reporter), debug=debug, as_json=as_json)
    _exit_several(rows, as_json, _print_many)


def _api() -> Any:
    import packager.api

    return packager.api


def _exit_on_smoke_failure(result: Any, as_json: bool) -> None:
    if result.ok:
        return
    if not as_json:
        _print_smoke_failure(result)
    raise typer.Exit(int(ExitCode.SMOKE_FAILED))


def _models(given: list[str]) -> str | list[str]:
    return given[0] if len(given) == 1 else given


@app.command()
@_timing("check")
def check(
    model: list[str] = typer.Argument(..., metavar="MODEL", help="A Hugging Face folder, an .onnx file, a sample:NAME, "
                                      "or a bundle (.tar.gz or unpacked: its model as packaged, on its own target "
                                      "unless --target names another); several models: will they fit loaded together?"),
    target: list[str] = TargetsOpt,
    all_targets: bool = AllTargetsOpt,
    budget: str | None = BudgetOpt,
    recipe: str | None = typer.Option(None, "--recipe", metavar="RECIPE", help="Quantization recipe; "
                                      "encoder-decoders also per component: encoder=int8-dynamic,decoder=int4 "
                                      "[default: the profile's]."),
    context: str | None = typer.Option(None, "--context", metavar="TOKENS", help="Decoders: tokens of KV cache to plan "
                                       "for, e.g. 8K (K = 1024) or 4096 [default: the profile's]."),
    no_measure: bool = typer.Option(False, "--no-measure",
                                    help="Estimate only: do not load the model in a child process."),
    kv_bits: int | None = KvBitsOpt,
    allow_pickle: bool = PickleOpt,
    shape: list[str] = ShapeOpt,
    value: list[str] = ValueOpt,
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the stage cache."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Will MODEL fit the target's memory budget? Exit 0 if it fits, 3 if not. Several MODELs: all of
    them loaded together, as `package` bundles them. Several targets: one verdict each, the exit code
    the first failing target's."""
    from packager.progress import Reporter

    reporter = Reporter(quiet=as_json)

    def prepare() -> tuple[Any, list[str] | None]:
        from packager.options import PackageOptions

        options = PackageOptions.build(budget=budget, recipe=recipe, context=context, measure=not no_measure,
                                       allow_pickle=allow_pickle, shapes=_parse_pairs(shape, "--shape", _dims),
                                       values=_parse_pairs(value, "--value", float), cache=not no_cache,
                                       kv_bits=kv_bits)
        return options, _several_targets(target, all_targets)

    options, targets = _guarded(prepare, debug=debug, as_json=as_json)
    if targets is None:
        result = _guarded(lambda: _api().check(_models(model), target[0] if target else None, options,
                                               progress=reporter, verbose=verbose), debug=debug, as_json=as_json)
        if as_json:
            print(json.dumps(result.to_dict()))
        else:
            _print_check(result)
        raise typer.Exit(result.exit_code)
    rows: list[dict[str, Any]] = []
    try:
        with _shared_cache(no_cache) as cache:
            shared = dataclasses.replace(options, cache=cache)
            _each_target(targets, lambda t: _api().check(_models(model), t, shared, progress=reporter,
                                                         verbose=verbose), _print_check, reporter, rows, debug=debug)
    except KeyboardInterrupt:
        _interrupted(as_json)
    _exit_several(rows, as_json, _print_checks)


@app.command()
@_timing("plan")
def plan(
    config: str = typer.Argument(..., metavar="MODEL", help="A config.json, a Hugging Face folder holding one (no "
                                 "weights needed), or a built-in sample:NAME."),
    target: list[str] = TargetsOpt,
    all_targets: bool = AllTargetsOpt,
    precision: list[str] = typer.Option([], "--precision", metavar="PRECISION",
                                        help="fp32, fp16, int8, int4 (repeatable) [default: all]."),
    context: list[str] = typer.Option([], "--context", metavar="TOKENS", help="Context lengths, e.g. 8K (K = 1024) or "
                                      "4096 (repeatable) [default: 2K 8K 32K 128K, up to the model's]."),
    kv_bits: int | None = typer.Option(None, "--kv-bits", metavar="BITS", help="What-if: KV cache element size, 16, 8 "
                                       "or 4 bits [default: the activations' dtype]."),
    budget: str | None = BudgetOpt,
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Which precision and context fit the target, from the model's config alone. Several targets:
    one plan each."""
    from packager.progress import Reporter

    reporter = Reporter(quiet=as_json)

    def one(t: str | None) -> Any:
        return _api().plan(config, t, precisions=precision, contexts=context, kv_bits=kv_bits, budget=budget,
                           progress=reporter, verbose=verbose)

    targets = _guarded(lambda: _several_targets(target, all_targets), debug=debug, as_json=as_json)
    if targets is None:
        result = _guarded(lambda: one(target[0] if target else None), debug=debug, as_json=as_json)
        if as_json:
            print(json.dumps(result.to_dict()))
        else:
            _print_plan(result)
        return
    rows: list[dict[str, Any]] = []
    _each_target(targets, one, _print_plan, reporter, rows, debug=debug)
    _exit_several(rows, as_json, None)


# The bundle commands, in the order `packager --help` has always listed them.
app.command()(smoke)
app.command()(keygen)
app.command("inspect")(inspect_model)
app.add_typer(env_app, name="env")
app.command()(bench)


def _version(value: bool) -> None:
    if value:
        print(f"packager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version.")) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # packager never downloads models


def main() -> None:
    interrupts.install()
    try:
        app(prog_name="packager")
    except KeyboardInterrupt:  # outside any command's guard (while parsing, importing)
        _interrupted(False)
    finally:
        interrupts.uninstall()


if __name__ == "__main__":
    main()
