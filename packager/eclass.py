"""The E-class exporter's host side (issue 20): runs runtimes/eclass_export.py in the `genai` exporter environment
(transformers 5.x has Gemma 4), a copy of the file beside it: packager itself is not installed there."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager import exporter_envs

MODULE = "eclass_export"   # packager/runtimes/eclass_export.py, never imported here (it imports torch)


def export(source: Path, out: Path, work: Path, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """model.onnx and its data files in `out` from the Hugging Face folder `source`; what the exporter reports
    (its last line: the layers owning a cache, the PLE's own file, seconds)."""
    code = work / "eclass-exporter"
    code.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("runtimes") / f"{MODULE}.py", code / f"{MODULE}.py")
    tail = exporter_envs.run(exporter_envs.GENAI, MODULE, [str(source), str(out)], progress, cwd=code)
    made: dict[str, Any] = json.loads(tail[-1])
    return made
