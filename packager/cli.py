"""The `packager` command line. Errors are caught once, here."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from packager import __version__
from packager.errors import ExitCode, PackagerError, disk_full
from packager.labels import memory_label, provider_name
from packager.leftovers import temp_folder

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Package models into self-testing bundles for phones, Raspberry Pi and Jetson Orin.",
    pretty_exceptions_enable=False,
    # Plain help: no markup to eat "[tool.packager]" or "[default: dist]", and nothing to escape in it.
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False)
MiB = 2**20


def _no_type_labels() -> None:
    """Help names each value by its metavar (--budget SIZE), never by a Python type (<list[str]>): an
    argument is named by its metavar already, so typer's type label after it goes."""
    from typer.core import TyperArgument

    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]


_no_type_labels()

DebugOpt = typer.Option(False, "--debug", help="Show tracebacks.", envvar="PACKAGER_DEBUG")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Say where each setting came from, and how long it took.")
TargetsOpt = typer.Option([], "--target", "-t", metavar="NAME", help="Target profile name or alias (see `packager "
                          "targets`), or a profile .toml; repeat it for several targets, one result each.")
AllTargetsOpt = typer.Option(False, "--all-targets", help="Every built-in target profile, one result each.")
BudgetOpt = typer.Option(None, "--budget", metavar="SIZE", help="Memory budget instead of the profile's, e.g. 1.2GB "
                         "or 900MiB [default: the profile's].")
ShapeOpt = typer.Option([], "--shape", metavar="NAME=D1,D2", help="Sample input shape for a tensor model "
                        "(repeatable).")
ValueOpt = typer.Option([], "--value", metavar="NAME=V", help="Fill a sample input with a value, e.g. sr=16000 "
                        "(repeatable).")
PickleOpt = typer.Option(False, "--allow-pickle", help="Accept pickled weights (.bin), loaded with torch's "
                         "weights-only loader.")


def _recipes() -> str:
    """The recipes, as help lists them: from the registry, which names them without loading onnx."""
    from packager.recipes import help_text

    return help_text()


def _samples() -> str:
    """The built-in samples, as help lists them: from the registry, so that none is left out."""
    from packager.samples import SAMPLES

    return ", ".join(f"sample:{name}" for name in SAMPLES)


def _timing(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A command that says, with --verbose, how long it took (however it ends)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def timed(*args: Any, **kwargs: Any) -> None:
            with _timed(kwargs.get("verbose", False), kwargs.get("as_json", False), what):
                command(*args, **kwargs)

        return timed

    return decorate


def _say(verbose: bool, as_json: bool, line: str) -> None:
    """--verbose: a line for the human, on stderr (never with --json)."""
    if verbose and not as_json:
        err.print(escape(line), soft_wrap=True)


@contextlib.contextmanager
def _timed(verbose: bool, as_json: bool, what: str) -> Iterator[None]:
    """--verbose: how long the command took, however it ends."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _say(verbose, as_json, f"{what} took {time.perf_counter() - start:.1f}s")


def _interrupted(as_json: bool, message: str = "interrupted; nothing was written.") -> NoReturn:
    err.print(f"[red]error:[/] {message}")
    if as_json:
        print(json.dumps({"error": message, "exit_code": int(ExitCode.INTERRUPTED)}))
    sys.stdout.flush()
    sys.stderr.flush()
    # The interrupt has unwound through every stage's cleanup already. Leave now: the interpreter's
    # own shutdown would turn a handled KeyboardInterrupt into death by SIGINT (exit -2, not 130).
    os._exit(int(ExitCode.INTERRUPTED))


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    if as_json:
        print(json.dumps({"error": message, "exit_code": int(code)}))
    raise typer.Exit(int(code))


def _guarded(fn: Callable[[], Any], *, debug: bool, as_json: bool) -> Any:
    try:
        return fn()
    except KeyboardInterrupt:
        _interrupted(as_json)
    except typer.Exit:
        raise
    except Exception as e:
        if debug:
            traceback.print_exc()
        message, code = _error(e)
        _fail(message, code, as_json)


def _parse_pairs(items: list[str], option: str, convert: Callable[[str], Any]) -> dict[str, Any]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            result[name] = convert(value)
        except ValueError:
            raise PackagerError(f"{option} {item!r} is not NAME=VALUE in the right form "
                                f"(e.g. {option} input=1,512); fix the option.", ExitCode.USAGE) from None
    return result


def _dims(text: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip() != "")
    if any(d < 0 for d in dims):
        raise ValueError
    return dims


@app.command()
@_timing("targets")
def targets(as_json: bool = JsonOpt, verbose: bool = VerboseOpt, debug: bool = DebugOpt) -> None:
    """List the target profiles (with --json: the CI matrix)."""
    from packager.paths import profiles_dir
    from packager.profiles import builtin_profiles

    profiles = _guarded(builtin_profiles, debug=debug, as_json=as_json)
    _say(verbose, as_json, f"profiles from {profiles_dir()}")
    rows = [{
        "name": p.name, "aliases": list(p.aliases), "description": p.description, "arch": p.device.arch,
        "cpu": p.device.cpu, "cores": p.device.cores, "ram_bytes": p.device.ram_bytes,
        "budget_bytes": p.budget.memory_bytes, "providers": list(p.runtime.providers), "recipe": p.recipe,
        "runtime": f"{p.runtime.package}=={p.runtime.version}", "python": p.os.python,
        "debian": p.os.debian,  # "" where no Debian release matches the device: no `smoke --emulate`
    } for p in profiles.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("target", "aliases", "device", "RAM", "budget", "recipe", "providers", box=box.SIMPLE_HEAD)
    for r in rows:
        table.add_row(r["name"], " ".join(r["aliases"]), f"{r['cores']}x {r['cpu']}",
                      f"{r['ram_bytes'] / 2**30:.0f} GiB",
                      f"{r['budget_bytes'] / 1e9:.1f} GB", r["recipe"],
                      " > ".join(provider_name(p) for p in r["providers"]))
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # piped: no terminal width to fit, so do not fold the names
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
            values=_parse_pairs(value, "--value", float), cache=not no_cache, adapter=adapter, eval_file=eval_file)
        if report is not None:
            from packager.stages.bundle import check_output_dir

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


@contextlib.contextmanager
def _shared_cache(no_cache: bool) -> Iterator[bool | Path]:
    """The stage cache for several targets: the user's, or with --no-cache one for this run only, so
    that the targets still share one export."""
    with temp_folder("cache") as tmp:
        yield Path(tmp) if no_cache or _cache_off() else True


def _each_target(targets: list[str], run: Callable[[str], Any], show: Callable[[Any], None], reporter: Any,
                 rows: list[dict[str, Any]], *, debug: bool) -> None:
    """`run` for each target in turn, going on after a failure; one result row per target in `rows` (the
    result's to_dict() and its exit_code, or the target, the error and its exit code)."""
    for t in targets:
        reporter.print(f"-- {t}")
        try:
            result = run(t)
        except Exception as e:
            if debug:
                traceback.print_exc()
            message, code = _error(e)
            err.print(f"[red]error:[/] {escape(t)}: {escape(message)}", soft_wrap=True)
            rows.append({"target": t, "error": message, "exit_code": code})
            continue
        if not reporter.quiet:
            show(result)
        rows.append(result.to_dict() | {"exit_code": result.exit_code})


def _exit_several(rows: list[dict[str, Any]], as_json: bool,
                  summary: Callable[[list[dict[str, Any]]], None] | None) -> NoReturn:
    """The end of a run over several targets: {"results": rows, "exit_code": N} with --json, else the
    summary table; the exit code is the first failing target's (0 when none failed)."""
    code = next((r["exit_code"] for r in rows if r["exit_code"]), 0)
    if as_json:
        print(json.dumps({"results": rows, "exit_code": code}))
    elif summary is not None:
        summary(rows)
    raise typer.Exit(code)


def _write_report(folder: Path, rows: list[dict[str, Any]], reporter: Any) -> None:
    from packager.report import write_reports

    paths = write_reports(rows, folder)
    reporter.print(f"report    {', '.join(str(p) for p in paths)}")


def _cache_off() -> bool:
    from packager.cache import cache_disabled_by_env

    return cache_disabled_by_env()


def _api() -> Any:
    import packager.api

    return packager.api


def _several_targets(target: list[str], all_targets: bool) -> list[str] | None:
    """The profile names to run for when there are several (in order, each once), else None."""
    from packager.profiles import builtin_profiles, resolve_target

    if all_targets and target:
        raise PackagerError("--all-targets runs for every built-in target; drop --target or --all-targets.",
                            ExitCode.USAGE)
    if all_targets:
        return list(builtin_profiles())
    if len(target) <= 1:
        return None
    names: dict[str, str] = {}
    for t in target:  # every name checked before minutes of work
        profile = resolve_target(t)
        names.setdefault(t if t.endswith(".toml") else profile.name, t)
    return [t if t.endswith(".toml") else n for n, t in names.items()]


def _print_packaged(result: Any) -> None:
    """One target's bundle among several: its lines, and the smoke test's failure if it failed."""
    _print_package(result)
    if not result.ok:
        _print_smoke_failure(result)


def _error(e: Exception) -> tuple[str, int]:
    """The sentence and exit code for any failure: a PackagerError's own, a full disk's, or a bug's."""
    e = disk_full(e) or e
    if isinstance(e, PackagerError):
        return e.message, int(e.code)
    return f"internal error ({type(e).__name__}: {e}); rerun with --debug and report it.", int(ExitCode.INTERNAL)


def _print_many(rows: list[dict[str, Any]]) -> None:
    table = Table("target", "recipe", "result", "archive", box=box.SIMPLE_HEAD)
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["target"]), "", f"[red]exit {r['exit_code']}[/]", escape(r["error"]))
            continue
        cached = ", ".join(f"{stage} cached" for stage, status in r["cache"].items() if status == "hit")
        result = "[green]ok[/]" if r["exit_code"] == 0 else f"[red]smoke failed (exit {r['exit_code']})[/]"
        table.add_row(r["target"], r["recipe"], result + (f" ({cached})" if cached else ""), escape(r["archive"]))
    _summary_console().print(table)


def _exit_on_smoke_failure(result: Any, as_json: bool) -> None:
    if result.ok:
        return
    if not as_json:
        _print_smoke_failure(result)
    raise typer.Exit(int(ExitCode.SMOKE_FAILED))


def _print_smoke_failure(result: Any) -> None:
    _print_smoke(result.smoke_result)
    err.print(f"[red]error:[/] the bundle's smoke test failed: {escape(result.smoke['verdict'])}; the archive "
              f"{escape(str(result.archive))} is kept for inspection.", soft_wrap=True)


def _models(given: list[str]) -> str | list[str]:
    return given[0] if len(given) == 1 else given


def _print_package(r: Any) -> None:
    if hasattr(r, "models"):
        _print_suite(r)
        return
    mem = r.memory
    acc = r.accuracy
    if acc["metric"] == "token agreement":
        err.print(f"accuracy  {acc['token_agreement']:.1%} of fp32's greedy tokens, "
                  f"logits cosine {acc['min_logits_cosine']:.4f}, "
                  f"{acc['identical_generations']}/{acc['samples']} continuations identical (thresholds "
                  f"{acc['threshold']['token_agreement']:.0%}, {acc['threshold']['logits_cosine']})")
    else:
        err.print(f"accuracy  min cosine {acc['min_cosine']:.5f} vs fp32 (threshold {acc['threshold']})")
    if "eval" in acc:
        ev = acc["eval"]
        err.print(f"eval      {ev['packaged_passed']}/{ev['cases']} of {escape(ev['file'])} pass "
                  f"({ev['packaged_score']:.1%}; fp32 {ev['reference_passed']}/{ev['cases']}, "
                  f"tolerance {ev['tolerance'] * 100:.4g}%), "
                  f"{ev['disagreements']} case(s) disagree")
    _print_memory(mem)
    err.print(f"model     {r.sizes['model_bytes'] / MiB:.1f} MiB ({r.recipe})")
    if r.mixed:
        from packager.report import mixed_text

        err.print(f"mixed     {escape(mixed_text(r.mixed).removeprefix('int4-mixed: '))}", soft_wrap=True)
    if r.signature:
        err.print(f"signed    ed25519, public key sha256 {r.signature['public_key_sha256']}", soft_wrap=True)
    if r.smoke:
        err.print(f"smoke     {r.smoke['mode']}: {escape(r.smoke['verdict'])}")
    print(r.archive)


def _print_memory(mem: dict[str, Any], what: str = "") -> None:
    est = mem["estimate"]
    err.print(f"memory    {what}peak {mem['measured_peak_bytes'] / MiB:.0f} MiB "
              f"(load {mem['load_peak_bytes'] / MiB:.0f}, run {mem['run_peak_bytes'] / MiB:.0f}; "
              f"estimate {est['low_bytes'] / MiB:.0f}-{est['high_bytes'] / MiB:.0f}) "
              f"of {mem['budget_bytes'] / MiB:.0f} MiB budget", soft_wrap=True)


def _print_suite(r: Any) -> None:
    """A bundle of several models: one line per model, the shared components, the memory of the whole."""
    for name, m in r.models.items():
        acc, alone = m["accuracy"], m["memory_alone"]
        figure = (f"{acc['token_agreement']:.1%} of fp32's greedy tokens" if acc["metric"] == "token agreement"
                  else f"min cosine {acc['min_cosine']:.5f}")
        err.print(f"model     {escape(name)}: {escape(m['recipe'])}, {figure}, alone peak "
                  f"{alone['measured_peak_bytes'] / MiB:.0f} MiB", soft_wrap=True)
    for b in r.blobs:
        if len(b["used_by"]) > 1:
            err.print(f"shared    {', '.join(b['used_by'])}: one copy, {b['bytes'] / MiB:.1f} MiB "
                      f"(blobs/{b['key'][:12]}...)", soft_wrap=True)
    _print_memory(r.memory, f"all {len(r.models)} together: ")
    err.print(f"size      {r.sizes['model_bytes'] / MiB:.1f} MiB loaded, "
              f"archive {r.sizes['archive_bytes'] / MiB:.1f} MiB")
    if r.signature:
        err.print(f"signed    ed25519, public key sha256 {r.signature['public_key_sha256']}", soft_wrap=True)
    if r.smoke:
        err.print(f"smoke     {r.smoke['mode']}: {escape(r.smoke['verdict'])}")
    print(r.archive)


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
                                       values=_parse_pairs(value, "--value", float), cache=not no_cache)
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


def _print_checks(rows: list[dict[str, Any]]) -> None:
    """Several targets' verdicts, one row each."""
    table = Table("target", "recipe", "verdict", "peak MiB", "budget MiB", box=box.SIMPLE_HEAD)
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["target"]), "", f"[red]exit {r['exit_code']}[/]", escape(r["error"]), "")
            continue
        verdict = "[green]fits[/]" if r["fits"] else "[red]does not fit[/]"
        table.add_row(r["target"], escape(r["recipe"]), verdict,
                      f"{(r['budget_bytes'] - r['headroom_bytes']) / MiB:.0f} ({r['verdict_basis']})",
                      f"{r['budget_bytes'] / MiB:.0f}")
    _summary_console().print(table)


def _summary_console() -> Console:
    out = Console(stderr=True)
    if not out.is_terminal:
        out = Console(stderr=True, width=160)  # a CI log: no terminal width to fit, so do not cut the paths
    return out


def _print_components(components: dict[str, Any], models: bool = False) -> None:
    """Per component of a multi-component model: its own share of the whole above (the runtime, shared,
    is counted once there), all resident together; or per model of several, likewise."""
    table = Table("model" if models else "model component", "recipe", "file MiB", "estimate MiB",
                  "measured load MiB", "largest parts (MiB)", box=box.SIMPLE_HEAD,
                  title="per model, all resident together (runtime counted once, above)" if models else
                  "per component, all resident together (runtime counted once, above)")
    for column in table.columns[2:5]:
        column.justify = "right"
    for name, c in components.items():
        est = c["estimate"]
        top = sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:3]
        measured = c.get("measured_load_bytes")
        table.add_row(name, c["recipe"], f"{c['size_bytes'] / MiB:.2f}",
                      f"{est['low_bytes'] / MiB:.1f} - {est['high_bytes'] / MiB:.1f}",
                      "-" if measured is None else f"{measured / MiB:.1f}",
                      ", ".join(f"{memory_label(k)} {v / MiB:.1f}" for k, v in top))
    Console(stderr=True).print(table)
    if any("measured_load_bytes" in c for c in components.values()):
        err.print(f"note: the {'first model' if models else 'encoder'} loads first: its measured load also holds the "
                  "runtime's one-time initialisation, which the whole's runtime base counts")


def _print_check(result: Any) -> None:
    r = result.to_dict()
    table = Table("memory for", "estimate MiB", box=box.SIMPLE_HEAD)
    table.columns[1].justify = "right"
    for name, size in r["estimate"]["breakdown"].items():
        table.add_row(memory_label(name), f"{size / MiB:.1f}")
    est = r["estimate"]
    table.add_row("[b]peak (low - high)[/]", f"[b]{est['low_bytes'] / MiB:.0f} - {est['high_bytes'] / MiB:.0f}[/]")
    if r["measured"]:
        m = r["measured"]
        table.add_row("[b]measured peak[/] (load / run)",
                      f"[b]{m['peak_bytes'] / MiB:.0f}[/] "
                      f"({m['load_peak_bytes'] / MiB:.0f} / {m['run_peak_bytes'] / MiB:.0f})")
    Console(stderr=True).print(table)
    if r.get("components"):
        _print_components(r["components"], models="shared" in r)
    for s in r.get("shared", []):
        err.print(f"shared: {', '.join(s['used_by'])} load one copy ({s['bytes'] / MiB:.2f} MiB), counted once")
    for note in est["notes"]:
        err.print(f"note: {escape(note)}")
    word = "FITS" if r["fits"] else "DOES NOT FIT"
    margin = abs(r["headroom_bytes"]) / MiB
    context = f", {r['context']} tokens of context" if r["context"] else ""
    print(f"{word}: {r['model']} on {r['target']} ({r['recipe']}{context}), {r['verdict_basis']} peak "
          f"{(r['budget_bytes'] - r['headroom_bytes']) / MiB:.0f} MiB against a budget of "
          f"{r['budget_bytes'] / MiB:.0f} MiB, "
          f"{margin:.0f} MiB {'to spare' if r['fits'] else 'over'}")


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


def _print_plan(p: Any) -> None:
    from packager.plan import BYTES_PER_PARAM, human_context, human_count

    a = p.architecture
    shape = f"{a.layers} layers, {a.kv_heads} KV heads x {a.head_dim}" if a.decoder else f"{a.layers} layers"
    err.print(escape(f"{a.name}: {human_count(a.parameters)} parameters ({a.parameters:,}), {shape}"), soft_wrap=True)
    err.print(f"target {escape(p.target)}, budget {p.budget_bytes / MiB:.0f} MiB", soft_wrap=True)
    for name, count in a.components.items():
        err.print(f"  {name}: {count:,} parameters" + "".join(
            f", {precision} {count * bytes_per / MiB:.1f} MiB" for precision, bytes_per in BYTES_PER_PARAM.items()))
    table = Table("precision", "context", "weights MiB", "KV cache MiB", "peak MiB (low-high)", "fits",
                  box=box.SIMPLE_HEAD)
    for r in p.rows:
        kv = f"{r.kv_cache_bytes / MiB:.0f}" + (f" ({r.kv_bits}-bit, planning only)" if r.planning_only else "")
        table.add_row(r.precision, human_context(r.context), f"{r.weights_bytes / MiB:.0f}", kv,
                      f"{r.peak_low_bytes / MiB:.0f}-{r.peak_high_bytes / MiB:.0f}",
                      "[green]yes[/]" if r.fits else "[red]no[/]")
    Console().print(table)
    for precision, tokens in p.max_context.items():
        if a.decoder:
            print(f"{precision}: "
                  + (f"fits up to {human_context(tokens)} tokens of context" if tokens else "does not fit"))
    for note in p.notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)


@app.command()
@_timing("smoke")
def smoke(
    bundle: Path = typer.Argument(..., metavar="BUNDLE",
                                  help="A bundle archive (.tar.gz) or an unpacked bundle folder."),
    python: str | None = typer.Option(None, "--python", metavar="PYTHON",
                                      help="Interpreter to run it with [default: this one]."),
    emulate: bool = typer.Option(False, "--emulate", help="Run it on the device's arm64 Debian userland and CPU "
                                 "model under qemu (needs qemu-user-static; checks correctness, not speed)."),
    public_key: Path | None = typer.Option(None, "--public-key", metavar="FILE", envvar="PACKAGER_PUBLIC_KEY",
                                           help="Fail unless this Ed25519 public key signed the bundle (checked "
                                           "before any of it runs)."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Run a bundle's own smoke test in a fresh process and report its verdict."""
    from packager.smoke import run_smoke

    _say(verbose, as_json, f"python  = {python or sys.executable}  ({'--python' if python else 'this interpreter'})")
    if public_key is not None:
        origin = "PACKAGER_PUBLIC_KEY" if os.environ.get("PACKAGER_PUBLIC_KEY") == str(public_key) else "--public-key"
        _say(verbose, as_json, f"key     = {public_key}  ({origin})")

    result = _guarded(lambda: run_smoke(bundle, python, emulate=emulate, public_key=public_key), debug=debug,
                      as_json=as_json)
    if as_json:
        print(json.dumps({"bundle": result.bundle, "verdict": result.verdict, "exit_code": result.exit_code,
                          "report": result.report}))
    else:
        _print_smoke(result)
    if not result.passed:
        if not as_json:
            err.print(f"[red]error:[/] smoke test of {escape(str(bundle))} failed: {escape(result.verdict)}",
                      soft_wrap=True)
        raise typer.Exit(int(ExitCode.SMOKE_FAILED))


def _print_smoke(result: Any) -> None:
    r = result.report
    emu = result.emulation
    if emu:
        err.print(escape(f"emulated  {emu['emulated_cpu']} under {emu['qemu'].split(' (')[0]}, Debian {emu['debian']}, "
                         f"Python {emu['device_python']}, {emu['runtime']} {emu['runtime_version']}"), soft_wrap=True)
        if emu["cpu_note"]:
            err.print(escape(f"note: {emu['cpu_note']}"), soft_wrap=True)
    signature = r.get("signature", {})
    if signature.get("checked") and "public_key_sha256" in signature:
        err.print(f"signature verified, key sha256 {signature['public_key_sha256']}", soft_wrap=True)
    elif signature.get("note"):
        err.print(f"note: {escape(signature['note'])}", soft_wrap=True)
    for p in r.get("missing_providers", []):
        err.print(f"note: {provider_name(p)} ({p}) is not available on this host; ran on "
                  f"{', '.join(provider_name(q) for q in r['providers'])} (not exercised: {provider_name(p)})",
                  soft_wrap=True)
    if "files_checked" in r:
        err.print(f"checksums {r['files_checked']} files OK")
    for name, checked in (r.get("models") or {"": r}).items():   # a bundle of several models: each one's
        _print_smoke_model(f"{name}: " if name else "", checked)
    if "peak_bytes" in r:
        bound = " (upper bound: qemu's own memory included)" if emu else ""
        err.print(f"memory    peak {r['peak_bytes'] / MiB:.0f} MiB{bound} of {r['budget_bytes'] / MiB:.0f} MiB budget",
                  soft_wrap=True)
    print(result.verdict)


def _print_smoke_model(what: str, r: dict[str, Any]) -> None:
    acc = r.get("accuracy", {})
    if "token_agreement" in acc:   # decoders
        err.print(f"outputs   {escape(what)}{acc['token_agreement']:.1%} of the fp32 reference's greedy tokens, logits "
                  f"cosine {acc['min_logits_cosine']:.5f}", soft_wrap=True)
    elif "min_cosine" in acc:
        err.print(f"outputs   {escape(what)}min cosine {acc['min_cosine']:.5f} vs the fp32 reference", soft_wrap=True)
    if "eval" in r:
        err.print(f"eval      {escape(what)}{r['eval']['passed']}/{r['eval']['cases']} of the shipped eval cases pass "
                  f"(build host: {r['eval']['build_host_score']:.0%})", soft_wrap=True)


@app.command()
@_timing("keygen")
def keygen(
    private: Path = typer.Argument(..., metavar="PRIVATE",
                                   help="Where to write the private key (PEM, mode 0600); it stays on the build host."),
    public: Path | None = typer.Option(None, "--public", metavar="FILE",
                                       help="Where to write the public key [default: PRIVATE.pub]."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Make an Ed25519 key pair for `package --sign` (the .pub file goes on the devices). Never overwrites."""
    from packager.signing import keygen as make_keys

    private_path, public_path, fingerprint = _guarded(lambda: make_keys(private, public), debug=debug, as_json=as_json)
    _say(verbose, as_json, f"public key path from {'--public' if public else 'the default, PRIVATE.pub'}; "
                           "the fingerprint printed is the SHA-256 of the public key's raw 32 bytes")
    if as_json:
        print(json.dumps({"private_key": str(private_path), "public_key": str(public_path),
                          "public_key_sha256": fingerprint}))
        return
    err.print(f"private key {escape(str(private_path))} (keep it secret; sign with `packager package --sign "
              f"{escape(str(private_path))}`)", soft_wrap=True)
    err.print(f"public key  {escape(str(public_path))} "
              "(install it on the devices; set PACKAGER_PUBLIC_KEY to its path)", soft_wrap=True)
    print(fingerprint)


@app.command("inspect")
@_timing("inspect")
def inspect_model(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="An .onnx file, a folder holding model.onnx, a bundle (.tar.gz or unpacked), "
                                "or a Hugging Face folder or sample:NAME (exported first, as package does)."),
    target: list[str] = typer.Option([], "--target", "-t", metavar="NAME", help="Check this target's runtime "
                                     "(repeatable) [default: every profile]. Exit 11 if its runtime cannot run the "
                                     "model."),
    top: int = typer.Option(15, "--top", min=1, metavar="N", help="Operators shown in the table (--json lists all)."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Inputs, outputs, parameters, size, opsets and operators of an ONNX model, and which targets run it."""
    _say(verbose, as_json, f"targets = {', '.join(target)}  (--target)" if target else
         "targets = every built-in profile  (no --target)")

    def go() -> Any:
        from packager.inspection import inspect as inspect_onnx
        from packager.profiles import builtin_profiles, resolve_target

        profiles = [resolve_target(t) for t in target] or list(builtin_profiles().values())
        with temp_folder("inspect") as tmp:
            path, shown, bundle = _inspect_path(model, Path(tmp), profiles[0] if profiles else None)
            result = inspect_onnx(path, profiles, model=str(model))
        return result, shown, bundle

    result, shown, bundle = _guarded(go, debug=debug, as_json=as_json)
    summary = result.to_dict() | {"path": shown} | ({"bundle": bundle} if bundle else {})
    if as_json:
        print(json.dumps(summary))
    else:
        _print_inspect(summary, top)
    if target:  # asked about these targets: say no with an exit code
        failed = [c for c in result.compatibility if not c.ok]
        for c in failed:
            err.print(f"[red]error:[/] {escape(c.message())}", soft_wrap=True)
        if any(c.status == "incompatible" for c in failed):
            raise typer.Exit(int(ExitCode.RUNTIME_INCOMPATIBLE))
        if failed:
            raise typer.Exit(int(ExitCode.BAD_PROFILE))


def _inspect_path(spec: str, tmp: Path, profile: Any) -> tuple[Path, str, dict[str, Any] | None]:
    """The .onnx file MODEL names, how to show it, and the bundle's manifest summary when it is a bundle.
    A Hugging Face folder or a sample goes through packager's source and export stages first."""
    from packager.bundles import is_bundle, open_bundle

    model = Path(spec)
    if spec.startswith("sample:") or (model.is_dir() and (model / "config.json").is_file()
                                      and not list(model.glob("*.onnx"))):
        path = _exported(spec, tmp, profile)
        part = f"; its {path.name}: an encoder-decoder's decoder" if path.name != "model.onnx" else ""
        return path, f"{spec} (exported by packager, fp32{part})", None
    if not model.exists():
        raise PackagerError(f"{model}: no such file or folder; check the path.", ExitCode.BAD_INPUT)
    if is_bundle(model):
        bundle = open_bundle(model, tmp)
        shown = f"{model} (model/model.onnx)" if model.is_file() else str(bundle.model)
        return bundle.model, shown, bundle.summary
    shown = str(model)
    if model.is_file():
        if model.suffix != ".onnx":
            raise PackagerError(f"{model}: not an .onnx file or a bundle archive (.tar.gz); pass one of those.",
                                ExitCode.BAD_INPUT)
        return model, shown, None
    onnx_files = sorted(model.glob("*.onnx"))
    if (model / "model.onnx").is_file() or len(onnx_files) == 1:
        path = model / "model.onnx" if (model / "model.onnx").is_file() else onnx_files[0]
        return path, str(path), None
    what = f"{len(onnx_files)} .onnx files" if onnx_files else "no .onnx file"
    raise PackagerError(f"{model}: a folder with {what} and no model.onnx; pass the .onnx file itself.",
                        ExitCode.BAD_INPUT)


def _exported(spec: str, tmp: Path, profile: Any) -> Path:
    """The fp32 ONNX export of a Hugging Face folder or sample, as `packager package` makes it (and
    from the same stage cache), at the opset the first target's runtime takes."""
    from packager.cache import open_cache
    from packager.context import Context
    from packager.profiles import resolve_target
    from packager.stages import export, source

    ctx = Context(spec, profile or resolve_target("rpi5"), "fp32", tmp, tmp / "out", stage_cache=open_cache(True))
    source.run(ctx)
    export.run(ctx)
    assert ctx.reference_model is not None
    return ctx.reference_model


def _print_inspect(r: dict[str, Any], top: int) -> None:
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)
    opsets = ", ".join(f"{d} {v}" for d, v in r["opsets"].items())
    out.print(escape(f"{r['path']}: IR version {r['ir_version']}, opsets {opsets}; {r['parameters']:,} parameters, "
                     f"{r['size_bytes'] / MiB:.1f} MiB on disk"), soft_wrap=True)
    if r.get("bundle"):
        b = r["bundle"]
        out.print(escape(f"bundle {b['name']} for {b['target']} ({b['recipe']}, {b['runtime']})"), soft_wrap=True)
    io = Table("", "name", "dtype", "shape", box=box.SIMPLE_HEAD)
    for kind in ("inputs", "outputs"):
        for v in r[kind]:
            io.add_row(kind[:-1], escape(v["name"]), v["dtype"], escape(str(v["shape"])))
    out.print(io)
    ops = Table("operator", "count", box=box.SIMPLE_HEAD)
    ops.columns[1].justify = "right"
    for row in r["operators"][:top]:
        name = row["op_type"] if row["domain"] == "ai.onnx" else f"{row['domain']}.{row['op_type']}"
        ops.add_row(escape(name), str(row["count"]))
    if len(r["operators"]) > top:
        ops.add_row(f"... {len(r['operators']) - top} more (--top, --json)", "")
    out.print(ops)
    compat = Table("target", "runtime", "verdict", "needs", box=box.SIMPLE_HEAD)
    verdicts = {"ok": "[green]runs[/]", "incompatible": "[red]does not run[/]", "unknown": "[yellow]unknown runtime[/]"}
    for c in r["compatibility"]:
        compat.add_row(c["target"], c["runtime"], verdicts[c["status"]], c["needs"] or "")
    out.print(compat)
    for c in r["compatibility"]:
        for line in [*c["problems"], *([c["reason"]] if c.get("reason") else [])]:
            out.print(escape(f"{c['target']}: {line}"), soft_wrap=True)
    notes = sorted({n for c in r["compatibility"] for n in c["notes"]})
    for note in notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)


env_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="Exporter environments: one per exporter whose pins conflict with packager's own.")
app.add_typer(env_app, name="env")


@env_app.command("create")
@_timing("env create")
def env_create(
    name: str = typer.Argument(..., metavar="NAME", help="The environment (see `packager env list`), e.g. genai."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Make an exporter environment ahead of time (packager makes a missing one when it first needs it)."""
    from packager import exporter_envs

    def go() -> Path:
        env = exporter_envs.lookup(name)
        return exporter_envs.ensure(env, lambda line: _say(verbose, as_json, line))

    folder = _guarded(go, debug=debug, as_json=as_json)
    if as_json:
        print(json.dumps({"name": name, "folder": str(folder), "ready": True}))
        return
    err.print(f"{escape(name)}: ready in {escape(str(folder))}", soft_wrap=True)


@env_app.command("list")
@_timing("env list")
def env_list(as_json: bool = JsonOpt, verbose: bool = VerboseOpt, debug: bool = DebugOpt) -> None:
    """List the exporter environments, their pinned requirements and whether each is made."""
    from packager import exporter_envs

    rows = _guarded(exporter_envs.statuses, debug=debug, as_json=as_json)
    _say(verbose, as_json, f"environments under {exporter_envs.envs_root()} (PACKAGER_CACHE_DIR)")
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    for r in rows:
        print(f"{r.name}  {'ready' if r.ready else 'not made (packager env create ' + r.name + ')'}  {r.folder}")
        print(f"    {r.purpose}: {' '.join(r.requirements)}")


def _version(value: bool) -> None:
    if value:
        print(f"packager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version.")) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # packager never downloads models


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so every stage's cleanup runs; a second
    # signal must not cut that cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app(prog_name="packager")
    except KeyboardInterrupt:  # outside any command's guard (while parsing, importing)
        _interrupted(False)


if __name__ == "__main__":
    main()
