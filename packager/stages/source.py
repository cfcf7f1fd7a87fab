"""source: resolve what the user named into a model on disk, refuse what is not one, hash it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from packager import adapter as lora
from packager import decoder_config
from packager.context import Context, Source
from packager.model_files import (
    PICKLE_SUFFIXES,
    check_safetensors,
    check_tokenizer,
    existing,
    hash_files,
    read_json,
    read_onnx,
)
from packager.model_files import bad_input as _bad  # refusals of the user's files: exit 5
from packager.names import derive_name
from packager.runtimes import runtime_for
from packager.samples import resolve_adapter_sample, resolve_sample

# Architectures by suffix -> optimum export task. Decoders export with their KV cache as inputs
# and outputs (the device loop carries it); seq2seq comes with a later issue.
DECODER_TASK = "text-generation-with-past"
TASKS = {
    "ForCausalLM": DECODER_TASK,
    "LMHeadModel": DECODER_TASK,
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


def task_for(architectures: list[str], where: Path, model_type: str = "", e_class: bool = False) -> tuple[str, str]:
    """The export task for the first architecture in config.json (local folders cannot auto-infer it); an E-class
    model's (Gemma 3n, Gemma 4) is its text decoder's, whether the folder holds it alone or beside its encoders."""
    if not architectures:
        raise _bad(f"{where}: config.json has no `architectures` list, so the export task is unknown; "
                   "add the model class name (e.g. \"BertModel\") to config.json.")
    arch = architectures[0]
    if e_class:
        return DECODER_TASK, arch
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
    task, arch = task_for(config.get("architectures") or [], path, str(config.get("model_type", "")),
                          bool(decoder_config.e_type(config)))
    if problem := decoder_config.soft_token_problem(config):
        raise _bad(f"{config_path}: {problem}")
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


def _onnx_file(path: Path) -> Source:
    _, files = read_onnx(path)
    # Paths relative to the folder of the file itself: a symlink's own folder may be anywhere.
    return Source("onnx", path, derive_name(path.stem), tuple(files), hash_files(files[0].parent, files))


def resolve(spec: str, name: str | None = None, allow_pickle: bool = False) -> Source:
    """A Hugging Face folder or an .onnx file (a folder holding exactly one), by its absolute path: the steps that
    read it run in other folders (the genai builder's child takes a relative folder for a hub id)."""
    path = existing(spec).absolute()
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
    runtime_for(ctx.profile).check_source(ctx.profile, ctx.source.architecture)
