"""`packager check BUNDLE` for a bundle whose runtime made its model itself (onnxruntime-genai: the builder's graph,
run by genai's own generator). The exported-graph path cannot run such a graph, so the bundle is judged as it was
built: its own run.py measures it in a fresh process of the runtime's interpreter, beside the estimate recorded
when it was packaged (packager/stages/fit.py made both the same way)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from packager.errors import ExitCode, PackagerError
from packager.fit_memory import measure_folder, verdict
from packager.model_files import read_json
from packager.profile_types import DEFAULT_RUNTIME
from packager.profiles import Profile
from packager.records import Memory
from packager.runtimes import RUNTIMES, profile_for_model, runtime_for


def own_runtime_profile(folder: Path, profile: Profile) -> Profile | None:
    """The profile as it applies to the bundle at `folder` when the bundle's runtime made its model (a decoder on
    onnxruntime-genai, the profile's [runtime] or its [decoder_runtime]); None when the exported-graph path judges
    the bundle. Exit 2 when the profile would not run this model on the bundle's runtime."""
    manifest = _manifest(folder)
    # runtime.name is recorded only where it is not the default (profile_types.Profile.to_dict)
    name = manifest["profile"]["runtime"].get("name", DEFAULT_RUNTIME)
    if name not in RUNTIMES or not RUNTIMES[name].builds_model:
        return None
    applied, _ = profile_for_model(profile, manifest["runtime"]["io"]["kind"],
                                   manifest.get("source", {}).get("architecture", ""))
    if applied.runtime.name != name:
        raise PackagerError(f"{folder.name}: the bundle runs on {manifest['runtime']['package']}, which "
                            f"{profile.name} does not use for this model ({applied.runtime.package}); check the "
                            f"model it was built from with --target {profile.name}.", ExitCode.USAGE)
    return applied


def check_as_built(folder: Path, profile: Profile, context: int | None, measure: bool) -> Memory:
    """The memory verdict of the bundle at `folder` on `profile` (own_runtime_profile's): the packaging's
    estimate, and with `measure` the bundle's own `run.py --measure`."""
    manifest = _manifest(folder)
    recorded = Memory.from_dict(manifest["memory"], "manifest.json memory").estimate
    if context is not None and context != recorded.context:
        raise PackagerError(f"{folder.name}: the bundle was built for a context of {recorded.context} tokens, which "
                            f"its runtime sized its cache for; drop --context, or package the model again with "
                            f"--context {context}.", ExitCode.USAGE)
    est = dataclasses.replace(recorded, notes=[*recorded.notes, f"the estimate recorded when the bundle was "
                                               f"packaged for {manifest['target']}"])
    measured = measure_folder(folder, runtime_for(profile).host_python(profile)) if measure else None
    return verdict(profile, recorded.context, est, measured)


def _manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = read_json(folder / "manifest.json", "the bundle is damaged: rebuild it")
    return manifest
