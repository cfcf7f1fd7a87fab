"""export: turn the source into an fp32 ONNX reference model, and describe its inputs and outputs.

Hugging Face folders go through optimum-onnx's exporter (the task comes from
config.architectures, since local folders cannot auto-infer it); .onnx files are copied with
their external data. The opset is capped by what the target's runtime implements.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import onnx

from packager import __version__
from packager.context import Component, Context
from packager.errors import ExitCode, PackagerError
from packager.recipes import parse_recipe, recipe_label
from packager.stages.source import PICKLE_SUFFIXES

# The highest opset the exporter supports: optimum-onnx 0.1.0 calls torch.onnx.export(dynamo=False), whose
# TorchScript exporter stops at 20 (torch 2.13: ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET). It accepts 21-23 but warns
# they are "not supported" and only restamps graphs built by its opset-20 symbolics (checked on a tiny BERT and
# Llama: node for node the same graph at 20 and 21), which would be wrong for operators changed after 20
# (GroupNormalization-21). Capped below by the target runtime's opset (profile runtime.max_opset).
DEFAULT_OPSET = 20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TOKENIZER_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


def _quiet() -> contextlib.ExitStack:
    """Silence the exporters' chatter (and keep stdout clean for --json)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("transformers", "optimum", "torch", "root"):
        logger = logging.getLogger(None if name == "root" else name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def _export_hf(ctx: Context, out: Path) -> None:
    assert ctx.source is not None
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the model configs)
        from optimum.exporters.onnx import main_export
    except ImportError:
        raise PackagerError(
            "exporting a Hugging Face folder needs the export stack (torch, transformers, optimum-onnx), "
            "which is not installed; run: pip install 'packager[hf]' (or export to .onnx elsewhere).",
            ExitCode.MISSING_DEPENDENCY,
        ) from None
    opset = export_opset(ctx)
    folder = _weights_only_copy(ctx.source.path, ctx.work_dir / "unpickled") if ctx.source.pickled else ctx.source.path
    if ctx.source.adapter is not None:
        folder = _merged(ctx, folder)
    with _quiet():
        try:
            main_export(str(folder), str(out), task=ctx.source.task, opset=opset,
                        local_files_only=True, do_validation=False, device="cpu")
        except Exception as e:
            raise PackagerError(
                f"the exporter failed on {ctx.source.path} ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                "check that the folder loads with transformers, or export it to .onnx yourself.",
                ExitCode.TOOL_FAILED,
            ) from e
        finally:
            if ctx.source.adapter is not None:
                shutil.rmtree(folder, ignore_errors=True)   # the merged weights: the export has them now
    if ctx.source.task in SEQ2SEQ_MODALITY:
        _keep_seq2seq_components(ctx, out)
    else:
        fold_transposed_weights(out / "model.onnx")
    if not (out / "tokenizer.json").is_file() and (out / "vocab.txt").is_file():
        # Slow-tokenizer folders: the device needs the fast tokenizer's single JSON file.
        from transformers import AutoTokenizer

        with _quiet():
            AutoTokenizer.from_pretrained(str(out), use_fast=True).backend_tokenizer.save(str(out / "tokenizer.json"))


# Encoder-decoder exports (optimum's *-with-past seq2seq tasks) write four graphs: the encoder, the
# decoder's first step (no cache), its later steps (with the cache) and both decoders merged into one
# graph that switches on `use_cache_branch` and holds their shared weights once. The bundle ships the
# encoder and the merged decoder: the two unmerged decoders are the same weights a second and a third
# time, which the device would hold twice over for nothing. Component name -> file in the export.
SEQ2SEQ_COMPONENTS = {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}
SEQ2SEQ_MERGED = ("decoder_model.onnx", "decoder_with_past_model.onnx")
SEQ2SEQ_MODALITY = {"automatic-speech-recognition-with-past": "audio", "image-to-text-with-past": "image",
                 "text2text-generation-with-past": "text"}   # task -> what the encoder reads


def _keep_seq2seq_components(ctx: Context, out: Path) -> None:
    """The encoder and the merged decoder, checked present; the unmerged decoders removed; the tokenizer
    copied from the source when the exporter did not write it (a PreTrainedTokenizerFast folder)."""
    assert ctx.source is not None
    missing = [f for f in SEQ2SEQ_COMPONENTS.values() if not (out / f).is_file()]
    if missing:
        raise PackagerError(f"the exporter wrote no {', '.join(missing)} for {ctx.source.path} ({ctx.source.task}); "
                            "check that the folder loads with transformers, or export it to .onnx yourself.",
                            ExitCode.TOOL_FAILED)
    # The unmerged decoders stay in the export (not in the bundle): the fp16 recipe converts them and
    # merges them again, as its converter cannot rewrite the merged graph's If branches.
    for name in SEQ2SEQ_COMPONENTS.values():
        fold_transposed_weights(out / name)
    for name in (*TOKENIZER_FILES, "preprocessor_config.json"):
        if not (out / name).is_file() and (ctx.source.path / name).is_file():
            shutil.copyfile(ctx.source.path / name, out / name)
    if not (out / "tokenizer.json").is_file():
        raise PackagerError(f"{ctx.source.path} has no tokenizer.json, which the device needs to turn the generated "
                            "tokens into text; save the model's fast tokenizer into the folder "
                            "(tokenizer.save_pretrained).", ExitCode.BAD_INPUT)


def fold_transposed_weights(path: Path) -> None:
    """Give a MatMul fed by Transpose(weight) the transposed weight itself, as a constant.

    Applied to every reference model (exported, or an .onnx given). optimum writes a tied embedding /
    lm_head once when the two copies it exported are equal (with `accelerate` installed), and feeds
    the lm_head's MatMul a Transpose of the embedding table: it does so for checkpoints stored in fp32
    (a merged LoRA adapter's, a tiny test model's), not for the fp16-stored sample:tiny-llama. The
    quantizers only quantize a MatMul whose weight is a constant, and the int4 recipe keeps a tied pair
    as one 4-bit weight only when it sees both copies: folded, the graph is the one every recipe
    expects. The runtime folds that Transpose at load anyway (constant folding), so the memory at run
    time is the same; the fp32 file holds the copy it would have held without the deduplication."""
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folds = [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in initializers
             and len(initializers[n.input[0]].dims) == 2 and n.output[0] not in {o.name for o in graph.output}
             and all(c.op_type == "MatMul" for c in consumers.get(n.output[0], []))
             and all(list(a.ints) in ([], [1, 0]) for a in n.attribute if a.name == "perm")]
    if not folds:
        return
    locations = sorted({e.value for i in graph.initializer for e in i.external_data if e.key == "location"})
    folded = {n.output[0]: n.input[0] for n in folds}   # output names are unique (SSA); node names need not be
    model = onnx.load(path)   # with its external data: everything in memory, rewritten below
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for output, weight in folded.items():
        table = onnx.numpy_helper.to_array(initializers[weight])
        graph.initializer.append(onnx.numpy_helper.from_array(table.T.copy(), output))
    kept = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
    del graph.node[:]
    graph.node.extend(kept)
    for location in locations:
        (path.parent / location).unlink(missing_ok=True)
    if locations:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=locations[0])
    else:
        onnx.save(model, path)


def _merged(ctx: Context, folder: Path) -> Path:
    """The base folder with the LoRA adapter merged into its weights, in the run's work dir (removed
    with it): what the exporter reads."""
    from packager.adapter import merge

    assert ctx.source is not None and ctx.source.adapter is not None
    dest = ctx.work_dir / "merged"
    with _quiet():
        try:
            merge(folder, ctx.source.adapter, dest, ctx.source.merge_method)
        except PackagerError:
            raise
        except Exception as e:
            raise PackagerError(
                f"merging the adapter {ctx.source.adapter.path} into {ctx.source.path} failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}); check that the adapter was trained on this base.",
                ExitCode.TOOL_FAILED,
            ) from e
    return dest


def _weights_only_copy(folder: Path, dest: Path) -> Path:
    """The folder with its pickled weights re-saved as safetensors, loaded by torch's weights-only
    unpickler, which refuses anything but tensors and plain containers (no code runs)."""
    import pickle

    import torch
    from safetensors.torch import save_file

    dest.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix in PICKLE_SUFFIXES:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PackagerError(f"{f}: torch's weights-only loader refused it ({first[:200]}); it holds more than "
                                    "tensors, or is damaged: get safetensors weights for this model.",
                                    ExitCode.BAD_INPUT) from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise PackagerError(f"{f}: not a state dict of tensors; get safetensors weights for this model.",
                                    ExitCode.BAD_INPUT)
            tensors.update(state)
        elif f.is_file():
            shutil.copyfile(f, dest / f.name)
    # Tied weights share storage, which safetensors refuses: each gets its own copy.
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"))
    return dest


def _copy_onnx(ctx: Context, out: Path) -> None:
    assert ctx.source is not None
    model = onnx.load(ctx.source.path, load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > ctx.profile.runtime.max_opset:
        raise PackagerError(
            f"{ctx.source.path}: the model uses ai.onnx opset {opset}, but {ctx.profile.runtime.package} "
            f"{ctx.profile.runtime.version} on {ctx.profile.name} implements up to {ctx.profile.runtime.max_opset}; "
            "re-export it with a lower opset.",
            ExitCode.BAD_INPUT,
        )
    folder = ctx.source.path.resolve().parent
    for f in ctx.source.files:
        dest = out / ("model.onnx" if f == ctx.source.path.resolve() else f.relative_to(folder))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    try:
        onnx.checker.check_model(str(out / "model.onnx"))
    except Exception as e:  # ValidationError, or protobuf errors from a damaged file
        raise PackagerError(f"{ctx.source.path}: the ONNX model is invalid ({str(e).splitlines()[0][:300]}); "
                            "re-export it.", ExitCode.BAD_INPUT) from None


def signature(model_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Graph inputs (initializers excluded) and outputs as name, dtype and shape (None or a dim name where open)."""
    model = onnx.load(model_path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "unknown"
        return {"name": v.name, "dtype": dtype, "shape": dims}

    return ([describe(v) for v in model.graph.input if v.name not in initializers],
            [describe(v) for v in model.graph.output])


def _max_length(folder: Path) -> int:
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length"),
                      ("config.json", "max_position_embeddings")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            value = int(json.loads((folder / name).read_text(encoding="utf-8"))[key])
            if 0 < value < 1_000_000:
                return value
    return 512


def _eos_token_ids(folder: Path) -> list[int]:
    """End-of-sequence ids from generation_config.json, else config.json (an int or a list)."""
    for name in ("generation_config.json", "config.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            value = json.loads((folder / name).read_text(encoding="utf-8"))["eos_token_id"]
            ids = value if isinstance(value, list) else [value]
            if ids and all(isinstance(i, int) for i in ids):
                return ids
    return []


def _decoder_io(ctx: Context, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A decoder exported with past: its KV cache layout, for the device's generation loop."""
    assert ctx.source is not None
    past = [i for i in inputs if i["name"].startswith("past_key_values.")]
    _, heads, _, head_dim = past[0]["shape"]
    return {
        "kind": "decoder",
        "inputs": inputs,
        "outputs": outputs,
        "checked_outputs": ["logits"],
        "primary_outputs": ["logits"],
        "tokenizer": "model/tokenizer.json",
        "max_length": _max_length(ctx.source.path),
        "eos_token_ids": _eos_token_ids(ctx.source.path),
        "kv": {"layers": len(past) // 2, "heads": heads, "head_dim": head_dim, "dtype": past[0]["dtype"]},
    }


def _config_value(config: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` set in config.json, at its top level or in its decoder's section."""
    for section in (config, config.get("decoder") or {}):
        for key in keys:
            if section.get(key) is not None:
                return section[key]
    return None


def _preprocess(ctx: Context, export_dir: Path, modality: str, config: dict[str, Any]) -> dict[str, Any]:
    """What the device does to raw input before the encoder (run.py's audio_features, image_pixels)."""
    path = export_dir / "preprocessor_config.json"
    pre = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if modality == "audio":
        return {"sampling_rate": int(pre.get("sampling_rate", 16000)), "n_fft": int(pre.get("n_fft", 400)),
                "hop_length": int(pre.get("hop_length", 160)),
                "feature_size": int(pre.get("feature_size", config.get("num_mel_bins", 80))),
                "n_samples": int(pre.get("n_samples", 480000)), "padding_value": float(pre.get("padding_value", 0.0))}
    if modality == "image":
        encoder = config.get("encoder") or {}
        side = int(encoder.get("image_size", 224))
        size = pre.get("size") or {}
        return {"height": int(size.get("height", side)), "width": int(size.get("width", side)),
                "rescale_factor": float(pre.get("rescale_factor", 1 / 255)),
                "mean": [float(v) for v in pre.get("image_mean", [0.5, 0.5, 0.5])],
                "std": [float(v) for v in pre.get("image_std", [0.5, 0.5, 0.5])],
                "channels": int(encoder.get("num_channels", 3))}
    return {}


def _seq2seq_io(ctx: Context, export_dir: Path) -> dict[str, Any]:
    """An encoder-decoder: each component's inputs and outputs, the decoder's KV cache (its own and the
    cross-attention's), the decoder's start tokens and what the encoder's raw input needs first."""
    assert ctx.source is not None
    config = json.loads((ctx.source.path / "config.json").read_text(encoding="utf-8"))
    components = {}
    for name, file in SEQ2SEQ_COMPONENTS.items():
        inputs, outputs = signature(export_dir / file)
        components[name] = {"export": file, "inputs": inputs, "outputs": outputs}
    decoder_inputs = components["decoder"]["inputs"]
    past = [i for i in decoder_inputs if i["name"].startswith("past_key_values.")]
    own = [i for i in past if ".encoder." not in i["name"]]
    _, heads, _, head_dim = own[0]["shape"]
    modality = SEQ2SEQ_MODALITY[ctx.source.task]
    start = _config_value(config, "decoder_start_token_id")
    if start is None:
        raise PackagerError(f"{ctx.source.path}/config.json has no decoder_start_token_id, so the decoder cannot "
                            "start; add it (the token generation starts from).", ExitCode.BAD_INPUT)
    positions = _config_value(config, "max_target_positions", "n_positions", "max_position_embeddings")
    components["decoder"]["merges"] = list(SEQ2SEQ_MERGED)
    return {
        "kind": "seq2seq",
        "modality": modality,
        "components": components,
        "inputs": components["encoder"]["inputs"],
        "outputs": components["decoder"]["outputs"],
        "checked_outputs": ["logits"],
        "primary_outputs": ["logits"],
        "tokenizer": "model/tokenizer.json",
        "max_length": int(positions) if positions else _max_length(ctx.source.path),
        "eos_token_ids": _eos_token_ids(ctx.source.path),
        "decoder_start_ids": [int(start)],
        "kv": {"layers": len(own) // 2, "heads": heads, "head_dim": head_dim, "dtype": own[0]["dtype"],
               "cross_attention_cached": len(past) > len(own)},
        "preprocess": _preprocess(ctx, export_dir, modality, config),
    }


def describe_io(ctx: Context, export_dir: Path) -> dict[str, Any]:
    if ctx.source is not None and ctx.source.task in SEQ2SEQ_MODALITY:
        return _seq2seq_io(ctx, export_dir)
    inputs, outputs = signature(export_dir / "model.onnx")
    names = [o["name"] for o in outputs]
    input_names = {i["name"] for i in inputs}
    has_tokenizer = (export_dir / "tokenizer.json").is_file()
    if has_tokenizer and "input_ids" in input_names and "logits" in names and \
            any(n.startswith("past_key_values.") for n in input_names):
        return _decoder_io(ctx, inputs, outputs)
    text = has_tokenizer and input_names <= TOKENIZER_INPUTS
    # Sentence-transformers exports carry the pooled, normalised embedding: that is the answer.
    primary = ["sentence_embedding"] if "sentence_embedding" in names else names
    io_spec: dict[str, Any] = {
        "kind": "text" if text else "tensor",
        "inputs": inputs,
        "outputs": outputs,
        "checked_outputs": primary,
        "primary_outputs": primary,
    }
    if text:
        assert ctx.source is not None
        io_spec["tokenizer"] = "model/tokenizer.json"
        io_spec["max_length"] = _max_length(ctx.source.path)
    return io_spec


# What the export's output depends on besides the source: these packages' versions (and packager's
# own, and this file's code), so that an upgrade re-exports instead of reusing an older export.
EXPORT_TOOLS = ("optimum", "optimum-onnx", "torch", "transformers", "tokenizers", "onnx", "safetensors")


def export_opset(ctx: Context) -> int:
    return min(DEFAULT_OPSET, ctx.profile.runtime.max_opset)


def cache_inputs(ctx: Context) -> dict[str, Any]:
    """The export's cache key: everything its output depends on, and nothing target-specific but the opset."""
    assert ctx.source is not None
    versions = {}
    for package in EXPORT_TOOLS:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "stage": "export",
        "source": {"kind": ctx.source.kind, "sha256": ctx.source.sha256, "task": ctx.source.task,
                   "pickled": ctx.source.pickled},
        # A merged adapter changes the weights: its own hash, the merge and the merge's code are part of the key.
        **({"adapter": {"sha256": ctx.source.adapter.sha256, "merge": ctx.source.merge_method,
                        "merge_code": hashlib.sha256(Path(lora_code()).read_bytes()).hexdigest()}}
           if ctx.source.adapter is not None else {}),
        "opset": export_opset(ctx),
        "tools": versions,
        "packager": {"version": __version__, "export_code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()},
        "python": ".".join(platform.python_version_tuple()[:2]),
    }


def lora_code() -> str:
    from packager import adapter

    return str(adapter.__file__)


def _export_hf_cached(ctx: Context, out: Path) -> None:
    """The Hugging Face export, from the stage cache when an entry for the same inputs is there."""
    if ctx.stage_cache is None:
        ctx.cache["export"] = "off"
    else:
        inputs = cache_inputs(ctx)
        fetched = ctx.stage_cache.fetch("export", inputs, out)
        if fetched.status == "hit" and fetched.data and isinstance(fetched.data.get("io"), dict):
            ctx.cache["export"] = "hit"
            ctx.io = fetched.data["io"]
            return
        if fetched.status == "hit":  # an entry without its io description: built by a broken run
            shutil.rmtree(out)
            fetched.status, fetched.problem = "corrupt", "no io description"
        ctx.cache["export"] = fetched.status
        if fetched.status == "corrupt":
            ctx.cache_notes.append(f"export: the cached export was damaged ({fetched.problem}); removed it and "
                                   "exported again")
        elif fetched.problem:
            ctx.cache_notes.append(f"export: {fetched.problem}")
    out.mkdir()
    _export_hf(ctx, out)
    # As a cache hit reads it back: a run that exported and one that reused the export write the same manifest.
    ctx.io = json.loads(json.dumps(describe_io(ctx, out)))
    if ctx.stage_cache is not None:
        problem = ctx.stage_cache.store("export", cache_inputs(ctx), out, {"io": ctx.io})
        if problem:
            ctx.cache_notes.append(f"export: {problem}")


def run(ctx: Context) -> None:
    assert ctx.source is not None
    out = ctx.work_dir / "reference"
    if ctx.source.kind == "huggingface":
        _export_hf_cached(ctx, out)
    else:
        out.mkdir()
        _copy_onnx(ctx, out)
        fold_transposed_weights(out / "model.onnx")
        ctx.io = describe_io(ctx, out)
    ctx.reference_model = out / "model.onnx"
    ctx.tokenizer_files = [out / n for n in TOKENIZER_FILES if (out / n).is_file()] \
        if ctx.io["kind"] in ("text", "decoder", "seq2seq") else []
    if ctx.io["kind"] in ("decoder", "seq2seq"):
        ctx.context = decoder_context(ctx)
    if ctx.io["kind"] == "seq2seq":
        if ctx.eval_cases:   # before any recipe runs
            raise PackagerError(f"--eval {ctx.eval_file}: eval cases judge decoder LLMs and text encoders, not an "
                                "encoder-decoder's generations yet; drop --eval.", ExitCode.BAD_INPUT)
        # In SEQ2SEQ_COMPONENTS' order (encoder, then decoder), whatever order a cached io was stored in.
        ctx.components = [Component(name, out / c["export"], parts=tuple(out / m for m in c.get("merges", [])))
                          for name, c in sorted(ctx.io["components"].items(),
                                                key=lambda kv: list(SEQ2SEQ_COMPONENTS).index(kv[0]))]
        ctx.reference_model = ctx.components[-1].reference   # the decoder: what single-model readers see
        assign_component_recipes(ctx)
    elif not ctx.recipe_explicit:
        ctx.recipe_name = ctx.profile.recipe_for(ctx.io["kind"])
    elif set(parse_recipe(ctx.recipe_name)) != {""}:
        raise PackagerError(f"--recipe {ctx.recipe_name} gives components their own recipes, but "
                            f"{ctx.source.path} is a single graph; give one recipe (e.g. --recipe int4).",
                            ExitCode.USAGE)


def assign_component_recipes(ctx: Context) -> None:
    """Each component's recipe: --recipe R for all, NAME=R per component (the others keep the profile's), or
    the profile's: `recipe` for an encoder, `decoder_recipe` for a decoder, as for single-graph models.
    ctx.recipe_name becomes the label (one name when all agree)."""
    chosen = parse_recipe(ctx.recipe_name) if ctx.recipe_explicit else {}
    names = [c.name for c in ctx.components]
    unknown = [n for n in chosen if n and n not in names]
    if unknown:
        raise PackagerError(f"--recipe {ctx.recipe_name} names {', '.join(unknown)}, which this model does not have; "
                            f"its components are {', '.join(names)}.", ExitCode.USAGE)
    for c in ctx.components:
        default = ctx.profile.recipe_for("decoder" if c.name == "decoder" else "text")
        c.recipe_name = chosen.get(c.name) or chosen.get("") or default
    ctx.recipe_name = recipe_label({c.name: c.recipe_name for c in ctx.components})


def decoder_context(ctx: Context) -> int:
    """The KV cache the deployment holds: --context, else the profile's, within the model's positions."""
    positions = int(ctx.io["max_length"])
    if ctx.context is not None and ctx.context > positions:
        raise PackagerError(f"--context {ctx.context} is longer than the model's {positions} positions "
                            "(max_position_embeddings); ask for at most that.", ExitCode.USAGE)
    return ctx.context or min(ctx.profile.budget.context, positions)
