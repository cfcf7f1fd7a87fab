"""The device-side code (targets/run.py and the runtime/ package it loads), as the build host imports it.

The host runs the very code that ships in the bundle (tokenization, comparison, memory measurement, the
manifest's typed reader), so the host and the device cannot disagree about what a sample or a manifest
means. A core module: the records (packager/records.py) read and write through it, below everything else.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

from packager.paths import targets_dir


@functools.cache
def runner() -> ModuleType:
    """targets/run.py, imported under a private name."""
    path = targets_dir() / "run.py"
    spec = importlib.util.spec_from_file_location("packager_bundle_run", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
