"""ONNX input: the real Silero VAD (LSTM state, If control flow), without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, unpack

pytestmark = pytest.mark.integration

SILERO_ARGS = ("--shape", "input=1,512", "--shape", "state=2,1,128", "--value", "sr=16000")


def test_silero_onnx_packages_and_passes_its_smoke_test(silero_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = run_cli("package", str(silero_onnx), "--target", "rpi5", "--out", str(out), *SILERO_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert Path(summary["archive"]).name == "silero_vad-rpi5.tar.gz"
    folder = unpack(Path(summary["archive"]), tmp_path / "u")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input", "state", "sr"]
    assert manifest["runtime"]["io"]["kind"] == "tensor"
    # The weights sit inside If branches, which dynamic quantization leaves alone: shipped as fp32, and said so.
    assert manifest["recipe"]["quantized_nodes"] == 0 and "fp32" in manifest["recipe"]["note"]
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=folder, capture_output=True, text=True)
    assert smoke.returncode == 0 and smoke.stdout.strip().splitlines()[-1] == "PASS", smoke.stdout
    # run.py takes the samples file (several input sets) or one set of inputs, and names a wrong one.
    samples = subprocess.run([sys.executable, "run.py", "--inputs", "samples/inputs.npz"], cwd=folder,
                             capture_output=True, text=True)
    assert samples.returncode == 0, samples.stderr
    assert len(json.loads(samples.stdout)) == 4
    one = folder.parent / "one.npz"
    np.savez(one, input=np.zeros((1, 512), np.float32), state=np.zeros((2, 1, 128), np.float32),
             sr=np.array(16000, np.int64))
    ran = subprocess.run([sys.executable, "run.py", "--inputs", str(one)], cwd=folder, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert 0.0 <= json.loads(ran.stdout)[0]["output"][0][0] <= 1.0
    np.savez(one, input=np.zeros((1, 512), np.float32))
    wrong = subprocess.run([sys.executable, "run.py", "--inputs", str(one)], cwd=folder, capture_output=True, text=True)
    assert wrong.returncode == 2 and "one array per model input (input, state, sr)" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_builtin_sample_knows_its_shapes(tmp_path: Path) -> None:
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi4", "--out", str(tmp_path / "d"), "--json",
                   "--smoke", "host")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1  # one JSON object, nothing else
    summary = json.loads(proc.stdout)
    assert summary["smoke"]["verdict"] == "PASS" and summary["smoke"]["mode"] == "host"
    assert run_cli("smoke", summary["archive"]).returncode == 0
    assert run_cli("package", "sample:silero-vad", "--target", "rpi4", "--smoke", "device").returncode == 2


def test_signature_defaults_that_the_model_rejects_get_a_hint(silero_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = run_cli("package", str(silero_onnx), "--target", "rpi5", "--out", str(out))
    assert proc.returncode == 5
    # The open inputs, each with the --shape line to give (packager/sample_inputs.py's trial run).
    assert "--shape input=1,D2 --shape state=2,D2,128" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_onnx_path_needs_no_torch(silero_onnx: Path, tmp_path: Path) -> None:
    """A user who only packages .onnx files does not need the Hugging Face stack."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor m in ('torch', 'transformers', 'optimum'):\n    sys.modules[m] = None\n")
    proc = run_cli("package", str(silero_onnx), "--target", "rpi5", "--out", str(tmp_path / "d"), *SILERO_ARGS,
                   env={"PYTHONPATH": str(blocker)})
    assert proc.returncode == 0, proc.stderr
