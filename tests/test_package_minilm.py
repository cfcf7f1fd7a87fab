"""The real pipeline on the real all-MiniLM-L6-v2, and the bundle it makes, used as a device would."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, unpack
from packager.paths import targets_dir

pytestmark = pytest.mark.integration

BUNDLE_FILES = {"manifest.json", "model/model.onnx", "model/tokenizer.json", "run.py", "smoke_test.py",
                "samples/inputs.npz", "samples/expected.npz", "samples/texts.json", "requirements.txt",
                "README.md", "SHA256SUMS",
                # the device-side package run.py loads (targets/runtime/)
                *(f"runtime/{p.name}" for p in (targets_dir() / "runtime").glob("*.py"))}


def test_json_summary(minilm_rpi5: dict) -> None:
    archive = Path(minilm_rpi5["archive"])
    assert archive.name == "minilm-rpi5.tar.gz" and archive.is_file()
    assert minilm_rpi5["target"] == "rpi5" and minilm_rpi5["recipe"] == "int8-dynamic"
    assert minilm_rpi5["accuracy"]["min_cosine"] >= minilm_rpi5["accuracy"]["threshold"]
    mem = minilm_rpi5["memory"]
    assert 0 < mem["measured_peak_bytes"] <= mem["budget_bytes"] == 1_500_000_000
    # int8 weights: the 90 MB fp32 model ships at about a quarter of its size.
    assert 15e6 < minilm_rpi5["sizes"]["model_bytes"] < 30e6
    assert [p.name for p in archive.parent.iterdir()] == [archive.name]  # nothing half-written beside it


def test_archive_unpacks_into_one_folder_with_the_contract(minilm_rpi5: dict, tmp_path: Path) -> None:
    archive = Path(minilm_rpi5["archive"])
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert {n.split("/", 1)[0] for n in names} == {"minilm-rpi5"}
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
    folder = unpack(archive, tmp_path)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert BUNDLE_FILES <= present

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["profile"]["name"] == "rpi5" and manifest["recipe"]["name"] == "int8-dynamic"
    assert manifest["recipe"]["quantized_nodes"] > 0
    # int8-dynamic's preparation of a text encoder (packager/fusion.py, packager/smoothing.py)
    prepared = manifest["recipe"]["params"]
    assert prepared["fusion"]["applied"] and prepared["fusion"]["fused"]["Attention"] == 6
    assert prepared["smoothing"]["applied"] and prepared["smoothing"]["channels_smoothed"] > 0
    assert manifest["source"]["architecture"] == "BertModel" and len(manifest["source"]["sha256"]) == 64
    assert {i["name"] for i in manifest["inputs"]} >= {"input_ids", "attention_mask"}
    assert "sentence_embedding" in {o["name"] for o in manifest["outputs"]}
    assert manifest["memory"]["budget_bytes"] == 1_500_000_000
    assert manifest["memory"]["fits"] and manifest["accuracy"]["min_cosine"] > 0.98
    # The measured peak varies run to run: --json reports it, the (reproducible) bundle does not.
    assert "measured_peak_bytes" not in manifest["memory"] and manifest["memory"]["verdict_basis"] == "measured"
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
    sums = dict(line.split("  ")[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == present - {"SHA256SUMS"}

    requirements = (folder / "requirements.txt").read_text()
    assert "onnxruntime==1.32.0" in requirements and "numpy==" in requirements and "tokenizers==" in requirements
    assert "torch" not in requirements and "packager" not in requirements


def test_packager_smoke_passes(minilm_rpi5: dict) -> None:
    proc = run_cli("smoke", minilm_rpi5["archive"], "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["verdict"] == "PASS"
    assert result["report"]["files_checked"] >= len(BUNDLE_FILES) - 1
    assert result["report"]["peak_bytes"] <= result["report"]["budget_bytes"]


def test_tampered_model_fails_the_smoke_test(minilm_rpi5: dict, tmp_path: Path) -> None:
    folder = unpack(Path(minilm_rpi5["archive"]), tmp_path)
    model = folder / "model" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    direct = subprocess.run([sys.executable, "smoke_test.py"], cwd=folder, capture_output=True, text=True)
    assert direct.returncode != 0
    assert direct.stdout.strip().splitlines()[-1] == \
        "FAIL: checksum mismatch: model/model.onnx was modified after packaging"
    via_cli = run_cli("smoke", str(folder))
    assert via_cli.returncode == 8 and "checksum mismatch" in via_cli.stderr


def test_lying_manifest_fails_the_smoke_test(minilm_rpi5: dict, tmp_path: Path) -> None:
    folder = unpack(Path(minilm_rpi5["archive"]), tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["memory"]["budget_bytes"] = 10 * 2**20  # a budget no Python process meets
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "smoke_test.py"], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "FAIL: checksum mismatch: manifest.json was modified after packaging"


def test_run_py_prints_the_embedding_sentence_transformers_gives(minilm_rpi5: dict, tmp_path: Path,
                                                                  minilm_dir: Path) -> None:
    folder = unpack(Path(minilm_rpi5["archive"]), tmp_path)
    text = "A sentence to embed on a Raspberry Pi."
    proc = subprocess.run([sys.executable, "run.py", text], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ours = np.asarray(json.loads(proc.stdout)[0]["sentence_embedding"]).ravel()
    assert ours.shape == (384,)

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode([text])[0]
    cosine = float(ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference))
    assert cosine > 0.98, cosine


def test_bundle_runs_in_a_venv_with_only_its_requirements(minilm_rpi5: dict, tmp_path: Path) -> None:
    """The device's view: a fresh virtual environment, `pip install -r requirements.txt`, nothing else."""
    if shutil.which("pip") is None and not (Path(sys.executable).parent / "pip").exists():
        pytest.skip("pip is not available")
    folder = unpack(Path(minilm_rpi5["archive"]), tmp_path / "bundle")
    # outside the bundle folder, where its README puts it: the smoke test refuses unlisted files
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                          str(folder / "requirements.txt")], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    assert "packager" not in freeze and "torch" not in freeze and "transformers" not in freeze
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(py), "smoke_test.py"], cwd=folder, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "PASS"
    via_cli = run_cli("smoke", minilm_rpi5["archive"], "--python", str(py))
    assert via_cli.returncode == 0 and via_cli.stdout.strip() == "PASS"


def test_gpu_target_falls_back_to_cpu_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = run_cli("package", "sample:minilm", "--target", "jetson", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["target"] == "jetson-orin-nano" and summary["recipe"] == "fp16"
    assert summary["accuracy"]["min_cosine"] > 0.999
    folder = unpack(Path(summary["archive"]), tmp_path / "u")
    requirements = (folder / "requirements.txt").read_text()
    assert "--extra-index-url https://pypi.jetson-ai-lab.io/jp6/cu126" in requirements
    assert "onnxruntime-gpu==" in requirements
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=folder, capture_output=True, text=True)
    assert smoke.returncode == 0, smoke.stdout
    assert "TensorrtExecutionProvider path was not exercised" in smoke.stdout
    assert "the GPU path was not exercised on this host" in smoke.stdout
    assert smoke.stdout.strip().splitlines()[-1] == "PASS"
    # The CUDA context the CPU-only measurement missed counts against the budget; TensorRT's workspace is what
    # the budget leaves; the Dockerfile runs the smoke test on the L4T image.
    memory = summary["memory"]
    assert memory["gpu_context_bytes"] == memory["estimate"]["breakdown"]["gpu_context"] > 0
    assert memory["headroom_bytes"] == \
        memory["budget_bytes"] - memory["measured_peak_bytes"] - memory["gpu_context_bytes"]
    manifest = json.loads((folder / "manifest.json").read_text())
    trt = manifest["runtime"]["provider_options"]["TensorrtExecutionProvider"]
    assert 0 < trt["trt_max_workspace_size"] == memory["tensorrt_workspace"]["bytes"] <= 2**30
    assert (folder / "Dockerfile").read_text().startswith("# minilm-jetson-orin-nano")
    assert "FROM nvcr.io/nvidia/l4t-jetpack:" in (folder / "Dockerfile").read_text()


def test_inspect_says_jetson_runs_the_rpi5_int8_bundle(minilm_rpi5: dict) -> None:
    # the quantizer's unused imports (ai.onnx.ml opset 5 and others) are dropped, and only used domains judged
    proc = run_cli("inspect", minilm_rpi5["archive"], "--json")
    assert proc.returncode == 0, proc.stderr
    verdicts = {c["target"]: c["status"] for c in json.loads(proc.stdout)["compatibility"]}
    assert verdicts["jetson-orin-nano"] == verdicts["jetson-agx-orin"] == "ok", verdicts
    assert minilm_rpi5["coverage"]["share"]["int8"] > 0.9
