"""GPU profiles (Jetson): what a build host without the GPU cannot measure, the TensorRT workspace the budget
leaves, and the Dockerfile that runs the bundle's smoke test on the device's own userland.

    unseen = unmeasured_gpu_bytes(profile, measured)   # the CUDA context a CPU-only measurement misses
    bound = trt_workspace(profile, memory)             # trt_max_workspace_size within the estimate's headroom
    write_container_files(stage, ctx)                  # Dockerfile + .dockerignore, from targets/jetson/
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from packager.paths import targets_dir
from packager.profile_types import Profile
from packager.records import Memory

# The providers that run on the GPU; a measurement without them has not seen the GPU path's memory.
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
TRT = "TensorrtExecutionProvider"
MiB = 2**20
# The least workspace packager writes: 0 would mean "TensorRT's default" (no bound at all).
MIN_WORKSPACE = MiB


def uses_gpu(profile: Profile) -> bool:
    return bool(GPU_PROVIDERS & set(profile.runtime.providers))


def unmeasured_gpu_bytes(profile: Profile, measured: dict[str, Any] | None) -> int:
    """The profile's CUDA context figure when the measurement ran without the GPU providers (a build host
    without the GPU): the budget must still hold it on the device's unified memory."""
    if not measured or not uses_gpu(profile):
        return 0
    missing = set(measured.get("missing_providers", ())) & GPU_PROVIDERS
    return profile.runtime.gpu_context_bytes if missing else 0


def trt_workspace(profile: Profile, memory: Memory | None) -> dict[str, Any] | None:
    """trt_max_workspace_size bounded so that building the engine stays within the budget: the headroom the
    estimate leaves (its high side, which counts the CUDA context), less the engine's own copy of the weights
    (assumed the size of the packaged weights), capped by the profile's figure; None before the fit stage or
    without TensorRT. The estimate, not the measured peak: the measurement moves by pages run to run, and
    the bound is written into the manifest, which must reproduce byte for byte."""
    options = profile.runtime.provider_options.get(TRT)
    if TRT not in profile.runtime.providers or options is None or memory is None:
        return None
    estimate = memory.estimate
    headroom = memory.budget_bytes - estimate.high_bytes
    ceiling = int(options.get("trt_max_workspace_size", 0)) or None
    engine = estimate.breakdown.get("weights_inline", 0) + estimate.breakdown.get("weights_external", 0)
    room = (headroom - engine) // MiB * MiB
    bound = max(MIN_WORKSPACE, min(room, ceiling) if ceiling else room)
    result = {"bytes": bound, "profile_bytes": ceiling, "headroom_bytes": headroom, "engine_weights_bytes": engine,
              "basis": "min(profile's trt_max_workspace_size, budget - estimated peak (high) - the engine's copy "
                       "of the weights)"}
    if room < MIN_WORKSPACE:
        result["note"] = (f"the budget leaves no room for TensorRT's workspace ({room / MiB:.0f} MiB after the "
                          f"engine's weights): engine builds may fail and fall back to CUDA; raise the budget or "
                          "pick a smaller recipe")
    return result


def image_name(bundle: str) -> str:
    """The bundle's name as a Docker image name, which takes lowercase letters, digits and `._-` only
    (a bundle of several models is called `a+b`; a model folder may hold capitals)."""
    return re.sub(r"[^a-z0-9._-]", "-", bundle.lower()).strip("._-") or "bundle"


# Dockerfile.template's words for where the smoke test runs: the GPU providers', or the CPU cores' alone (a profile
# such as jetson-orin-nano-cpu)
DOCKER_ON_GPU = {
    "processor": "the device's GPU", "docker": "Docker with the NVIDIA runtime", "run_flags": "--runtime nvidia ",
    "volume": "The volume keeps TensorRT's engine cache ($XDG_CACHE_HOME/packager-bundle/trt-engines): later runs "
              "skip the build."}
DOCKER_ON_CPU = {
    "processor": "the device's CPU cores (onnxruntime's CPU provider: no CUDA library, no CUDA context)",
    "docker": "Docker; the NVIDIA runtime is not needed", "run_flags": "",
    "volume": "The volume keeps the bundle's cache ($XDG_CACHE_HOME/packager-bundle) between runs."}


def dockerfile(bundle: str, profile: Profile) -> str:
    text = (targets_dir() / "jetson" / "Dockerfile.template").read_text(encoding="utf-8")
    values = {"base_image": profile.os.container, "bundle": bundle, "image": image_name(bundle),
              "target": profile.name, "os": profile.os.name, "python": profile.os.python,
              **(DOCKER_ON_GPU if uses_gpu(profile) else DOCKER_ON_CPU)}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text, "Dockerfile.template has a placeholder without a value"
    return text


def write_container_files(stage: Path, bundle: str, profile: Profile) -> list[str]:
    """Dockerfile (the profile's os.container base image, the bundle's requirements, the smoke test as its
    command) and a .dockerignore that keeps a virtual environment made in the bundle out of the image."""
    (stage / "Dockerfile").write_text(dockerfile(bundle, profile), encoding="utf-8")
    (stage / ".dockerignore").write_text(".venv/\n**/__pycache__/\n", encoding="utf-8")
    return ["Dockerfile", ".dockerignore"]
