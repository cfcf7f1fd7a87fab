"""Device runtimes, by the name a profile gives in its [runtime] section (modelled on cibuildwheel's
platforms/__init__.py: one protocol, a dict of implementations).

    rt = runtime_for(profile)
    rt.requirements(profile)                  # the device's pinned pip lines
    rt.check_model(path, profile, what)       # compatibility verdict (and record) of a packaged model
    rt.memory(profile, kind)                  # MemoryShare: the runtime's part of the peak
    rt.decoder_memory(profile, precision)     # DecoderMemory: how it holds a decoder LLM (plan)
    rt.convert(ctx)                           # files the device loads instead of the .onnx (phones: .ort)
    rt.device_files(profile)                  # run.py, smoke_test.py: the code that runs the model on the device

The stages, plan, check, inspect and the bundle call these and nothing runtime-specific; a second runtime is
a module here and an entry in RUNTIMES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.runtimes.base import DecoderMemory, MemoryShare, Runtime
from packager.runtimes.genai import GenaiRuntime
from packager.runtimes.onnxruntime import OnnxRuntime

if TYPE_CHECKING:
    from packager.profile_types import Profile

__all__ = ["RUNTIMES", "DecoderMemory", "MemoryShare", "Runtime", "runtime_for"]

RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": OnnxRuntime(),
    "onnxruntime-genai": GenaiRuntime(),   # decoder LLMs (issue 19): profiles/rpi5-genai.toml
}


def runtime_for(profile: Profile) -> Runtime:
    """The runtime the profile names ([runtime] name)."""
    name = profile.runtime.name
    if name not in RUNTIMES:  # profiles are checked at load; one made in code may still name none
        raise PackagerError(f"{profile.source or profile.name}: key 'runtime.name' names an unknown runtime {name!r}"
                            f"{did_you_mean(name, list(RUNTIMES))}; known: {', '.join(RUNTIMES)}.",
                            ExitCode.BAD_PROFILE)
    return RUNTIMES[name]
