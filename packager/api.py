"""packager's Python API: `package`, `check` and `plan`, returning typed results.

The CLI is a thin layer over these functions: what `--json` prints is the result's `to_dict()`,
built here and nowhere else. Failures raise `PackagerError` (its `code` is the CLI's exit code).
Verdicts are results, not errors: a bundle whose smoke test failed is a `PackageResult` with
`ok == False` (exit code 8 in the CLI), a model that does not fit is a `CheckResult` with
`fits == False` (exit code 3).

Options left as None resolve as the CLI's do: PACKAGER_* environment, [tool.packager] in the
nearest pyproject.toml, the target profile, defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from packager.errors import ExitCode, PackagerError, disk_full
from packager.leftovers import temp_folder
from packager.results import CheckResult, PackageResult, SuiteResult, accuracy_summary, mixed_record

if TYPE_CHECKING:
    from packager.cache import StageCache
    from packager.context import Context
    from packager.options import PackageOptions
    from packager.plan import Plan
    from packager.progress import Reporter

PathLike = str | os.PathLike[str]
F = TypeVar("F", bound=Callable[..., Any])


def _disk_full_is_output(fn: F) -> F:
    """A write that ran out of space anywhere inside `fn` (a work folder in TMPDIR, a recipe's
    temporary files) raises the one OUTPUT error (exit 9) that names the folder."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            full = disk_full(e)
            if full is None:
                raise
            raise full from e

    return wrapper  # type: ignore[return-value]


@_disk_full_is_output
def package(model: PathLike | Sequence[PathLike], target: str | None = None, options: PackageOptions | None = None,
            *, out: PathLike | None = None, recipe: str | None = None,
            budget: str | int | None = None, context: int | str | None = None, calibration: PathLike | None = None,
            fit: str | None = None,
            smoke: str | None = None, sign: PathLike | None = None, name: str | None = None,
            allow_pickle: bool = False, shapes: Mapping[str, Sequence[int]] | None = None,
            values: Mapping[str, float] | None = None, cache: bool | PathLike | StageCache = True,
            progress: bool | Reporter = False, verbose: bool = False, adapter: PathLike | None = None,
            eval_file: PathLike | None = None, kv_bits: int | None = None) -> PackageResult | SuiteResult:
    """Export, quantize, verify, fit and bundle MODEL for TARGET into OUT/<name>-<target>.tar.gz.
    Several models (a list) make one bundle of them all (packager/suite.py): each packaged and verified
    on its own, a component they share stored once, the budget judged for all of them together.

    The options are keywords, or one `PackageOptions` (packager/options.py) as `options`, not both.
    `calibration` (int8-static) is a file of text lines or an .npz of inputs; `fit="auto"` tries the
    profile's recipes until one fits; `smoke="host"` or `"emulate"` then
    runs the bundle's smoke test; `sign` is an Ed25519 private key. `cache`: True (the default)
    uses $PACKAGER_CACHE_DIR/stages (~/.cache/packager/stages) unless PACKAGER_NO_CACHE is set,
    False none, a path that folder. `progress` prints the stages on stderr. `adapter` (the CLI's
    --adapter) is a PEFT LoRA adapter folder, or sample:NAME, merged into MODEL's weights first;
    `eval_file` (--eval) a JSONL file of cases that verify gates on (sample:NAME: a built-in
    adapter's); `kv_bits` (--kv-bits) a decoder's KV cache element size, where its runtime offers a choice."""
    from packager.archive import source_date_epoch
    from packager.config import resolve_package_settings
    from packager.options import PackageOptions
    from packager.pipeline import package as run_pipeline

    options = _one_of(options, PackageOptions.build(
        out=out, recipe=recipe, budget=budget, context=context, calibration=calibration, fit=fit, smoke=smoke,
        sign=sign, name=name, allow_pickle=allow_pickle, shapes=shapes, values=values, cache=cache, adapter=adapter,
        eval_file=eval_file, kv_bits=kv_bits))
    source_date_epoch()  # a malformed SOURCE_DATE_EPOCH fails now, not after the work
    reporter = _reporter(progress)
    settings = resolve_package_settings(options.settings_layer(target))
    if verbose:
        _describe(settings, reporter)
    models = _model_list(model)
    if len(models) > 1:
        return _package_suite(models, settings, reporter, options)
    ctx = run_pipeline(models[0], settings, options, reporter=reporter)
    smoked = None
    if options.smoke is not None:
        from packager.smoke import run_smoke

        assert ctx.archive is not None
        with reporter.stage(f"smoke ({options.smoke})", ctx.timings), \
                temp_folder("key") as tmp:
            smoked = run_smoke(ctx.archive, emulate=options.smoke == "emulate",
                               public_key=_smoke_key(options.sign, Path(tmp)))
    return PackageResult.from_context(ctx, smoked, options.smoke, options.sign)


def _one_of(options: PackageOptions | None, from_keywords: PackageOptions) -> PackageOptions:
    """The API's options: the `options` object, or those its keywords make; not both."""
    if options is None:
        return from_keywords
    given = from_keywords.given()
    if given:
        raise PackagerError(f"the options are given both as `options` and as keywords ({', '.join(given)}); give "
                            "them one way.", ExitCode.USAGE)
    return options


def _model_list(model: PathLike | Sequence[PathLike]) -> list[str]:
    return [str(m) for m in ([model] if isinstance(model, (str, os.PathLike)) else model)]


def _check_several(models: list[str], one_model: dict[str, Any], command: str) -> None:
    """Several models: no option that applies to one model's inputs, and no model twice."""
    given = [option for option, value in one_model.items() if value]
    if given:
        raise PackagerError(f"{given[0]} applies to one model, and {len(models)} were given; {command} that model "
                            "on its own, or drop the option.", ExitCode.USAGE)
    repeated = next((m for i, m in enumerate(models) if m in models[:i]), None)
    if repeated:
        raise PackagerError(f"{repeated} is given twice; name each model once.", ExitCode.USAGE)
    from packager.model_files import existing
    from packager.samples import resolve_sample

    for model in models:   # a typo in the last model fails before the first one's minutes of work
        if model.startswith("sample:"):
            resolve_sample(model.removeprefix("sample:"))
        else:
            existing(model)


def _each_model(models: list[str], reporter: Reporter, folder: Path,
                run: Callable[[str, Path], Context]) -> list[Context]:
    """`run` on each of several models in turn, each keeping its staged folder under `folder`; a failure
    names the model it is about."""
    contexts = []
    for i, model in enumerate(models):
        reporter.print(f"-- model {i + 1} of {len(models)}: {model}")
        try:
            contexts.append(run(model, folder / str(i)))
        except PackagerError as e:
            if model in e.message:
                raise
            raise PackagerError(f"{model}: {e.message}", e.code) from None
    return contexts


def _per_model(names: list[str], contexts: list[Context], field: str) -> dict[str, Any]:
    """Each model's ctx.cache or ctx.timings, keyed "<model> <stage>"."""
    return {f"{n} {stage}": v for n, c in zip(names, contexts) for stage, v in getattr(c, field).items()}


def _package_suite(models: list[str], settings: Any, reporter: Reporter, options: PackageOptions) -> SuiteResult:
    """package() of several models into one bundle."""

    from packager import suite
    from packager.pipeline import package as run_pipeline
    from packager.signing import load_private_key, manifest_entry

    _check_several(models, {"--adapter": options.adapter, "--eval": options.eval_file,
                            "--calibration": options.calibration, "--shape": options.input_spec.shapes,
                            "--value": options.input_spec.values}, "package")
    sign, smoke = options.sign, options.smoke
    if sign is not None:
        load_private_key(sign)  # a bad key fails before minutes of work, not after
    # --name names the bundle of them all, and the whole is signed, not each model's own folder.
    each = dataclasses.replace(options, name=None, sign=None)
    with temp_folder("models") as tmp:
        contexts = _each_model(models, reporter, Path(tmp), lambda model, folder: run_pipeline(
            model, settings, each, reporter=reporter, member_dir=folder))
        timings: dict[str, float] = {}
        with reporter.stage(f"bundle of {len(models)}", timings) as step:
            built = suite.build(contexts, options.name, settings.out.value, sign_key=sign, progress=step.update)
    assert built.archive is not None
    names = built.names
    smoked = None
    if smoke is not None:
        from packager.smoke import run_smoke

        with reporter.stage(f"smoke ({smoke})", timings), temp_folder("key") as key:
            smoked = run_smoke(built.archive, emulate=smoke == "emulate", public_key=_smoke_key(sign, Path(key)))
    return SuiteResult(
        archive=built.archive, bundle=built.archive.name.removesuffix(".tar.gz"), target=settings.profile.name,
        models={n: {"source": c.model_spec, "recipe": c.recipe_name,
                    "accuracy": accuracy_summary(c),
                    "memory_alone": c.memory.to_dict() if c.memory else {}, "fit": c.fit.to_dict() if c.fit else None,
                    "mixed": mixed_record(c)}
                for n, c in zip(names, contexts)},
        blobs=[{"key": b.key, "used_by": b.used_by, "bytes": sum(f["size"] for f in b.files),
                **({"notes": b.notes} if b.notes else {})} for b in built.blobs],
        sizes={"archive_bytes": built.archive.stat().st_size, "model_bytes": built.model_bytes()},
        memory=built.memory,
        smoke=None if smoked is None else {"mode": smoke, "verdict": smoked.verdict, "exit_code": smoked.exit_code,
                                           "report": smoked.report},
        signature=manifest_entry(sign) if sign else None,
        cache=_per_model(names, contexts, "cache"), timings_s=_per_model(names, contexts, "timings") | timings,
        smoke_result=smoked)


@_disk_full_is_output
def check(model: PathLike | Sequence[PathLike], target: str | None = None, options: PackageOptions | None = None, *,
          budget: str | int | None = None,
          recipe: str | None = None, context: int | str | None = None, measure: bool = True, allow_pickle: bool = False,
          shapes: Mapping[str, Sequence[int]] | None = None, values: Mapping[str, float] | None = None,
          cache: bool | PathLike | StageCache = True, progress: bool | Reporter = False,
          verbose: bool = False, kv_bits: int | None = None) -> CheckResult:
    """Will MODEL fit TARGET's memory budget? The estimate, and (with `measure`) the peak measured in
    a fresh process; `fits` is the verdict. Several models (a list): all of them loaded together, as
    `package` bundles them, a component they share once. A bundle (.tar.gz or unpacked): its model as
    it was packaged, on its own target unless one is given, fed its own sample inputs' shapes.
    The options are keywords, or one `PackageOptions` as `options` (of which check reads recipe, budget,
    context, measure, allow_pickle, input_spec and cache), not both.
    `verbose` prints where each setting came from (with `progress`)."""
    from packager.bundles import is_bundle
    from packager.config import resolve_package_settings
    from packager.options import PackageOptions
    from packager.pipeline import check as run_check

    options = _one_of(options, PackageOptions.build(budget=budget, recipe=recipe, context=context, measure=measure,
                                                    allow_pickle=allow_pickle, shapes=shapes, values=values,
                                                    cache=cache, kv_bits=kv_bits))
    models = _model_list(model)
    reporter = _reporter(progress)
    if len(models) == 1 and is_bundle(Path(models[0])):
        return _check_bundle(models[0], target, options, reporter=reporter, verbose=verbose)
    settings = resolve_package_settings(options.settings_layer(target) | {"out": None})
    if verbose:
        _describe(settings, reporter, ("target", "recipe", "budget"))
    if len(models) == 1:
        ctx = run_check(models[0], settings, options, reporter=reporter)
        return CheckResult.from_context(models[0], ctx)
    from packager import suite

    _check_several(models, {"--shape": options.input_spec.shapes, "--value": options.input_spec.values}, "check")
    bundle = next((m for m in models if is_bundle(Path(m))), None)
    if bundle is not None:
        raise PackagerError(f"{bundle} is a bundle, already packaged for its own target; check it on its own, or "
                            "check the models it was built from together.", ExitCode.USAGE)
    with temp_folder("check") as tmp:
        contexts = _each_model(models, reporter, Path(tmp), lambda model, folder: run_check(
            model, settings, options, reporter=reporter, member_dir=folder))
        timings: dict[str, float] = {}
        folder = Path(tmp) / "together"
        folder.mkdir()
        with reporter.stage(f"all {len(models)} together", timings) as step:
            built = suite.together(contexts, "check", folder, measure=options.measure, enforce=False,
                                   progress=step.update)
    names = built.names
    return CheckResult.from_memory(
        " + ".join(models), settings.profile.name, "; ".join(f"{n}: {c.recipe_name}" for n, c in zip(names, contexts)),
        built.memory, _per_model(names, contexts, "cache"), _per_model(names, contexts, "timings") | timings,
        shared=[{"used_by": b.used_by, "bytes": sum(f["size"] for f in b.files)}
                for b in built.blobs if len(b.used_by) > 1])


@_disk_full_is_output
def plan(config: PathLike, target: str | None = None, *, precisions: Sequence[str] | None = None,
         contexts: Sequence[int | str] | None = None, kv_bits: int | None = None,
         budget: str | int | None = None, progress: bool | Reporter = False, verbose: bool = False) -> Plan:
    """Which precision and context fit TARGET, from CONFIG (a config.json, a Hugging Face folder holding
    one, or sample:NAME) alone. `contexts` are token counts (8192) or the CLI's forms ("8K"). `verbose`
    prints where each setting and the config came from (with `progress`)."""
    from packager.config import parse_context, resolve_package_settings
    from packager.options import check_kv_bits
    from packager.plan import plan as make_plan

    check_kv_bits(kv_bits)
    parsed = [parse_context(c) for c in contexts or []]
    settings = resolve_package_settings({"target": target, "budget": budget, "out": None, "recipe": None})
    spec = config if isinstance(config, str) and config.startswith("sample:") else Path(config)
    if verbose:
        from packager.plan import find_config

        _describe(settings, _reporter(progress), ("target", "budget"), [f"config  = {find_config(spec)}"])
    return make_plan(spec, settings.profile, list(precisions or []) or None, parsed or None, kv_bits)


def _check_bundle(path: str, target: str | None, options: PackageOptions, *, reporter: Reporter,
                  verbose: bool) -> CheckResult:
    """check() of a bundle: its model/model.onnx as it ships (no recipe applied again), judged on TARGET,
    else on the target it was built for."""

    from packager.bundle_check import check_as_built, own_runtime_profile
    from packager.bundles import open_bundle
    from packager.config import Setting, resolve_package_settings
    from packager.options import InputSpec
    from packager.pipeline import check as run_check

    if options.recipe is not None:
        raise PackagerError(f"{path} is a bundle, whose model is quantized already; drop --recipe, or check the "
                            "model it was built from with that recipe.", ExitCode.USAGE)
    if options.kv_bits is not None:
        raise PackagerError(f"{path} is a bundle, whose KV cache was built with it; drop --kv-bits, or check the "
                            f"model it was built from with --kv-bits {options.kv_bits}.", ExitCode.USAGE)
    with temp_folder("bundle") as tmp:
        bundle = open_bundle(Path(path), Path(tmp))
        own = bundle.summary or {}
        default = Setting(own["target"], "the bundle's own target") if own.get("target") else None
        settings = resolve_package_settings(options.settings_layer(target) | {"recipe": "fp32", "out": None},
                                            default_target=default)
        if verbose:
            _describe(settings, reporter, ("target", "budget"),
                      [f"recipe  = {own.get('recipe', 'unknown')}  (the bundle's own, not applied again)"])
        folder = bundle.model.parent.parent
        built_by = own_runtime_profile(folder, settings.profile)
        if built_by is not None:   # its runtime made the model (onnxruntime-genai): judged as it was built
            timings: dict[str, float] = {}
            with reporter.stage("fit", timings):
                memory = check_as_built(folder, built_by, options.context, options.measure)
            return CheckResult.from_memory(path, settings.profile.name, f"{own.get('recipe', 'unknown recipe')}, "
                                           "as bundled", memory.to_dict(), {}, timings)
        spec = options.input_spec
        if not (spec.shapes or spec.values):
            spec = InputSpec(shapes=bundle.shapes, values=bundle.values)
        # the bundle's model is an .onnx file already: no pickled weights to allow
        ctx = run_check(str(bundle.model), settings, dataclasses.replace(options, input_spec=spec, allow_pickle=False),
                        reporter=reporter)
        result = CheckResult.from_context(path, ctx)
    return dataclasses.replace(result, recipe=f"{own.get('recipe', 'unknown recipe')}, as bundled")


def _describe(settings: Any, reporter: Reporter, keys: tuple[str, ...] = ("target", "out", "recipe", "budget"),
              extra: Sequence[str] = ()) -> None:
    """--verbose: each setting with where it came from."""
    for line in [*settings.describe(keys), *extra]:
        reporter.print(line)


def _reporter(progress: bool | Reporter) -> Reporter:
    from packager.progress import Reporter

    return progress if isinstance(progress, Reporter) else Reporter(quiet=not progress)


def _smoke_key(sign: Path | None, tmp: Path) -> Path | None:
    """The public key `package --smoke` checks the new bundle with: the --sign key's own public half,
    else the one configured for devices ($PACKAGER_PUBLIC_KEY), else none."""
    from packager.device_code import runner
    from packager.signing import write_public_key

    return write_public_key(sign, tmp / "public.pem") if sign else runner().configured_public_key()
