"""The decoder families onnxruntime-genai's builder makes (issue 19, items 6 and 7): a tiny random model of each
(tests/tiny_decoders.py) packages for rpi5-genai, is verified against the original model in PyTorch, and its
bundle's smoke test passes; a family the builder lacks is refused in one sentence; a builder output changed on
purpose fails verify. Needs packager's `genai` exporter environment (`packager env create genai`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli, unpack
from packager.errors import ExitCode, PackagerError
from packager.exporter_envs import GENAI, is_ready
from packager.runtimes.genai import genai_supports
from packager.runtimes.genai_families import REFUSED, SUPPORTED
from tiny_decoders import CONFIGS, make_decoder

TARGET = "rpi5-genai"
needs_genai = pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")
# A family's tiny model in tests/tiny_decoders.py -> its architecture
FAMILIES = {name: spec["architectures"][0] for name, spec in CONFIGS.items()}


def test_every_supported_and_refused_architecture_has_a_tiny_model() -> None:
    """The table is the tests' list: each entry is exercised below, none is claimed untested."""
    assert set(SUPPORTED) | set(REFUSED) == set(FAMILIES.values())
    assert not set(SUPPORTED) & set(REFUSED)
    assert all(genai_supports(a) for a in SUPPORTED) and not any(genai_supports(a) for a in REFUSED)


def _package(folder: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("package", str(folder), "--target", TARGET, "--out", str(out), "--json", *args, timeout=900)


@pytest.mark.integration
@needs_genai
@pytest.mark.parametrize("family", [f for f, a in FAMILIES.items() if a in SUPPORTED])
def test_family_packages_verifies_against_pytorch_and_passes_its_smoke_test(family: str, tmp_path: Path) -> None:
    """fp32, so that the gate judges the builder's graph and genai's kernels against PyTorch, not int4's rounding
    of random weights (which flips their near-even greedy choices: no fidelity signal at this size)."""
    folder = make_decoder(tmp_path / family, family)
    proc = _package(folder, tmp_path / "dist", "--recipe", "fp32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = json.loads(proc.stdout)["accuracy"]
    assert accuracy["reference"].startswith("PyTorch")
    assert accuracy["token_agreement"] >= accuracy["threshold"]["token_agreement"]
    bundle = unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "unpacked")
    smoke = subprocess.run([str(GENAI.python), "smoke_test.py"], capture_output=True, text=True, cwd=bundle,
                           timeout=600)
    assert smoke.stdout.strip().splitlines()[-1] == "PASS", smoke.stdout + smoke.stderr


@pytest.mark.integration
@needs_genai
def test_a_family_the_builder_lacks_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    folder = make_decoder(tmp_path / "olmo2", "olmo2")
    proc = _package(folder, tmp_path / "dist")
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "Olmo2ForCausalLM" in message and all(name in message for name in SUPPORTED.values())
    assert "rpi5" in message
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def _corrupt_scales(model: Path) -> None:
    """An exporter's bug, made on purpose: every layer's MLP output projection's int4 scales of the wrong sign."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    changed = 0
    for i, tensor in enumerate(graph.graph.initializer):
        if "down_proj" in tensor.name and tensor.name.endswith("scales"):
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor),
                                                                        tensor.name))
            changed += 1
    assert changed, "no down_proj scales in the built model"
    data = model.with_name(model.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(graph, str(model), save_as_external_data=True, location=data.name)


@pytest.mark.integration
@needs_genai
def test_a_builder_output_changed_on_purpose_fails_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference is the model in PyTorch, not another export: a wrong scale in the built model fails the gate
    with exit 4, and nothing is written."""
    from packager import api, runtime_steps

    build = runtime_steps.genai_build

    def broken_build(ctx, model_dir, *args, **kwargs):  # type: ignore[no-untyped-def]
        build(ctx, model_dir, *args, **kwargs)
        _corrupt_scales(model_dir / "model.onnx")

    monkeypatch.setattr(runtime_steps, "genai_build", broken_build)
    with pytest.raises(PackagerError, match="greedy tokens") as e:
        api.package("sample:tiny-llama", TARGET, out=tmp_path / "dist", cache=False)
    assert e.value.code == ExitCode.ACCURACY
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


@pytest.mark.integration
@needs_genai
def test_an_int8_cache_on_sliding_window_layers_verifies_and_runs(tmp_path: Path) -> None:
    """--kv-bits 8 on a family with sliding-window layers (a window shorter than the prompts): the builder's int8
    cache is one buffer shared by past and present, as its float caches are (genai 0.18 fails unshared windowed
    caches on the CPU: "KV cache capacity (0) must be at least local_window_size"); verify judges it against
    PyTorch and the bundle's smoke test passes. The folder is given relative to the working directory, as users type
    it (the builder's child, in another folder, took it for a hub id; the int8 cache's scales read its tokenizer
    relative to the work folder)."""
    make_decoder(tmp_path / "gemma3", "gemma3", sliding_window=8)
    proc = run_cli("package", "gemma3", "--target", TARGET, "--out", "dist", "--json", "--recipe", "fp32",
                   "--kv-bits", "8", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = json.loads(proc.stdout)["accuracy"]
    assert accuracy["token_agreement"] >= accuracy["threshold"]["token_agreement"]
    bundle = unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "unpacked")
    config = json.loads((bundle / "model" / "genai_config.json").read_text(encoding="utf-8"))
    assert config["search"]["past_present_share_buffer"] is True
    smoke = subprocess.run([str(GENAI.python), "smoke_test.py"], capture_output=True, text=True, cwd=bundle,
                           timeout=600)
    assert smoke.stdout.strip().splitlines()[-1] == "PASS", smoke.stdout + smoke.stderr
