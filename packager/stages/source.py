"""source: resolve what the user named into a model on disk, refuse what is not one, hash it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from packager import adapter as lora
from packager.context import Context, Source
from packager.errors import ExitCode, PackagerError
from packager.names import derive_name
from packager.samples import resolve_adapter_sample, resolve_sample

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
# Architectures by suffix -> optimum export task. Decoders export with their KV cache as inputs
# and outputs (the device loop carries it); seq2seq comes with a later issue.
TASKS = {
    "ForCausalLM": "text-generation-with-past",
    "LMHeadModel": "text-generation-with-past",
    "Model": "feature-extraction",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForMaskedLM": "fill-mask",
    "ForQuestionAnswering": "question-answering",
}
# Encoder-decoder models: the task depends on what the encoder reads, which the model type says.
SEQ2SEQ_TASKS = {
    "whisper": "automatic-speech-recognition-with-past",
    "vision-encoder-decoder": "image-to-text-with-past",
    "t5": "text2text-generation-with-past",
    "mt5": "text2text-generation-with-past",
    "bart": "text2text-generation-with-past",
    "mbart": "text2text-generation-with-past",
    "marian": "text2text-generation-with-past",
}
SEQ2SEQ_SUFFIXES = ("ForConditionalGeneration", "ForSpeechSeq2Seq", "ForVision2Seq", "VisionEncoderDecoderModel")


def _bad(message: str) -> PackagerError:
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


def task_for(architectures: list[str], where: Path, model_type: str = "") -> tuple[str, str]:
    """The export task for the first architecture in config.json (local folders cannot auto-infer it)."""
    if not architectures:
        raise _bad(f"{where}: config.json has no `architectures` list, so the export task is unknown; "
                   "add the model class name (e.g. \"BertModel\") to config.json.")
    arch = architectures[0]
    if arch.endswith(SEQ2SEQ_SUFFIXES):
        if model_type in SEQ2SEQ_TASKS:
            return SEQ2SEQ_TASKS[model_type], arch
        raise _bad(f"{where}: {arch} ({model_type or 'no model_type'}) is an encoder-decoder model of a type "
                   f"packager does not package ({', '.join(sorted(SEQ2SEQ_TASKS))} are supported); export it to "
                   ".onnx yourself and package the files.")
    for suffix, task in sorted(TASKS.items(), key=lambda kv: -len(kv[0])):
        if arch.endswith(suffix):
            return task, arch
    raise _bad(f"{where}: unknown architecture {arch!r} in config.json; export it to .onnx yourself "
               "and package the .onnx file.")


def _hf_folder(path: Path, allow_pickle: bool) -> Source:
    config_path = path / "config.json"
    config = read_json(config_path, "fix or replace the file")
    if not isinstance(config, dict):
        raise _bad(f"{config_path}: not a model configuration (expected a JSON object).")
    task, arch = task_for(config.get("architectures") or [], path, str(config.get("model_type", "")))
    weights = sorted(path.glob("*.safetensors"))
    pickled = False
    if weights:
        for w in weights:
            check_safetensors(w)
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise _bad(f"{path}: no *.safetensors weights next to config.json.")
        if not allow_pickle:
            raise _bad(f"{path}: only pickled weights ({', '.join(pickles)}), which can run code when loaded; "
                       "convert them to safetensors, or pass --allow-pickle to load them with torch's "
                       "weights-only loader.")
        pickled = True
    if (path / "tokenizer.json").is_file():
        check_tokenizer(path / "tokenizer.json")
    files = [p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts]
    name = path.name if path.name != "model" else path.parent.name
    return Source("huggingface", path, derive_name(name), tuple(sorted(files)),
                  hash_files(path, files), task=task, architecture=arch, pickled=pickled)


def read_json(path: Path, fix: str) -> Any:
    """A JSON file the user gave (a config.json, a bundle's manifest.json); exit 5 naming it, and
    ending with `fix`, when it cannot be read or parsed (nesting too deep for the parser included)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _bad(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); {fix}.") from None
    except RecursionError:
        raise _bad(f"{path}: JSON nested too deeply for packager to read; {fix}.") from None
    except UnicodeDecodeError:
        raise _bad(f"{path}: not UTF-8 text, so not JSON; {fix}.") from None
    except OSError as e:
        raise _bad(f"{path}: cannot read it ({e.strerror or e}); check its permissions.") from None


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
        raise _bad(f"{path}: cannot read it ({e.strerror or e}); check its permissions.") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        raise _bad(f"{path}: corrupt safetensors ({e}); re-download or re-save the weights.") from None
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise _bad(f"{path}: truncated safetensors (the tensors need {needed} bytes, the file has {size}); "
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
        raise _bad(f"{path}: cannot load the tokenizer ({reason}); fix or remove the file.") from None


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
            raise _bad(f"{model_path}: external data {location!r} points outside the model's folder, so packager "
                       "will not read it; keep the data file beside the model.")
        if not target.is_file():
            raise _bad(f"{model_path}: external data file {location!r} is missing; copy it next to the model.")
        end = _byte_count(model_path, tensor, info, "offset") + _byte_count(model_path, tensor, info, "length")
        if end > target.stat().st_size:
            raise _bad(f"{model_path}: external data file {location!r} is truncated (tensor {tensor.name!r} ends at "
                       f"byte {end}, the file has {target.stat().st_size}); copy the complete file.")
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
        raise _bad(f"{model_path}: tensor {tensor.name!r} gives its external data {key} as {value!r}, which is not a "
                   "byte count (a whole number, 0 or more); re-export the model.")
    return count


def read_onnx(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """An ONNX file the user named (a symlink: the file it points to), without its weights, and the
    external data files it reads; refused (exit 5) unless it is a readable, non-empty model whose
    data lies beside it. package, check and inspect all take models through here."""
    try:
        model = onnx.load(path, load_external_data=False)
    except OSError as e:
        raise _bad(f"{path}: cannot read it ({e.strerror or e}); check its permissions.") from None
    except Exception as e:  # protobuf raises DecodeError and friends
        raise _bad(f"{path}: not a valid ONNX model ({type(e).__name__}); re-export or re-download it.") from None
    if not model.graph.node:
        raise _bad(f"{path}: the ONNX graph is empty; re-export the model.")
    return model, [path.resolve(), *external_data_files(path, model)]


def _onnx_file(path: Path) -> Source:
    _, files = read_onnx(path)
    # Paths relative to the folder of the file itself: a symlink's own folder may be anywhere.
    return Source("onnx", path, derive_name(path.stem), tuple(files), hash_files(files[0].parent, files))


def resolve(spec: str, name: str | None = None, allow_pickle: bool = False) -> Source:
    """A Hugging Face folder or an .onnx file (a folder holding exactly one)."""
    path = existing(spec)
    if path.is_dir():
        if (path / "config.json").is_file():
            source = _hf_folder(path, allow_pickle)
        else:
            models = sorted(path.glob("*.onnx"))
            if len(models) != 1:
                what = "no config.json and no .onnx file" if not models else f"{len(models)} .onnx files"
                raise _bad(f"{path}: not a model folder ({what}); pass a Hugging Face folder with "
                           "config.json and safetensors, or one .onnx file.")
            source = _onnx_file(models[0])
    elif path.suffix == ".onnx":
        source = _onnx_file(path)
    elif path.suffix in PICKLE_SUFFIXES:
        raise _bad(f"{path}: a bare pickled checkpoint, with no config.json to say what model it is; put it in "
                   "a Hugging Face folder beside its config.json (and pass --allow-pickle), or export to .onnx.")
    else:
        raise _bad(f"{path}: not a model (expected a folder with config.json, or an .onnx file).")
    return _renamed(source, name) if name else source


def existing(spec: str) -> Path:
    """MODEL's path, which must exist (checked up front for each of several models, before any work)."""
    if not spec.strip():
        raise _bad("MODEL is empty; pass a Hugging Face folder, an .onnx file or sample:minilm.")
    path = Path(spec).expanduser()
    if not path.exists():
        raise _bad(f"{spec}: no such file or folder; check the path (or use sample:minilm).")
    return path


def _renamed(source: Source, name: str) -> Source:
    # --name comes checked (PackageOptions), a sample's name is packager's: derive_name keeps them.
    return replace(source, name=derive_name(name))


def with_adapter(source: Source, spec: str, name: str | None, allow_pickle: bool) -> Source:
    """The base model with a LoRA adapter to merge before export: read, checked against the base's
    weight names and shapes (headers only), and named <base>-<adapter> unless --name says otherwise."""
    if source.kind != "huggingface":
        raise _bad(f"--adapter merges a LoRA adapter into a Hugging Face folder's weights, and {source.path} is an "
                   "ONNX model; pass the base model's Hugging Face folder.")
    path = (resolve_adapter_sample(spec.removeprefix("sample:")) if spec.startswith("sample:")
            else Path(spec).expanduser())
    adapter = lora.read(path, allow_pickle)
    config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    base = None
    if source.pickled:
        base = {}
        for f in sorted(source.path.iterdir()):
            if f.suffix in PICKLE_SUFFIXES:
                base.update({k: tuple(v.shape) for k, v in lora._load_pickled(f).items()})
    adapter = lora.check(adapter, source.path, config, base)
    if name:
        bundle = source.name
    else:
        own = derive_name(adapter.name, "adapter")
        bundle = own if own.startswith(source.name) else derive_name(f"{source.name}-{own}")
    return replace(source, name=bundle, adapter=adapter, merge_method=lora.default_method())


def run(ctx: Context) -> None:
    if not ctx.model_spec.startswith("sample:"):
        ctx.source = resolve(ctx.model_spec, ctx.name, ctx.allow_pickle)
    else:
        sample_name = ctx.model_spec.removeprefix("sample:")
        path, sample = resolve_sample(sample_name)
        ctx.source = resolve(str(path), ctx.name or sample_name)
        if not (ctx.input_spec.shapes or ctx.input_spec.values):
            # Built-in tensor samples carry the shapes and values their signature leaves open.
            ctx.input_spec = replace(ctx.input_spec, shapes=dict(sample.shapes), values=dict(sample.values))
    if ctx.adapter:
        ctx.source = with_adapter(ctx.source, ctx.adapter, ctx.name, ctx.allow_pickle)
