"""`packager bench` (issue 19 item 5): a bundle's own device code timed in a child process, with the peak
resident memory and, for decoder LLMs, the memory-bandwidth bound computed from the profile's device facts.
What is asserted is the structure and the arithmetic, never a speed of this CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, unpack
from packager.bandwidth import DTYPE_BYTES, GB, kv_bytes_of, model_reads
from packager.emulate import QEMU_BINARIES
from packager.errors import ExitCode
from packager.exporter_envs import GENAI, is_ready
from packager.profiles import resolve_target

PROMPT, NEW = 48, 8
DECODER_KEYS = {"load_s", "load_peak_bytes", "baseline_bytes", "peak_bytes", "method", "mode", "prompt_tokens",
                "new_tokens", "ttft_s", "prefill_tokens_per_s", "decode_s", "decode_tokens_per_s", "bounds",
                "host_bound_ratio", "loadavg", "bundle", "target", "runtime", "where", "notes", "emulation"}


def _package(tmp: Path, model: str, target: str) -> Path:
    proc = run_cli("package", model, "--target", target, "--out", str(tmp / "dist"), "--no-cache", timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next((tmp / "dist").glob("*.tar.gz"))


@pytest.fixture(scope="module")
def llama_rpi5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _package(tmp_path_factory.mktemp("bench-llama"), "sample:tiny-llama", "rpi5")


@pytest.fixture(scope="module")
def llama_genai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not is_ready(GENAI):
        pytest.skip("needs `packager env create genai`")
    return _package(tmp_path_factory.mktemp("bench-genai"), "sample:tiny-llama", "rpi5-genai")


def bench_json(bundle: Path, *args: str) -> dict:
    proc = run_cli("bench", str(bundle), "--prompt-tokens", str(PROMPT), "--new-tokens", str(NEW), *args, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _manifest(archive: Path, tmp: Path) -> dict:
    """The bundle's manifest, with the bytes of a KV element as its packaged graph declares them (`kv_element`): the
    bench counts what the graph reads, and runtime.io says the same (a runtime's own graph: genai's 16-bit cache)."""
    bundle = unpack(archive, tmp)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["kv_element"] = model_reads(bundle / manifest["runtime"]["model"])[1]
    return manifest


def _check_decoder(result: dict, manifest: dict, target: str) -> None:
    assert DECODER_KEYS <= set(result)
    assert result["mode"] == "decoder" and result["where"] == "host" and result["target"] == target
    assert result["prompt_tokens"] == PROMPT and result["new_tokens"] == NEW
    assert result["ttft_s"] > 0 and result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert result["peak_bytes"] >= result["load_peak_bytes"] > result["baseline_bytes"] > 0
    device, host = result["bounds"]["device"], result["bounds"]["host"]
    # The device's bound is its profile's bandwidth over the bytes a token reads: weights, and the KV cache at
    # the decode's mean length, from the bundle's own record of the cache's shape.
    assert device["bandwidth_gbs"] == resolve_target(target).device.memory_bandwidth_gbs > 0
    assert device["kv_bytes"] == kv_bytes_of(manifest["runtime"]["io"]["kv"], manifest["kv_element"]) * \
        (PROMPT + NEW // 2) > 0
    # the manifest's cache is the graph's (genai's builder: runtime.io describes its graph, not the fp32 export)
    assert DTYPE_BYTES[manifest["runtime"]["io"]["kv"]["dtype"]] == manifest["kv_element"]
    assert 0 < device["weight_bytes"] <= sum(f["size"] for f in manifest["files"] if f["path"].startswith("model/"))
    for bound in (device, host):
        assert bound["tokens_per_s"] == pytest.approx(
            bound["bandwidth_gbs"] * GB / (bound["weight_bytes"] + bound["kv_bytes"]))
    assert host["bandwidth_gbs"] > 0 and host["weight_bytes"] == device["weight_bytes"]
    assert result["host_bound_ratio"] == pytest.approx(result["decode_tokens_per_s"] / host["tokens_per_s"])
    assert len(result["loadavg"]) == 3


def test_decoder_bench_on_onnxruntime(llama_rpi5: Path, tmp_path: Path) -> None:
    _check_decoder(bench_json(llama_rpi5), _manifest(llama_rpi5, tmp_path), "rpi5")


@pytest.mark.integration
def test_decoder_bench_on_genai(llama_genai: Path, tmp_path: Path) -> None:
    result = bench_json(llama_genai)
    _check_decoder(result, _manifest(llama_genai, tmp_path), "rpi5-genai")
    assert result["runtime"] == "onnxruntime-genai"


def test_human_output_names_each_figure(llama_rpi5: Path) -> None:
    proc = run_cli("bench", str(llama_rpi5), "--prompt-tokens", "16", "--new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for words in ("time to first token", "prefill", "decode", "bound       device", "bound       host", "peak",
                  "load average"):
        assert words in proc.stdout


def test_model_bench_gives_the_median_latency(tmp_path: Path) -> None:
    archive = _package(tmp_path, "sample:silero-vad", "rpi5")
    result = bench_json(archive, "--runs", "3")
    assert result["mode"] == "model" and result["runs"] == 3 and result["bounds"] == {}
    assert 0 < result["latency_min_s"] <= result["latency_s"] <= result["latency_max_s"]
    assert result["peak_bytes"] >= result["load_peak_bytes"] > 0


@pytest.mark.parametrize("args, code", [
    (("--prompt-tokens", "0"), ExitCode.USAGE),
    (("--runs", "-1"), ExitCode.USAGE),
    (("--prompt-tokens", "600", "--new-tokens", "8"), ExitCode.USAGE),   # past the bundle's 512 of context
])
def test_bad_settings_are_one_sentence(llama_rpi5: Path, args: tuple[str, ...], code: ExitCode) -> None:
    proc = run_cli("bench", str(llama_rpi5), *args, "--json")
    assert proc.returncode == code, proc.stderr
    error = json.loads(proc.stdout)
    assert error["exit_code"] == code and error["error"].count(". ") == 0 and error["error"].endswith(".")


def test_bad_bundle_paths_are_refused(llama_rpi5: Path, tmp_path: Path) -> None:
    proc = run_cli("bench", str(tmp_path / "missing.tar.gz"))
    assert proc.returncode == ExitCode.BAD_INPUT
    assert "no such bundle" in proc.stderr and proc.stderr.count("error:") == 1
    (tmp_path / "empty").mkdir()
    proc = run_cli("bench", str(tmp_path / "empty"))
    assert proc.returncode == ExitCode.BAD_INPUT and "not a packager bundle" in proc.stderr
    folder = unpack(llama_rpi5, tmp_path / "edited")
    (folder / "runtime" / "session.py").write_text("raise SystemExit('edited')\n")
    proc = run_cli("bench", str(folder))   # an edited file: refused before any of the bundle runs
    assert proc.returncode == ExitCode.BAD_INPUT and "session.py" in proc.stderr
    shutil.rmtree(folder)


@pytest.mark.integration
@pytest.mark.skipif(not any(shutil.which(n) for n in QEMU_BINARIES),
                    reason="qemu-user-static is not installed (apt-get install qemu-user-static)")
def test_emulated_bench_runs_the_device_python_and_gives_the_device_bound_only(llama_rpi5: Path) -> None:
    proc = run_cli("bench", str(llama_rpi5), "--emulate", "--prompt-tokens", "8", "--new-tokens", "2", "--json",
                   timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["where"] == "emulated" and result["emulation"]["device_cpu"] == "cortex-a76"
    assert set(result["bounds"]) == {"device"} and result["host_bound_ratio"] is None
    assert result["decode_tokens_per_s"] > 0 and any("emulated" in n for n in result["notes"])
    proc = run_cli("bench", str(llama_rpi5), "--emulate", "--python", "python3")
    assert proc.returncode == ExitCode.USAGE and "drop --python" in proc.stderr
