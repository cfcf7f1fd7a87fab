"""The `packager` command line. Errors are caught once, here."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from packager import __version__
from packager.context import InputSpec
from packager.errors import ExitCode, PackagerError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Package models into self-testing bundles for phones, Raspberry Pi and Jetson Orin.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
MiB = 2**20

DebugOpt = typer.Option(False, "--debug", help="Show tracebacks.", envvar="PACKAGER_DEBUG")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")


def _interrupted(as_json: bool) -> NoReturn:
    message = "interrupted; nothing was written."
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
    except PackagerError as e:
        if debug:
            traceback.print_exc()
        _fail(e.message, e.code, as_json)
    except KeyboardInterrupt:
        _interrupted(as_json)
    except typer.Exit:
        raise
    except Exception as e:
        if debug:
            traceback.print_exc()
        _fail(f"internal error ({type(e).__name__}: {e}); rerun with --debug and report it.", ExitCode.INTERNAL, as_json)


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
def targets(as_json: bool = JsonOpt, debug: bool = DebugOpt) -> None:
    """List the target profiles (with --json: the CI matrix)."""
    from packager.profiles import builtin_profiles

    profiles = _guarded(builtin_profiles, debug=debug, as_json=as_json)
    rows = [{
        "name": p.name, "aliases": list(p.aliases), "description": p.description, "arch": p.device.arch,
        "cpu": p.device.cpu, "cores": p.device.cores, "ram_bytes": p.device.ram_bytes,
        "budget_bytes": p.budget.memory_bytes, "providers": list(p.runtime.providers), "recipe": p.recipe,
        "runtime": f"{p.runtime.package}=={p.runtime.version}", "python": p.os.python,
    } for p in profiles.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("target", "aliases", "device", "RAM", "budget", "recipe", "providers", box=box.SIMPLE_HEAD)
    for r in rows:
        table.add_row(r["name"], " ".join(r["aliases"]), f"{r['cores']}x {r['cpu']}", f"{r['ram_bytes'] / 2**30:.0f} GiB",
                      f"{r['budget_bytes'] / 1e9:.1f} GB", r["recipe"],
                      " > ".join(p.removesuffix("ExecutionProvider") for p in r["providers"]))
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # piped: no terminal width to fit, so do not fold the names
    out.print(table)

@app.command()
def package(
    model: str = typer.Argument(..., help="A Hugging Face folder, an .onnx file, or sample:minilm / sample:silero-vad."),
    target: str | None = typer.Option(None, "--target", "-t", help="Target profile name or alias (see `packager targets`), or a profile .toml."),
    out: str | None = typer.Option(None, "--out", "-o", help="Folder for the bundle archive [default: dist]."),
    recipe: str | None = typer.Option(None, "--recipe", help="Quantization recipe (default: the profile's for the model's kind): fp32, int8-dynamic, int4, fp16."),
    budget: str | None = typer.Option(None, "--budget", help="Memory budget instead of the profile's, e.g. 1.2GB or 900MiB."),
    context: int | None = typer.Option(None, "--context", min=1, help="Decoders: tokens of KV cache the deployment holds (default: the profile's)."),
    fit: str | None = typer.Option(None, "--fit", help="auto: try the profile's recipes, most precise first, until one fits."),
    smoke: str | None = typer.Option(None, "--smoke", help="Then run the bundle's smoke test: host (this machine) or emulate (qemu, arm64 targets)."),
    sign: Path | None = typer.Option(None, "--sign", help="Sign the bundle's manifest with this Ed25519 private key (from `packager keygen`)."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: from the model)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled weights (.bin), loaded with torch's weights-only loader."),
    shape: list[str] = typer.Option([], "--shape", help="Sample input shape for a tensor model: NAME=D1,D2 (repeatable)."),
    value: list[str] = typer.Option([], "--value", help="Fill a sample input with a value: NAME=V, e.g. sr=16000 (repeatable)."),
    as_json: bool = JsonOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Say where each setting came from."),
    debug: bool = DebugOpt,
) -> None:
    """Export, quantize, verify, fit and bundle MODEL for a target.

    Settings resolve as: option > PACKAGER_TARGET / _OUT / _RECIPE / _BUDGET > [tool.packager]
    in the nearest pyproject.toml > the target profile > defaults.
    """
    def go() -> Any:
        from packager.config import resolve_package_settings
        from packager.pipeline import package as run_pipeline  # imports the runtime: seconds
        from packager.progress import Reporter

        spec = InputSpec(shapes=_parse_pairs(shape, "--shape", _dims), values=_parse_pairs(value, "--value", float))
        settings = resolve_package_settings({"target": target, "out": out, "recipe": recipe, "budget": budget})
        reporter = Reporter(quiet=as_json)
        if verbose:
            for line in settings.describe():
                reporter.print(line)
        if fit not in (None, "auto"):
            raise PackagerError(f"--fit {fit!r} is not a mode; the only one is --fit auto.", ExitCode.USAGE)
        if fit and recipe:
            raise PackagerError("--fit auto chooses the recipe itself; drop --recipe or --fit.", ExitCode.USAGE)
        if smoke not in (None, "host", "emulate"):
            raise PackagerError(f"--smoke {smoke!r} is not a mode; use --smoke host or --smoke emulate.", ExitCode.USAGE)
        ctx = run_pipeline(model, settings, name=name, input_spec=spec, reporter=reporter, fit_auto=fit == "auto",
                           allow_pickle=allow_pickle, sign_key=sign, context=context)
        if smoke is None:
            return ctx, None
        from packager.smoke import run_smoke

        with reporter.stage(f"smoke ({smoke})", ctx.timings), tempfile.TemporaryDirectory(prefix="packager-key-") as tmp:
            return ctx, run_smoke(ctx.archive, emulate=smoke == "emulate", public_key=_smoke_key(sign, Path(tmp)))

    ctx, smoked = _guarded(go, debug=debug, as_json=as_json)
    summary = {
        "archive": str(ctx.archive),
        "bundle": ctx.bundle_name,
        "target": ctx.profile.name,
        "recipe": ctx.recipe_name,
        "sizes": {
            "archive_bytes": ctx.archive.stat().st_size,
            "model_bytes": sum(f["size"] for f in ctx.bundle_files if f["path"].startswith("model/model.onnx")),
        },
        "accuracy": {k: v for k, v in ctx.accuracy.items() if k not in ("outputs", "per_prompt")},
        "memory": ctx.memory,
        "fit": ctx.fit or None,
        "smoke": None if smoked is None else {"mode": smoke, "verdict": smoked.verdict, "exit_code": smoked.exit_code,
                                              "report": smoked.report},
        "signature": _signature(sign),
        "timings_s": ctx.timings,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        _print_package(ctx, summary)
    if smoked is not None and not smoked.passed:
        if not as_json:
            _print_smoke(smoked)
            err.print(f"[red]error:[/] the bundle's smoke test failed: {escape(smoked.verdict)}; the archive "
                      f"{escape(str(ctx.archive))} is kept for inspection.", soft_wrap=True)
        raise typer.Exit(int(ExitCode.SMOKE_FAILED))


def _smoke_key(sign: Path | None, tmp: Path) -> Path | None:
    """The public key `package --smoke` checks the new bundle with: the --sign key's own public half,
    else the one configured for devices ($PACKAGER_PUBLIC_KEY), else none."""
    from packager.runtime_files import runner
    from packager.signing import write_public_key

    return write_public_key(sign, tmp / "public.pem") if sign else runner().configured_public_key()


def _signature(sign: Path | None) -> dict[str, Any] | None:
    from packager.signing import manifest_entry

    return manifest_entry(sign) if sign else None


def _print_package(ctx: Any, summary: dict[str, Any]) -> None:
    mem = ctx.memory
    acc = ctx.accuracy
    if acc["metric"] == "token agreement":
        err.print(f"accuracy  {acc['token_agreement']:.1%} of fp32's greedy tokens, logits cosine {acc['min_logits_cosine']:.4f}, "
                  f"{acc['identical_generations']}/{acc['samples']} continuations identical (thresholds "
                  f"{acc['threshold']['token_agreement']:.0%}, {acc['threshold']['logits_cosine']})")
    else:
        err.print(f"accuracy  min cosine {acc['min_cosine']:.5f} vs fp32 (threshold {acc['threshold']})")
    est = mem["estimate"]
    err.print(f"memory    peak {mem['measured_peak_bytes'] / MiB:.0f} MiB (load {mem['load_peak_bytes'] / MiB:.0f}, "
              f"run {mem['run_peak_bytes'] / MiB:.0f}; estimate {est['low_bytes'] / MiB:.0f}-{est['high_bytes'] / MiB:.0f}) "
              f"of {mem['budget_bytes'] / MiB:.0f} MiB budget")
    err.print(f"model     {summary['sizes']['model_bytes'] / MiB:.1f} MiB ({ctx.recipe_name})")
    if summary["signature"]:
        err.print(f"signed    ed25519, public key sha256 {summary['signature']['public_key_sha256']}", soft_wrap=True)
    if summary["smoke"]:
        err.print(f"smoke     {summary['smoke']['mode']}: {escape(summary['smoke']['verdict'])}")
    print(ctx.archive)


@app.command()
def check(
    model: str = typer.Argument(..., help="A Hugging Face folder, an .onnx file, or a sample:NAME."),
    target: str | None = typer.Option(None, "--target", "-t", help="Target profile name or alias, or a profile .toml."),
    budget: str | None = typer.Option(None, "--budget", help="Memory budget instead of the profile's, e.g. 1.2GB or 900MiB."),
    recipe: str | None = typer.Option(None, "--recipe", help="Quantization recipe (default: the profile's)."),
    context: int | None = typer.Option(None, "--context", min=1, help="Tokens of KV cache to plan for (decoders)."),
    no_measure: bool = typer.Option(False, "--no-measure", help="Estimate only: do not load the model in a child process."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled weights (.bin), loaded with torch's weights-only loader."),
    shape: list[str] = typer.Option([], "--shape", help="Sample input shape for a tensor model: NAME=D1,D2 (repeatable)."),
    value: list[str] = typer.Option([], "--value", help="Fill a sample input with a value: NAME=V (repeatable)."),
    as_json: bool = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Will MODEL fit the target's memory budget? Exit 0 if it fits, 3 if not."""

    def go() -> Any:
        from packager.config import resolve_package_settings
        from packager.pipeline import check as run_check
        from packager.progress import Reporter

        spec = InputSpec(shapes=_parse_pairs(shape, "--shape", _dims), values=_parse_pairs(value, "--value", float))
        settings = resolve_package_settings({"target": target, "recipe": recipe, "budget": budget, "out": None})
        return run_check(model, settings, context=context, measure=not no_measure, input_spec=spec,
                         reporter=Reporter(quiet=as_json), allow_pickle=allow_pickle)

    ctx = _guarded(go, debug=debug, as_json=as_json)
    mem = ctx.memory
    est = mem["estimate"]
    measured = None if "measured_peak_bytes" not in mem else {
        "load_peak_bytes": mem["load_peak_bytes"], "run_peak_bytes": mem["run_peak_bytes"],
        "peak_bytes": mem["measured_peak_bytes"]}
    result = {"model": model, "target": ctx.profile.name, "recipe": ctx.recipe_name, "fits": mem["fits"],
              "budget_bytes": mem["budget_bytes"], "headroom_bytes": mem["headroom_bytes"],
              "verdict_basis": mem["verdict_basis"], "context": mem["context"],
              "estimate": {k: est[k] for k in ("low_bytes", "high_bytes", "breakdown", "notes")}, "measured": measured}
    if as_json:
        print(json.dumps(result))
    else:
        _print_check(result)
    if not mem["fits"]:
        raise typer.Exit(int(ExitCode.DOES_NOT_FIT))


def _print_check(r: dict[str, Any]) -> None:
    table = Table("component", "estimate MiB", box=box.SIMPLE_HEAD)
    table.columns[1].justify = "right"
    for name, size in r["estimate"]["breakdown"].items():
        table.add_row(name, f"{size / MiB:.1f}")
    est = r["estimate"]
    table.add_row("[b]peak (low - high)[/]", f"[b]{est['low_bytes'] / MiB:.0f} - {est['high_bytes'] / MiB:.0f}[/]")
    if r["measured"]:
        m = r["measured"]
        table.add_row("[b]measured peak[/] (load / run)",
                      f"[b]{m['peak_bytes'] / MiB:.0f}[/] ({m['load_peak_bytes'] / MiB:.0f} / {m['run_peak_bytes'] / MiB:.0f})")
    Console(stderr=True).print(table)
    for note in est["notes"]:
        err.print(f"note: {escape(note)}")
    word = "FITS" if r["fits"] else "DOES NOT FIT"
    margin = abs(r["headroom_bytes"]) / MiB
    context = f", {r['context']} tokens of context" if r["context"] else ""
    print(f"{word}: {r['model']} on {r['target']} ({r['recipe']}{context}), {r['verdict_basis']} peak "
          f"{(r['budget_bytes'] - r['headroom_bytes']) / MiB:.0f} MiB against a budget of {r['budget_bytes'] / MiB:.0f} MiB, "
          f"{margin:.0f} MiB {'to spare' if r['fits'] else 'over'}")


@app.command()
def plan(
    config: Path = typer.Argument(..., help="A config.json, or a folder holding one (no weights needed)."),
    target: str | None = typer.Option(None, "--target", "-t", help="Target profile name or alias, or a profile .toml."),
    precision: list[str] = typer.Option([], "--precision", help="fp32, fp16, int8, int4 (repeatable; default: all)."),
    context: list[str] = typer.Option([], "--context", help="Context lengths, e.g. 8K (repeatable; default: 2K 8K 32K 128K)."),
    kv_bits: int | None = typer.Option(None, "--kv-bits", help="What-if: KV cache element size, 16, 8 or 4 bits."),
    budget: str | None = typer.Option(None, "--budget", help="Memory budget instead of the profile's."),
    as_json: bool = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Which precision and context fit the target, from the model's config alone."""

    def go() -> Any:
        from packager.config import resolve_package_settings
        from packager.plan import parse_context
        from packager.plan import plan as make_plan

        if kv_bits is not None and kv_bits not in (4, 8, 16, 32):
            raise PackagerError(f"--kv-bits {kv_bits} is not 4, 8, 16 or 32.", ExitCode.USAGE)
        contexts = _parse_list(context, "--context", parse_context)
        settings = resolve_package_settings({"target": target, "budget": budget, "out": None, "recipe": None})
        return make_plan(config, settings.profile, precision or None, contexts or None, kv_bits)

    result = _guarded(go, debug=debug, as_json=as_json)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    _print_plan(result)


def _parse_list(items: list[str], option: str, convert: Callable[[str], Any]) -> list[Any]:
    try:
        return [convert(i) for i in items]
    except ValueError:
        raise PackagerError(f"{option} {items!r} is not a list of numbers like 8192 or 8K; fix the option.",
                            ExitCode.USAGE) from None


def _print_plan(p: Any) -> None:
    from packager.plan import human_context

    a = p.architecture
    err.print(f"{a.name}: {a.parameters / 1e9:.3f}B parameters ({a.parameters:,}), {a.layers} layers, "
              f"{a.kv_heads} KV heads x {a.head_dim}; target {p.target}, budget {p.budget_bytes / MiB:.0f} MiB")
    table = Table("precision", "context", "weights MiB", "KV cache MiB", "peak MiB (low-high)", "fits", box=box.SIMPLE_HEAD)
    for r in p.rows:
        kv = f"{r.kv_cache_bytes / MiB:.0f}" + (f" ({r.kv_bits}-bit, planning only)" if r.planning_only else "")
        table.add_row(r.precision, human_context(r.context), f"{r.weights_bytes / MiB:.0f}", kv,
                      f"{r.peak_low_bytes / MiB:.0f}-{r.peak_high_bytes / MiB:.0f}",
                      "[green]yes[/]" if r.fits else "[red]no[/]")
    Console().print(table)
    for precision, tokens in p.max_context.items():
        if a.decoder:
            print(f"{precision}: " + (f"fits up to {human_context(tokens)} tokens of context" if tokens else "does not fit"))
    for note in p.notes:
        err.print(f"note: {escape(note)}")


@app.command()
def smoke(
    bundle: Path = typer.Argument(..., help="A bundle archive (.tar.gz) or an unpacked bundle folder."),
    python: str | None = typer.Option(None, "--python", help="Interpreter to run it with (default: this one)."),
    emulate: bool = typer.Option(False, "--emulate", help="Run it on the device's arm64 Debian userland and CPU "
                                 "model under qemu (needs qemu-user-static; checks correctness, not speed)."),
    public_key: Path | None = typer.Option(None, "--public-key", envvar="PACKAGER_PUBLIC_KEY", help="Fail unless "
                                           "this Ed25519 public key signed the bundle (checked before any of it runs)."),
    as_json: bool = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Run a bundle's own smoke test in a fresh process and report its verdict."""
    from packager.smoke import run_smoke

    result = _guarded(lambda: run_smoke(bundle, python, emulate=emulate, public_key=public_key), debug=debug,
                      as_json=as_json)
    if as_json:
        print(json.dumps({"bundle": result.bundle, "verdict": result.verdict, "exit_code": result.exit_code,
                          "report": result.report}))
    else:
        _print_smoke(result)
    if not result.passed:
        if not as_json:
            err.print(f"[red]error:[/] smoke test of {escape(str(bundle))} failed: {escape(result.verdict)}", soft_wrap=True)
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
        err.print(f"note: {p} is not available on this host; ran on {', '.join(r['providers'])} (not exercised: {p})")
    if "files_checked" in r:
        err.print(f"checksums {r['files_checked']} files OK")
    if "accuracy" in r:
        err.print(f"outputs   min cosine {r['accuracy']['min_cosine']:.5f} vs the fp32 reference")
    if "peak_bytes" in r:
        bound = " (upper bound: qemu's own memory included)" if emu else ""
        err.print(f"memory    peak {r['peak_bytes'] / MiB:.0f} MiB{bound} of {r['budget_bytes'] / MiB:.0f} MiB budget",
                  soft_wrap=True)
    print(result.verdict)


@app.command()
def keygen(
    private: Path = typer.Argument(..., help="Where to write the private key (PEM, mode 0600); it stays on the build host."),
    public: Path | None = typer.Option(None, "--public", help="Where to write the public key [default: PRIVATE.pub]."),
    as_json: bool = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Make an Ed25519 key pair for `package --sign` (the .pub file goes on the devices). Never overwrites."""
    from packager.signing import keygen as make_keys

    private_path, public_path, fingerprint = _guarded(lambda: make_keys(private, public), debug=debug, as_json=as_json)
    if as_json:
        print(json.dumps({"private_key": str(private_path), "public_key": str(public_path),
                          "public_key_sha256": fingerprint}))
        return
    err.print(f"private key {escape(str(private_path))} (keep it secret; sign with `packager package --sign "
              f"{escape(str(private_path))}`)", soft_wrap=True)
    err.print(f"public key  {escape(str(public_path))} (install it on the devices; set PACKAGER_PUBLIC_KEY to its path)",
              soft_wrap=True)
    print(fingerprint)


def _version(value: bool) -> None:
    if value:
        print(f"packager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")) -> None:
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
    sys.exit(main())
