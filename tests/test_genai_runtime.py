"""onnxruntime-genai as the device runtime (issue 19): a decoder LLM packaged for rpi5-genai is built by genai's
model builder, verified against the fp32 reference, measured, and its bundle runs, checks itself and pins the
runtime. Needs packager's `genai` exporter environment (`packager env create genai`), which has the runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import reseal, unpack
from packager.errors import ExitCode
from packager.exporter_envs import GENAI, is_ready

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

TARGET = "rpi5-genai"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def packager(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "packager", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=900)


def device(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A bundle's script, run with the runtime it pins (the genai environment has onnxruntime-genai 0.18.0)."""
    return subprocess.run([str(GENAI.python), *args], capture_output=True, text=True, cwd=folder, timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("genai")
    proc = packager("package", "sample:tiny-llama", "--target", TARGET, "--out", str(out / "dist"), "--no-cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return unpack(next((out / "dist").glob("*.tar.gz")), out / "unpacked")


def test_bundle_pins_genai_and_records_the_runtime(bundle: Path) -> None:
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert "onnxruntime-genai==0.18.0" in requirements
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["package"] == "onnxruntime-genai"
    assert (bundle / "model" / "genai_config.json").is_file()
    assert manifest["accuracy"]["metric"] == "token agreement"
    assert manifest["accuracy"]["token_agreement"] >= manifest["accuracy"]["threshold"]["token_agreement"]
    config = json.loads((bundle / "model" / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["enable_cpu_mem_arena"] is False


def test_run_prompt_and_bare_text_generate(bundle: Path) -> None:
    for args in (["--prompt", "Once upon a time", "--max-new-tokens", "8"], ["Once upon a time"]):
        proc = device(bundle, "run.py", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().startswith("Once upon a time")
        assert len(proc.stdout.strip()) > len("Once upon a time")


STREAM = """
import sys
import run
runner = run.load()
pieces = list(runner.stream_text("Once upon a time", 16))
text, tokens = runner.generate_text("Once upon a time", 16)
assert "".join(pieces) == text, (pieces, text)
print(len(pieces), len(tokens))
"""


def test_run_prompt_streams_the_text_as_it_is_generated(bundle: Path) -> None:
    """The runner gives the continuation in pieces, one per token that completes text, and they make up
    generate_text's text; run.py --prompt prints each as it comes (flushed: the prompt is read before the end)."""
    proc = device(bundle, "-c", STREAM)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pieces, tokens = map(int, proc.stdout.split())
    assert 1 < pieces <= tokens
    with subprocess.Popen([str(GENAI.python), "run.py", "--prompt", "Once upon a time", "--max-new-tokens", "16"],
                          cwd=bundle, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as run:
        assert run.stdout is not None
        assert run.stdout.read(len("Once upon a time")) == "Once upon a time"
        rest = run.stdout.read()
    assert run.returncode == 0 and len(rest.strip()) > 0


def test_measure_gives_the_peak(bundle: Path) -> None:
    proc = device(bundle, "run.py", "--measure")
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["peak_bytes"] >= measured["load_peak_bytes"] > measured["baseline_bytes"] > 0


def test_smoke_test_passes_and_fails_on_tampered_expectations(bundle: Path, tmp_path: Path) -> None:
    proc = device(bundle, "smoke_test.py")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "PASS", proc.stdout + proc.stderr
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(bundle), str(tampered)], check=True)
    expected = tampered / "samples" / "expected.npz"
    with np.load(expected) as data:
        arrays = {k: data[k] for k in data.files}
    for key in arrays:   # every reference token moved off what the model predicts
        if key.endswith("tokens"):
            arrays[key] = (arrays[key] + 1) % 50
    np.savez(expected, **arrays)
    reseal(tampered)
    proc = device(tampered, "smoke_test.py")
    assert proc.returncode != 0 and proc.stdout.strip().splitlines()[-1].startswith("FAIL"), proc.stdout


def test_check_gives_a_memory_verdict() -> None:
    proc = packager("check", "sample:tiny-llama", "--target", TARGET, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fits" in proc.stdout


def test_a_model_that_is_not_a_decoder_is_refused_in_one_sentence(tmp_path: Path) -> None:
    proc = packager("package", "sample:minilm", "--target", TARGET, "--out", str(tmp_path / "dist"), "--no-cache")
    assert proc.returncode == ExitCode.BAD_INPUT
    message = proc.stderr.strip().splitlines()[-1]
    assert "onnxruntime-genai" in message and "a text encoder" in message and "rpi5" in message
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())




def test_the_onnxruntime_inside_genai_is_in_the_runtime_table() -> None:
    from packager.compat import load_table
    from packager.profiles import builtin_profiles
    from packager.runtimes.genai import ONNXRUNTIME

    release = load_table().release(ONNXRUNTIME)
    assert release is not None
    assert builtin_profiles()[TARGET].runtime.max_opset <= release.opset


def test_an_int8_kv_cache_is_a_profile_setting(tmp_path: Path) -> None:
    """genai.kv_cache = "int8": the builder's quantized cache, with scales measured on the fp32 reference, passes
    verify and the smoke test."""
    import onnx

    from packager.paths import profiles_dir

    text = (profiles_dir() / f"{TARGET}.toml").read_text()
    setting = '"genai.prefill_chunk" = "256"'
    assert setting in text
    profile = tmp_path / "kv8.toml"
    profile.write_text(text.replace(setting, setting + ', "genai.kv_cache" = "int8"').replace(
        f'name = "{TARGET}"', 'name = "kv8"'))
    proc = packager("package", "sample:tiny-llama", "--target", str(profile), "--out", str(tmp_path / "dist"),
                    "--no-cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "unpacked")
    graph = onnx.load(str(folder / "model" / "model.onnx"), load_external_data=False).graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.")]
    assert past and all(i.type.tensor_type.elem_type == onnx.TensorProto.INT8 for i in past)
    assert json.loads((folder / "manifest.json").read_text())["recipe"]["params"]["kv_cache"] == "int8"
    proc = device(folder, "smoke_test.py")
    assert proc.stdout.strip().splitlines()[-1] == "PASS", proc.stdout + proc.stderr
