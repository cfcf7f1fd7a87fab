"""The Python API (packager.package / check / plan), reproducible bundles, and several targets in
one `packager package`. In-process, on silero-vad (an .onnx: no export stack needed)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import packager
from packager.cli import app
from packager.device_code import runner

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def silero_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[packager.PackageResult, dict]:
    """sample:silero-vad for rpi5 through the API, and again through the CLI (in-process, --json)."""
    out = tmp_path_factory.mktemp("api")
    result = packager.package("sample:silero-vad", "rpi5", out=out / "a")
    cli = CliRunner().invoke(app, ["package", "sample:silero-vad", "--target", "rpi5", "--out", str(out / "b"),
                                   "--json"])
    assert cli.exit_code == 0, cli.output
    return result, json.loads(cli.stdout)


def test_same_inputs_give_a_byte_identical_archive(silero_twice: tuple[packager.PackageResult, dict]) -> None:
    result, summary = silero_twice
    first, second = result.archive, Path(summary["archive"])
    assert first != second and sha256(first) == sha256(second)
    with tarfile.open(first) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, 0, "", "")}
        manifest = json.load(tar.extractfile(f"{result.bundle}/manifest.json"))
        samples = zipfile.ZipFile(tar.extractfile(f"{result.bundle}/samples/inputs.npz"))
    # No wall-clock time, no figure that varies run to run (the measured memory is in --json only).
    assert "built_at" not in manifest
    assert not {"measured_peak_bytes", "load_peak_bytes", "headroom_bytes"} & set(manifest["memory"])
    assert manifest["memory"]["fits"] and manifest["memory"]["verdict_basis"] == "measured"
    assert result.memory["measured_peak_bytes"] > 0 and summary["memory"]["measured_peak_bytes"] > 0
    assert {i.date_time for i in samples.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_jetson_bundle_reproduces_with_its_tensorrt_workspace(tmp_path: Path) -> None:
    """The TensorRT workspace bound is in the manifest: it comes from the estimate, not the measured peak."""
    first, second = (packager.package("sample:silero-vad", "jetson-orin-nano", out=tmp_path / d) for d in "ab")
    assert sha256(first.archive) == sha256(second.archive)
    with tarfile.open(first.archive) as tar:
        manifest = json.load(tar.extractfile(f"{first.bundle}/manifest.json"))
    workspace = manifest["memory"]["tensorrt_workspace"]
    memory = manifest["memory"]
    assert workspace["headroom_bytes"] == memory["budget_bytes"] - memory["estimate"]["high_bytes"]


def test_the_api_result_is_what_the_cli_prints(silero_twice: tuple[packager.PackageResult, dict]) -> None:
    result, summary = silero_twice
    assert isinstance(result, packager.PackageResult) and result.ok and result.exit_code == 0
    assert list(result.to_dict()) == list(summary)
    assert result.target == summary["target"] == "rpi5" and result.recipe == summary["recipe"] == "int8-dynamic"
    assert result.sizes == summary["sizes"] and result.accuracy == summary["accuracy"]
    assert result.cache == summary["cache"] == {}  # an .onnx is copied, not exported: nothing to cache
    assert set(result.timings_s) >= {"source", "export", "quantize", "verify", "fit", "bundle"}
    assert result.accuracy["min_cosine"] >= result.accuracy["threshold"]


def test_api_errors_raise_packager_error(tmp_path: Path) -> None:
    with pytest.raises(packager.PackagerError) as e:
        packager.package(tmp_path / "nope.onnx", "rpi5", out=tmp_path / "dist")
    assert e.value.code == packager.ExitCode.BAD_INPUT == 5 and "no such file" in e.value.message
    with pytest.raises(packager.PackagerError) as e:
        packager.package("sample:silero-vad", "rpi5", fit="manual")
    assert e.value.code == 2
    with pytest.raises(packager.PackagerError) as e:
        packager.check("sample:silero-vad", "rpi-5")
    assert e.value.code == 6 and 'did you mean "rpi5"' in e.value.message
    assert not (tmp_path / "dist").exists()


def test_check_and_plan(tiny_bert: Path) -> None:
    checked = packager.check("sample:silero-vad", "rpi5", measure=False)
    assert isinstance(checked, packager.CheckResult) and checked.fits and checked.exit_code == 0
    assert checked.measured is None and checked.verdict_basis == "estimate (high)"
    assert checked.to_dict()["headroom_bytes"] == checked.budget_bytes - checked.estimate["high_bytes"]
    # a budget above the runtime (64 MiB), below the model
    tight = packager.check("sample:silero-vad", "rpi5", measure=False, budget="66MiB")
    assert not tight.fits and tight.exit_code == 3
    planned = packager.plan(tiny_bert / "config.json", "rpi5", precisions=["int8"], contexts=["64", 128])
    assert isinstance(planned, packager.PlanResult)
    assert [(r.precision, r.context) for r in planned.rows] == [("int8", 64), ("int8", 128)]
    assert all(r.fits for r in planned.rows) and planned.to_dict()["target"] == "rpi5"


def test_import_packager_stays_light() -> None:
    code = "import sys, packager; print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'torch', 'typer', " \
           "'packager.api') if m in sys.modules)); print(callable(packager.plan))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split("\n")[:2] == ["[]", "True"]


def test_several_targets_share_one_run_and_report_each(tmp_path: Path) -> None:
    from packager.paths import profiles_dir

    broken = tmp_path / "tiny.toml"  # a budget below the runtime's own: fails before any work
    broken.write_text((profiles_dir() / "rpi5.toml").read_text().replace("memory_bytes = 1500000000",
                                                                         "memory_bytes = 1000000", 1))
    proc = CliRunner().invoke(app, ["package", "sample:silero-vad", "-t", str(broken), "-t", "rpi5", "-t", "rpi",
                                    "--out", str(tmp_path / "dist"), "--report", str(tmp_path / "report"), "--json"])
    assert proc.exit_code == 6, proc.output
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 6
    failed, ok = doc["results"]  # "rpi" is rpi5's alias: packaged once; the failure did not stop the run
    assert failed == {"target": str(broken), "error": failed["error"], "exit_code": 6}
    assert "smaller than the runtime" in failed["error"]
    assert ok["target"] == "rpi5" and ok["exit_code"] == 0 and ok["cache"] == {} and Path(ok["archive"]).is_file()
    assert [p.name for p in (tmp_path / "dist").iterdir()] == ["silero-vad-rpi5.tar.gz"]
    report = json.loads((tmp_path / "report" / "report.json").read_text())  # packager/report.py's, every target
    assert report["results"] == doc["results"] and (tmp_path / "report" / "report.html").is_file()


def test_all_targets_with_target_is_a_usage_error() -> None:
    proc = CliRunner().invoke(app, ["package", "sample:silero-vad", "--all-targets", "-t", "rpi5", "--json"])
    assert proc.exit_code == 2 and json.loads(proc.stdout)["exit_code"] == 2


def test_save_samples_is_deterministic_and_loads_back(tmp_path: Path) -> None:
    rt = runner()
    samples = [{"input_ids": np.arange(6, dtype=np.int64).reshape(1, 6), "mask": np.ones((1, 6), np.int64)},
               {"x": np.linspace(0, 1, 5, dtype=np.float32)}]
    rt.save_samples(tmp_path / "a.npz", samples)
    rt.save_samples(tmp_path / "b.npz", samples)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = rt.load_samples(tmp_path, "a.npz")
    assert [sorted(s) for s in back] == [["input_ids", "mask"], ["x"]]
    assert np.array_equal(back[0]["input_ids"], samples[0]["input_ids"]) and back[1]["x"].dtype == np.float32
    with np.load(tmp_path / "a.npz") as npz:  # numpy's own reader
        assert npz.files == ["0/input_ids", "0/mask", "1/x"]


def test_source_date_epoch_sets_the_archive_times_and_the_manifest_date(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from packager.archive import write_archive
    from packager.manifest import built_at

    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "f.txt").write_text("x")
    assert built_at() == {}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert built_at() == {"built_at": "2023-11-14T22:13:20Z"}
    write_archive(folder, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(packager.PackagerError) as e:
        packager.package("sample:silero-vad", "rpi5", out=tmp_path / "dist")
    assert e.value.code == 2 and "SOURCE_DATE_EPOCH" in e.value.message
