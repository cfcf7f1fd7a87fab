"""The E-class exporter's host side (issue 20): runs runtimes/eclass_export.py in the `genai` exporter environment
(transformers 5.x has Gemma 3n and Gemma 4), a copy of the file beside it: packager itself is not installed there."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager import decoder_config, exporter_envs
from packager.model_files import TOKENIZER_FILES
from packager.onnx_rewrite import bypass_identities, name_tied_lm_head
from packager.runtimes import ECLASS_EXPORTER_FILES

MODULE = "eclass_export"   # packager/runtimes/eclass_export.py, never imported here (it imports torch)


def e_type(folder: Path) -> str:
    """The E-class family of a Hugging Face folder's config.json ("" when it is no E-class decoder)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""   # the source stage has said what is wrong with it
    return decoder_config.e_type(config) if isinstance(config, dict) else ""


def export_folder(folder: Path, out: Path, work: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """The E-class export of `folder` into `out` with the tokenizer files the device needs."""
    progress(f"exporting the {e_type(folder)} decoder (E class) in the genai environment")
    made = export(folder, out, work, progress)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    return made


def exporter_code(work: Path) -> Path:
    """A folder under `work` holding a copy of the exporter, to import in the genai environment (its `reference`
    is verify's PyTorch reference for an E-class model)."""
    code = work / "eclass-exporter"
    code.mkdir(parents=True, exist_ok=True)
    for path in ECLASS_EXPORTER_FILES:
        shutil.copyfile(path, code / path.name)
    return code


def export(source: Path, out: Path, work: Path, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """model.onnx and its data files in `out` from the Hugging Face folder `source`; what the exporter reports
    (its last line: the layers owning a cache, the PLE's own file, seconds)."""
    code = exporter_code(work)
    tail = exporter_envs.run(exporter_envs.GENAI, MODULE, [str(source), str(out)], progress, cwd=code)
    made: dict[str, Any] = json.loads(tail[-1])
    # The trace folds the tied lm_head into a transposed copy of the embedding, as optimum's export does: named as
    # on that path, so the recipes tie the pair (int4: one 4-bit table for both). The fp32 file keeps the copy:
    # onnxruntime prepacks a MatMul's constant weight into a copy of its own whatever the file holds (a Transpose
    # or a FusedMatMul transB reading the embedding measured the same peak), so storing it once saves disk only.
    name_tied_lm_head(out / "model.onnx")
    bypass_identities(out / "model.onnx")
    return made
