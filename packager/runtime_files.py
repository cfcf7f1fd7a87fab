"""The device-side files in targets/, as the build host uses them.

The verify and fit stages run the very code that ships in the bundle (tokenization,
comparison, memory measurement) by loading targets/run.py, so the host and the device
cannot disagree about what a sample means.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from packager.families import family_for
from packager.paths import targets_dir
from packager.profiles import Profile
from packager.runtimes import runtime_for


@functools.cache
def runner() -> ModuleType:
    """targets/run.py, imported under a private name."""
    path = targets_dir() / "run.py"
    spec = importlib.util.spec_from_file_location("packager_bundle_run", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_runtime(dest: Path, profile: Profile) -> None:
    """The device-side code of the profile's runtime (run.py, smoke_test.py and the package they load) into
    `dest`; the entry points at the top executable."""
    for name, source in runtime_for(profile).device_files(profile).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest / name)
        (dest / name).chmod(0o644 if "/" in name else 0o755)


def family_requirements(kind: str) -> list[str]:
    """Extra pinned requirements of a model family (targets/families/<family>/requirements.txt)."""
    return _requirements(family_for(kind).requirements_file())


def signing_requirements() -> list[str]:
    """What a signed bundle's signature check needs on the device (targets/signing/requirements.txt)."""
    return _requirements(targets_dir() / "signing" / "requirements.txt")


def _requirements(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]

