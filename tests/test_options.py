"""One options type (issue 18, item 4): the CLI and the Python API build the same PackageOptions from the
same inputs, and the pipeline and its Context take it as it is."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import packager
from packager import pipeline
from packager.cli import app
from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.options import InputSpec, PackageOptions
from packager.profiles import resolve_target


@pytest.fixture()
def reached(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, PackageOptions]]:
    """What reaches the pipeline's package and check: the model, the settings and the options (the run
    stops there, with a usage error)."""
    seen: list[tuple[str, Any, PackageOptions]] = []

    def stop(model: str, settings: Any, options: PackageOptions, **run: Any) -> None:
        seen.append((model, settings, options))
        raise PackagerError("stopped at the pipeline", ExitCode.USAGE)

    monkeypatch.setattr(pipeline, "package", stop)
    monkeypatch.setattr(pipeline, "check", stop)
    return seen


def test_the_cli_and_the_api_give_the_pipeline_the_same_package_options(
        reached: list[tuple[str, Any, PackageOptions]], tmp_path: Path) -> None:
    out, key, cal = str(tmp_path / "dist"), tmp_path / "key.pem", tmp_path / "cal.txt"
    cli = CliRunner().invoke(app, [
        "package", "sample:silero-vad", "--target", "rpi5", "--out", out, "--recipe", "int8-static", "--budget",
        "900MiB", "--context", "8K", "--calibration", str(cal), "--smoke", "host", "--sign", str(key), "--name",
        "vad", "--allow-pickle", "--shape", "input=1,512", "--value", "sr=16000", "--no-cache", "--adapter",
        "sample:tiny-llama-lora", "--eval", "cases.jsonl"])
    assert cli.exit_code == ExitCode.USAGE and "stopped at the pipeline" in cli.stderr, cli.output
    with pytest.raises(PackagerError, match="stopped at the pipeline"):
        packager.package("sample:silero-vad", "rpi5", out=out, recipe="int8-static", budget="900MiB", context=8192,
                         calibration=cal, smoke="host", sign=key, name="vad", allow_pickle=True,
                         shapes={"input": [1, 512]}, values={"sr": 16000}, cache=False,
                         adapter="sample:tiny-llama-lora", eval_file=Path("cases.jsonl"))
    (_, cli_settings, from_cli), (_, api_settings, from_api) = reached
    assert from_cli == from_api == PackageOptions(
        out=out, recipe="int8-static", budget="900MiB", context=8192, calibration=cal, smoke="host", sign=key,
        name="vad", allow_pickle=True, input_spec=InputSpec({"input": (1, 512)}, {"sr": 16000.0}), cache=False,
        adapter="sample:tiny-llama-lora", eval_file="cases.jsonl")
    assert cli_settings == api_settings and cli_settings.budget.origin == "--budget"
    # ... and an options object given to the API reaches the pipeline as it is
    with pytest.raises(PackagerError, match="stopped at the pipeline"):
        packager.package("sample:silero-vad", "rpi5", from_api)
    assert reached[-1][2] is from_api


def test_the_cli_and_the_api_give_the_pipeline_the_same_check_options(
        reached: list[tuple[str, Any, PackageOptions]]) -> None:
    cli = CliRunner().invoke(app, ["check", "sample:silero-vad", "--target", "rpi5", "--budget", "1GB", "--recipe",
                                   "fp16", "--context", "4k", "--no-measure", "--allow-pickle", "--shape",
                                   "input=1,512", "--no-cache"])
    assert cli.exit_code == ExitCode.USAGE, cli.output
    with pytest.raises(PackagerError, match="stopped at the pipeline"):
        packager.check("sample:silero-vad", "rpi5", budget="1GB", recipe="fp16", context="4K", measure=False,
                       allow_pickle=True, shapes={"input": (1, 512)}, cache=False)
    (_, cli_settings, from_cli), (_, api_settings, from_api) = reached
    assert from_cli == from_api == PackageOptions(recipe="fp16", budget="1GB", context=4096, measure=False,
                                                  allow_pickle=True, input_spec=InputSpec({"input": (1, 512)}),
                                                  cache=False)
    assert cli_settings == api_settings


def test_several_targets_share_one_options_object_but_for_the_run_s_cache(
        reached: list[tuple[str, Any, PackageOptions]]) -> None:
    cli = CliRunner().invoke(app, ["package", "sample:silero-vad", "--target", "rpi5", "--target", "rpi4",
                                   "--name", "vad", "--no-cache", "--json"])
    assert cli.exit_code == ExitCode.USAGE, cli.output
    (_, first, a), (_, second, b) = reached
    assert (first.profile.name, second.profile.name) == ("rpi5", "rpi4")
    assert a == b and a.name == "vad" and isinstance(a.cache, Path)   # --no-cache: a cache for this run only


def test_options_are_frozen_and_checked_when_made() -> None:
    options = PackageOptions(name="vad")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.name = "other"  # type: ignore[misc]
    for bad, message in [({"fit": "best"}, "is not a mode"), ({"fit": "auto", "recipe": "fp16"}, "drop --recipe"),
                         ({"smoke": "device"}, "--smoke host or --smoke emulate"), ({"name": "a/b"}, "--name"),
                         ({"context": 0}, "between 1 token"),
                         ({"input_spec": InputSpec({"x": (1, -2)})}, "non-negative sizes")]:
        with pytest.raises(PackagerError, match=message) as caught:
            PackageOptions(**bad)
        assert caught.value.code == ExitCode.USAGE


def test_the_api_takes_options_or_keywords_not_both() -> None:
    with pytest.raises(PackagerError, match=r"both as `options` and as keywords \(name\)") as caught:
        packager.package("sample:silero-vad", "rpi5", PackageOptions(), name="vad")
    assert caught.value.code == ExitCode.USAGE


def test_the_context_reads_the_options_it_holds(tmp_path: Path) -> None:
    options = PackageOptions(name="vad", context=512, allow_pickle=True, input_spec=InputSpec({"x": (1, 2)}))
    ctx = Context("m", resolve_target("rpi5"), "fp32", tmp_path, tmp_path, options=options)
    assert (ctx.options, ctx.name, ctx.allow_pickle, ctx.measure) == (options, "vad", True, True)
    assert (ctx.context, ctx.input_spec) == (512, options.input_spec)   # the run's own, filled from the options
    ctx.context = 256   # export and --fit auto change the run's context, never the options
    assert options.context == 512
    with pytest.raises(AttributeError):
        ctx.name = "other"  # type: ignore[misc]
