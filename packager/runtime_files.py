"""The device-side files in targets/ that the build host copies into a bundle, and their requirements.

The host imports the same code with packager.device_code.runner().
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from packager.device_code import runner as runner  # its home was here: `from packager.runtime_files import runner`
from packager.families import family_for
from packager.paths import targets_dir
from packager.profiles import Profile
from packager.runtimes import runtime_for


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


def encoder_requirements(soft: dict[str, Any] | None) -> list[str]:
    """What a multimodal decoder's encoders need on the device (targets/encoders/requirements.txt: Pillow, for an
    image encoder's resize); nothing for a model without an image encoder."""
    return _requirements(targets_dir() / "encoders" / "requirements.txt") \
        if "image" in ((soft or {}).get("encoders") or {}) else []


def signing_requirements() -> list[str]:
    """What a signed bundle's signature check needs on the device (targets/signing/requirements.txt)."""
    return _requirements(targets_dir() / "signing" / "requirements.txt")


def _requirements(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]

