"""The verdicts that stop a bundle: over the memory budget (exit 3), answers drifted (exit 4)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from conftest import run_cli
from packager.paths import profiles_dir

pytestmark = pytest.mark.integration


def _profile(tmp_path: Path, **replacements: str) -> Path:
    text = (profiles_dir() / "rpi5.toml").read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "rpi5-custom.toml"
    path.write_text(text)
    return path


def test_over_budget_writes_nothing_and_exits_3(tmp_path: Path) -> None:
    # 72 MB: above the runtime's own cost (about 67 MB), below Silero's measured peak (about 83 MB).
    profile = _profile(tmp_path, **{"memory_bytes = 1500000000": "memory_bytes = 72000000"})
    out = tmp_path / "dist"
    proc = run_cli("package", "sample:silero-vad", "--target", str(profile), "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "does not fit" in proc.stderr and "budget" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_accuracy_below_threshold_writes_nothing_and_exits_4(tmp_path: Path, tiny_bert: Path) -> None:
    # No int8 model matches fp32 exactly: a threshold of 1.0 must fail verify. The recipe is asked for, so
    # packager does not fall back to a more precise one.
    profile = _profile(tmp_path, **{"min_cosine = 0.98": "min_cosine = 1.0"})
    out = tmp_path / "dist"
    proc = run_cli("package", str(tiny_bert), "--target", str(profile), "--recipe", "int8-dynamic", "--out", str(out))
    assert proc.returncode == 4, proc.stderr
    assert "changes the answers too much" in proc.stderr and "--recipe" in proc.stderr
    assert "recipe: chose" not in proc.stderr
    assert not out.exists()


def test_a_default_recipe_verify_rejects_falls_back_to_a_more_precise_one(tmp_path: Path, tiny_bert: Path) -> None:
    """No --recipe: the profile's default (int8-dynamic) changes the answers beyond a 0.99999 gate; packager
    packages the next more precise of the profile's fit_recipes (fp32), says so, and records why (issue 21: the
    PP-OCRv4 detector, whose int8 map drifts, packages at fp32 instead of exit 4)."""
    profile = _profile(tmp_path, **{"min_cosine = 0.98": "min_cosine = 0.99999"})
    proc = run_cli("package", str(tiny_bert), "--target", str(profile), "--out", str(tmp_path / "dist"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["recipe"] == "fp32" and summary["accuracy"]["min_cosine"] >= 0.99999
    fit = summary["fit"]
    assert fit["mode"] == "default" and fit["chosen"] == "fp32"
    assert [t["recipe"] for t in fit["tried"]] == ["int8-dynamic", "fp32"]
    assert "changes the answers too much" in fit["tried"][0]["outcome"]
    assert "default recipe int8-dynamic changes the answers too much" in fit["why"]


def test_hf_folder_packages_with_a_chosen_recipe(tmp_path: Path, tiny_bert: Path) -> None:
    proc = run_cli("package", str(tiny_bert), "--target", "phone", "--recipe", "fp32", "--name", "tiny",
                   "--out", str(tmp_path / "d"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert Path(summary["archive"]).name == "tiny-phone.tar.gz" and summary["recipe"] == "fp32"
    assert summary["accuracy"]["min_cosine"] == pytest.approx(1.0, abs=1e-5)
    # an encoder on the phone keeps ONNX Runtime and model.ort (decoders go to onnxruntime-genai: test_genai_runtime)
    with tarfile.open(summary["archive"]) as archive:
        manifest = json.load(archive.extractfile("tiny-phone/manifest.json"))   # type: ignore[arg-type]
    assert manifest["runtime"]["package"] == "onnxruntime" and manifest["runtime"]["model"] == "model/model.ort"
    assert manifest["mobile"]["ort_format_version"] and "format" not in manifest["mobile"]
    smoke = run_cli("smoke", summary["archive"], "--json")
    assert smoke.returncode == 0, smoke.stdout
    report = json.loads(smoke.stdout)["report"]
    assert report["missing_providers"] == ["XnnpackExecutionProvider"]  # the PyPI CPU wheel has no XNNPACK


def test_fit_auto_steps_down_to_the_recipe_that_fits(tmp_path: Path) -> None:
    # MiniLM: fp32 peaks near 190 MiB, int8 near 110 MiB (scripts/bench_memory.py).
    out = tmp_path / "dist"
    # the second run reuses the export
    cached = {"PACKAGER_NO_CACHE": "0", "PACKAGER_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_cli("package", "sample:minilm", "--target", "rpi5", "--fit", "auto", "--budget", "150MB",
                   "--out", str(out), "--json", env=cached)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["recipe"] == "int8-dynamic"
    assert [t["recipe"] for t in summary["fit"]["tried"]] == ["fp32", "int8-dynamic"]
    assert "does not fit" in summary["fit"]["tried"][0]["outcome"] and "fp32 did not" in summary["fit"]["why"]

    too_small = run_cli("package", "sample:minilm", "--target", "rpi5", "--fit", "auto", "--budget", "80MB",
                        "--out", str(tmp_path / "none"), env=cached)
    assert too_small.returncode == 3
    assert ("no recipe of rpi5 fits" in too_small.stderr and "fp32:" in too_small.stderr
            and "int8-dynamic:" in too_small.stderr)
    assert not (tmp_path / "none").exists()


def test_fit_auto_keeps_the_most_precise_recipe_that_fits(tmp_path: Path, tiny_bert: Path) -> None:
    proc = run_cli("package", str(tiny_bert), "--target", "rpi5", "--fit", "auto", "--out", str(tmp_path / "d"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["recipe"] == "fp32" and summary["fit"]["chosen"] == "fp32"
    assert run_cli("package", str(tiny_bert), "--target", "rpi5", "--fit", "auto", "--recipe", "fp32").returncode == 2


def test_budget_below_the_runtime_itself_is_refused_up_front(tmp_path: Path) -> None:
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--budget", "10MB", "--out", str(tmp_path / "d"))
    assert proc.returncode == 2 and "smaller than the runtime itself" in proc.stderr and "source" not in proc.stderr
    profile = _profile(tmp_path, **{"memory_bytes = 1500000000": "memory_bytes = 1000000"})
    proc = run_cli("package", "sample:silero-vad", "--target", str(profile), "--out", str(tmp_path / "d"))
    assert proc.returncode == 6 and "raise it in the profile" in proc.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("refused", [("fp32",), ("fp32", "int8-dynamic")])
def test_fit_auto_skips_a_recipe_that_refuses_the_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         refused: tuple[str, ...]) -> None:
    """A recipe that cannot make this graph (exit 5: weights computed in the graph, say) is skipped with a line
    saying so, and the next candidate tried; when every one refuses, the first refusal is the error (exit 5)."""
    from packager import fit_auto
    from packager.config import resolve_package_settings
    from packager.errors import ExitCode, PackagerError
    from packager.options import PackageOptions
    from packager.pipeline import package

    real = fit_auto.recipe_stages

    def stages(ctx, reporter, names):  # type: ignore[no-untyped-def]
        if ctx.recipe_name in refused:
            raise PackagerError(f"recipe {ctx.recipe_name} cannot quantize this model", ExitCode.BAD_INPUT)
        return real(ctx, reporter, names)

    monkeypatch.setattr(fit_auto, "recipe_stages", stages)
    settings = resolve_package_settings({"target": "rpi5", "out": str(tmp_path / "dist"), "recipe": None,
                                         "budget": None})
    options = PackageOptions(fit="auto", cache=False)
    if len(refused) == 2:
        with pytest.raises(PackagerError) as e:
            package("sample:minilm", settings, options)
        assert e.value.code == ExitCode.BAD_INPUT and e.value.message == "recipe fp32 cannot quantize this model"
        return
    ctx = package("sample:minilm", settings, options)
    assert ctx.fit is not None and ctx.fit.chosen == "int8-dynamic"
    assert ctx.fit.tried[0] == {"recipe": "fp32", "outcome": "skipped: recipe fp32 cannot quantize this model"}
