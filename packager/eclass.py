"""The E-class exporter's host side (issue 20): runs runtimes/eclass_export.py in the `genai` exporter environment
(transformers 5.x has Gemma 3n and Gemma 4), a copy of the file beside it: packager itself is not installed there."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from packager import decoder_config, exporter_envs
from packager.model_files import TOKENIZER_FILES
from packager.onnx_rewrite import bypass_identities, name_tied_lm_head
from packager.runtimes import ECLASS_EXPORTER_FILES

MODULE = "eclass_export"   # packager/runtimes/eclass_export.py, never imported here (it imports torch)
# model.onnx's metadata entry where a multimodal checkpoint's graph takes soft tokens (decoder_config.SOFT_INPUTS):
# their width and the pad token the loop puts at their positions of input_ids; the decoder family's io.soft
SOFT_KEY = "packager.soft"


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
    if made.get("soft_tokens"):
        progress("the decoder takes the vision and audio encoders' soft tokens (inputs "
                 f"{' and '.join(decoder_config.SOFT_INPUTS)})")
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
    if made.get("soft_tokens"):
        record_soft(out / "model.onnx", int(made["pad_token_id"]), made.get("encoders") or {})
    return made


def record_soft(path: Path, pad_token_id: int, encoders: dict[str, Any] | None = None) -> None:
    """The soft tokens' description (io.soft: the inputs, their width, the pad token, and the encoders that make
    them: runtimes/eclass_encoders.export_checkpoint's) as the metadata of the model at `path`, which takes them; its
    external data is neither read nor moved."""
    model = onnx.load(path, load_external_data=False)
    tokens = next(i for i in model.graph.input if i.name == decoder_config.SOFT_INPUTS[0])
    soft = {"inputs": list(decoder_config.SOFT_INPUTS), "hidden": tokens.type.tensor_type.shape.dim[2].dim_value,
            "pad_token_id": pad_token_id, **({"encoders": encoders} if encoders else {})}
    model.metadata_props.add(key=SOFT_KEY, value=json.dumps(soft))
    onnx.save(model, path)


def soft_description(path: Path) -> dict[str, Any] | None:
    """io.soft of the model at `path` (record_soft's), None where it takes no soft tokens."""
    model = onnx.load(path, load_external_data=False)
    found = next((json.loads(p.value) for p in model.metadata_props if p.key == SOFT_KEY), None)
    return found if isinstance(found, dict) else None
