"""GPU profiles (Jetson): the CUDA context a host without the GPU cannot measure, the TensorRT workspace the budget
leaves, the Dockerfile, and the runner's session config entries and engine cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from packager.device_code import runner
from packager.estimate import estimate
from packager.gpu import MIN_WORKSPACE, dockerfile, trt_workspace, unmeasured_gpu_bytes
from packager.profiles import builtin_profiles
from packager.records import Estimate, Memory

MiB = 2**20
PROFILES = builtin_profiles()
NANO, RPI5 = PROFILES["jetson-orin-nano"], PROFILES["rpi5"]


def _memory(headroom: int, weights: int) -> Memory:
    """The fit stage's record with `headroom` between the budget and the estimate's high side."""
    budget, high = 8 * 2**30, 8 * 2**30 - headroom
    estimate = Estimate(low_bytes=high // 2, high_bytes=high, load_high_bytes=high, run_high_bytes=high,
                        breakdown={"weights_inline": weights, "weights_external": 0})
    return Memory(budget_bytes=budget, context=None, estimate=estimate, verdict_basis="measured", fits=True,
                  headroom_bytes=1)   # the measured headroom: not what the bound uses


def test_trt_workspace_is_what_the_budget_leaves_up_to_the_profile_ceiling() -> None:
    ceiling = NANO.runtime.provider_options["TensorrtExecutionProvider"]["trt_max_workspace_size"]
    assert trt_workspace(NANO, _memory(2048 * MiB, 100 * MiB))["bytes"] == ceiling
    bound = trt_workspace(NANO, _memory(600 * MiB + 12345, 100 * MiB))
    assert bound["bytes"] == 500 * MiB and "note" not in bound  # headroom less the engine's weights, whole MiB
    tight = trt_workspace(NANO, _memory(50 * MiB, 100 * MiB))
    assert tight["bytes"] == MIN_WORKSPACE > 0 and "no room" in tight["note"]  # 0 would mean "unbounded"
    assert trt_workspace(NANO, None) is None  # before the fit stage: the profile's figure stands
    assert trt_workspace(RPI5, _memory(2048 * MiB, 0)) is None


def test_a_measurement_without_the_gpu_misses_the_cuda_context() -> None:
    assert NANO.runtime.gpu_context_bytes > 0
    missing = {"missing_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
    assert unmeasured_gpu_bytes(NANO, missing) == NANO.runtime.gpu_context_bytes
    assert unmeasured_gpu_bytes(NANO, {"missing_providers": []}) == 0  # measured on the device: it saw the context
    assert unmeasured_gpu_bytes(NANO, None) == 0 and unmeasured_gpu_bytes(RPI5, missing) == 0


def test_estimate_counts_the_cuda_context_on_gpu_profiles(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    gpu, cpu = (estimate(path, p, "tensor", {"x": (1, 64)}) for p in (NANO, RPI5))
    assert gpu.breakdown["gpu_context"] == NANO.runtime.gpu_context_bytes and "gpu_context" not in cpu.breakdown
    assert gpu.low_bytes >= NANO.runtime.gpu_context_bytes and gpu.load_high_bytes >= NANO.runtime.gpu_context_bytes


def test_dockerfile_runs_the_smoke_test_on_the_l4t_image() -> None:
    text = dockerfile("minilm-jetson-orin-nano", NANO)
    assert f"FROM {NANO.os.container}\n" in text and NANO.os.container.startswith("nvcr.io/nvidia/l4t-jetpack:r36.")
    assert "python3 -m pip install --no-cache-dir -r requirements.txt" in text
    assert 'CMD ["python3", "smoke_test.py"]' in text and "XDG_CACHE_HOME=/cache" in text
    assert "--runtime nvidia" in text and "{{" not in text
    assert not RPI5.os.container
    # the same device on its CPU cores: the same image, no NVIDIA runtime, no engine cache
    cpu = dockerfile("minilm-jetson-orin-nano-cpu", PROFILES["jetson-orin-nano-cpu"])
    assert f"FROM {NANO.os.container}\n" in cpu and "{{" not in cpu
    assert "--runtime nvidia" not in cpu and "TensorRT" not in cpu and "CPU provider" in cpu


def test_runner_applies_session_config_entries_and_makes_the_engine_cache(tmp_path: Path) -> None:
    rt = runner()
    phone = PROFILES["phone"]
    spec = {**phone.to_dict()["session"]}
    so = rt.session_options(spec)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16") == "1"
    options = rt.provider_options(["TensorrtExecutionProvider", "CPUExecutionProvider"],
                                  {"TensorrtExecutionProvider": {"trt_engine_cache_enable": True}}, tmp_path)
    assert Path(options[0]["trt_engine_cache_path"]).is_dir()


def test_the_docker_image_name_is_one_docker_accepts() -> None:
    """A bundle of several models is called `a+b`, and a model folder may hold capitals: Docker's image names
    take neither (lowercase letters, digits and separators, starting with a letter or digit)."""
    import re

    from packager.gpu import image_name

    for bundle, image in (("minilm+silero-vad-jetson-orin-nano", "minilm-silero-vad-jetson-orin-nano"),
                          ("My_Model-jetson-agx-orin", "my_model-jetson-agx-orin"), ("_x.", "x"), ("+", "bundle")):
        assert image_name(bundle) == image
        assert re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*", image)
