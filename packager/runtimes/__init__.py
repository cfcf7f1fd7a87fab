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

from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.families import family_for
from packager.runtimes.base import DecoderMemory, MemoryShare, Runtime
from packager.runtimes.genai import GenaiRuntime
from packager.runtimes.onnxruntime import OnnxRuntime

# The E-class exporter and the modules it imports (packager/eclass.py copies them into the genai environment's work
# folder and runs the first there); stages/export.py keys the export's cache by them too
ECLASS_EXPORTER_FILES = tuple(Path(__file__).with_name(name)
                              for name in ("eclass_export.py", "eclass_checkpoint.py", "eclass_encoders.py",
                                           "eclass_encoders_3n.py"))

if TYPE_CHECKING:
    from packager.profile_types import Profile

__all__ = ["RUNTIMES", "DecoderMemory", "MemoryShare", "Runtime", "profile_for_model", "runtime_for"]

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


def profile_for_model(profile: Profile, kind: str, architecture: str) -> tuple[Profile, str]:
    """The profile as it applies to a model of io kind `kind` (and Hugging Face `architecture`, "" for an .onnx
    file): a decoder LLM goes to the profile's [decoder_runtime] where that runtime takes the architecture, and takes
    the profile's [decoder_int4] on whichever runtime runs it. With a note for the human watching where a decoder
    keeps [runtime] for want of it ("" otherwise)."""
    family = family_for(kind)
    if not family.generates or family.has_components:
        return profile, ""
    if profile.decoder_runtime is None:
        return profile.with_decoder_int4(), ""
    decoder = profile.with_decoder_runtime()
    if runtime_for(decoder).takes(architecture):
        return decoder, ""
    return profile.with_decoder_int4(), (
        f"{architecture or 'this model'} is not an architecture {decoder.runtime.package} {decoder.runtime.version} "
        f"builds: it runs on {profile.runtime.package} {profile.runtime.version}, with the profile's decoder recipe "
        f"{profile.recipe_for(family.context_sized)}")
