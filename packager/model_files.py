"""The model files a user names, read and checked before any work: JSON, safetensors headers, a tokenizer, an ONNX
file and its external data, and an ONNX graph's inputs and outputs. Each problem is refused with exit 5 naming the
file and the fix. The source and export stages, inspect, the adapter reader and the bundle reader share them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx

from packager.errors import ExitCode, PackagerError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


def bad_input(message: str) -> PackagerError:
    return PackagerError(message, ExitCode.BAD_INPUT)


def hash_files(root: Path, files: list[Path]) -> str:
    """sha256 over each file's path (relative to root) and content, in a stable order."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_json(path: Path, fix: str) -> Any:
    """A JSON file the user gave (a config.json, a bundle's manifest.json); exit 5 naming it, and
    ending with `fix`, when it cannot be read or parsed (nesting too deep for the parser included)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise bad_input(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); {fix}.") from None
    except RecursionError:
        raise bad_input(f"{path}: JSON nested too deeply for packager to read; {fix}.") from None
    except UnicodeDecodeError:
        raise bad_input(f"{path}: not UTF-8 text, so not JSON; {fix}.") from None
    except OSError as e:
        raise bad_input(f"{path}: cannot read it ({e.strerror or e}); check its permissions.") from None


def check_safetensors(path: Path) -> None:
    """The header parses and every tensor's bytes lie inside the file: a truncated download or a
    corrupt file is named here, not deep inside the exporter."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length <= 0 or 8 + length > size:
                raise ValueError(f"its header claims {length} bytes of a {size}-byte file")
            header = json.loads(f.read(length))
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except OSError as e:
        raise bad_input(f"{path}: cannot read it ({e.strerror or e}); check its permissions.") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        raise bad_input(f"{path}: corrupt safetensors ({e}); re-download or re-save the weights.") from None
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise bad_input(f"{path}: truncated safetensors (the tensors need {needed} bytes, the file has {size}); "
                        "re-download the weights.")


def check_tokenizer(path: Path) -> None:
    """The tokenizer loads as the device loads it (the `tokenizers` library): a malformed one is named
    here, rather than exported as a model without a tokenizer, fed random ids and blamed on them."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return  # the export needs it too, and says how to install it
    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises bare Exceptions: a parse error, a missing field, an I/O error
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = reason if len(reason) <= 200 else reason[:200] + "..."
        raise bad_input(f"{path}: cannot load the tokenizer ({reason}); fix or remove the file.") from None


def external_data_files(model_path: Path, model: onnx.ModelProto) -> list[Path]:
    """The external data files an ONNX model references, each checked to lie inside its folder (the
    folder of the file itself, when `model_path` is a symlink) and to hold its tensors' bytes. Each
    is returned as that folder / its location, the name the model reads it by."""
    folder = model_path.resolve().parent
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or folder not in target.parents:
            raise bad_input(f"{model_path}: external data {location!r} points outside the model's folder, so packager "
                            "will not read it; keep the data file beside the model.")
        if not target.is_file():
            raise bad_input(f"{model_path}: external data file {location!r} is missing; copy it next to the model.")
        end = _byte_count(model_path, tensor, info, "offset") + _byte_count(model_path, tensor, info, "length")
        if end > target.stat().st_size:
            raise bad_input(f"{model_path}: external data file {location!r} is truncated (tensor {tensor.name!r} "
                            f"ends at byte {end}, the file has {target.stat().st_size}); copy the complete file.")
        files.add(folder / location)
    return sorted(files)


def _byte_count(model_path: Path, tensor: onnx.TensorProto, info: dict[str, str], key: str) -> int:
    """A tensor's external data `offset` or `length`: a whole number of bytes, 0 or more (0 when absent)."""
    value = info.get(key, "0")
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise bad_input(f"{model_path}: tensor {tensor.name!r} gives its external data {key} as {value!r}, which is "
                        "not a byte count (a whole number, 0 or more); re-export the model.")
    return count


def read_onnx(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """An ONNX file the user named (a symlink: the file it points to), without its weights, and the
    external data files it reads; refused (exit 5) unless it is a readable, non-empty model whose
    data lies beside it. package, check and inspect all take models through here."""
    try:
        model = onnx.load(path, load_external_data=False)
    except OSError as e:
        raise bad_input(f"{path}: cannot read it ({e.strerror or e}); check its permissions.") from None
    except Exception as e:  # protobuf raises DecodeError and friends
        raise bad_input(f"{path}: not a valid ONNX model ({type(e).__name__}); re-export or re-download it.") from None
    if not model.graph.node:
        raise bad_input(f"{path}: the ONNX graph is empty; re-export the model.")
    return model, [path.resolve(), *external_data_files(path, model)]


def existing(spec: str) -> Path:
    """MODEL's path, which must exist (checked up front for each of several models, before any work)."""
    if not spec.strip():
        raise bad_input("MODEL is empty; pass a Hugging Face folder, an .onnx file or sample:minilm.")
    path = Path(spec).expanduser()
    if not path.exists():
        raise bad_input(f"{spec}: no such file or folder; check the path (or use sample:minilm).")
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def signature(model_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Graph inputs (initializers excluded) and outputs as name, dtype and shape (None or a dim name where open)."""
    model = onnx.load(model_path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(v: onnx.ValueInfoProto, kind: str) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        if t.elem_type not in onnx.TensorProto.DataType.values():
            raise PackagerError(f"model {kind} {v.name!r} has element type {t.elem_type}, which no ONNX "
                                "version defines; re-export the model.", ExitCode.BAD_INPUT)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "unknown"
        return {"name": v.name, "dtype": dtype, "shape": dims}

    return ([describe(v, "input") for v in model.graph.input if v.name not in initializers],
            [describe(v, "output") for v in model.graph.output])
