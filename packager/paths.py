"""Where the data folders live: beside the package in a checkout, or installed as packages."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def data_dir(name: str) -> Path:
    """The `profiles/` or `targets/` folder of this installation."""
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec(f"packager_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"packager's {name}/ folder is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def profiles_dir() -> Path:
    return data_dir("profiles")


def targets_dir() -> Path:
    return data_dir("targets")


def cache_dir() -> Path:
    """packager's cache folder: $PACKAGER_CACHE_DIR, else ~/.cache/packager."""
    configured = os.environ.get("PACKAGER_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "packager"
