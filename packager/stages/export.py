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
import math
import os
import platform
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager import __version__
from packager.context import Component, Context
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.graphs import all_graphs
from packager.recipes import parse_recipe, recipe_label
from packager.recipes.common import PROTO_LIMIT
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


# Above this much fp32 weight, the exporter runs in a child process: it holds the torch model and the
# graph it traces (a 1B model: 5 GB of fp32 weights, and more while torch.onnx writes them), and a child
# gives all of it back to the system when it ends, before the quantizer starts. Below it, in packager's
# own process: a child's interpreter spends about 8 s importing torch, transformers and optimum, longer
# than such a model's export, to hand back memory that is small beside the runtime's.
CHILD_EXPORT_BYTES = 2**30


def _export_hf(ctx: Context, out: Path) -> None:
    """optimum-onnx's exporter (in a child process for large models, CHILD_EXPORT_BYTES), reporting its
    progress (which layer is traced)."""
    assert ctx.source is not None
    opset = export_opset(ctx)
    folder = _weights_only_copy(ctx.source.path, ctx.work_dir / "unpickled") if ctx.source.pickled else ctx.source.path
    if ctx.source.adapter is not None:
        folder = _merged(ctx, folder)
    # torch.onnx's constant folding writes every Linear weight transposed, as a new tensor, while the
    # torch model still holds the original: twice the fp32 weights (a 1B model: 10.7 GiB at its peak).
    # Models too large for one protobuf are exported unfolded (MatMul(x, Transpose(W))), and
    # fold_transposed_weights folds those transposes from the files, a slice at a time; the few other
    # constant subgraphs (rotary tables, shapes) the runtime folds at load. Smaller models keep
    # torch's folding, and the export they always had.
    weights = fp32_weight_bytes(folder)
    seq2seq = ctx.source.task in SEQ2SEQ_MODALITY
    job = {"folder": str(folder), "out": str(out), "task": ctx.source.task, "opset": opset,
           "constant_folding": weights <= PROTO_LIMIT, "post_process": seq2seq}
    try:
        outcome = _run_export_child(ctx, job) if weights > CHILD_EXPORT_BYTES else _export_here(ctx, job)
    finally:
        if ctx.source.adapter is not None:
            shutil.rmtree(folder, ignore_errors=True)   # the merged weights: the export has them now
    if outcome.get("missing"):
        raise PackagerError(
            "exporting a Hugging Face folder needs the export stack (torch, transformers, optimum-onnx), "
            "which is not installed; run: pip install 'packager[hf]' (or export to .onnx elsewhere).",
            ExitCode.MISSING_DEPENDENCY,
        )
    if "error" in outcome:
        raise PackagerError(
            f"the exporter failed on {ctx.source.path} ({outcome['error']}); "
            "check that the folder loads with transformers, or export it to .onnx yourself.",
            ExitCode.TOOL_FAILED,
        )
    if seq2seq:
        _keep_seq2seq_components(ctx, out)
    else:
        fold_transposed_weights(out / "model.onnx", ctx.progress)
        name_tied_lm_head(out / "model.onnx")
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


def fp32_weight_bytes(folder: Path) -> int:
    """The model's weights in fp32, from its safetensors headers (shapes only, no weights read); 0 when
    there are none to read (pickled weights, which are small models' in practice)."""
    from packager.adapter import base_shapes

    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return 4 * sum(math.prod(shape) for shape in base_shapes(folder).values())
    return 0


def _run_export_child(ctx: Context, job: dict[str, Any]) -> dict[str, Any]:
    """Run _export_child(job) in a fresh interpreter; its outcome ({} when it exported). Its output
    goes to a log in the work folder, whose tail explains a crash."""
    import subprocess
    import sys

    read_fd, write_fd = os.pipe()
    log_path = ctx.work_dir / "export.log"
    root = str(Path(__file__).resolve().parents[2])   # the folder holding the packager package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "packager.stages.export", str(write_fd), json.dumps(job)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,), env=env)
    os.close(write_fd)
    outcome: dict[str, Any] = {}
    try:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as messages:
            for line in messages:
                kind, _, text = line.rstrip("\n").partition(" ")
                if kind == "progress":
                    ctx.progress(text)
                elif kind == "outcome":
                    outcome = json.loads(text)
        code = child.wait()
    except BaseException:   # an interrupt: the child goes too, at once
        child.kill()
        child.wait()
        raise
    if code != 0 and not outcome:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        why = (f"killed by signal {-code}{' (out of memory?)' if code == -9 else ''}" if code < 0
               else f"exit code {code}")
        outcome = {"error": f"the export process ended with {why}: {tail[0][:300]}"}
    return outcome


def _export_here(ctx: Context, job: dict[str, Any]) -> dict[str, Any]:
    """_export(job) in this process; its outcome ({} when it exported)."""
    outcome: dict[str, Any] = {}

    def say(kind: str, text: str) -> None:
        if kind == "progress":
            ctx.progress(text)
        elif kind == "outcome":
            outcome.update(json.loads(text))

    _export(job, say)
    return outcome


def _export_child(report_fd: int, job: dict[str, Any]) -> None:
    """The child's side: _export(job), telling the parent on `report_fd`."""
    report = os.fdopen(report_fd, "w", encoding="utf-8", buffering=1)
    _export(job, lambda kind, text: report.write(f"{kind} {text}\n"))


def _export(job: dict[str, Any], say: Callable[[str, str], object]) -> None:
    """main_export on the folder, saying which decoder layer the trace has reached ("progress TEXT") and
    how it ended ("outcome {json}", last: {} when it exported)."""

    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the model configs)
        import torch
        from optimum.exporters.onnx import main_export
    except ImportError:
        say("outcome", json.dumps({"missing": True}))
        return
    say("progress", "loading the weights")
    layers = 0
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        config = json.loads((Path(job["folder"]) / "config.json").read_text(encoding="utf-8"))
        layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    seen = 0

    def layer_reached(module: torch.nn.Module, args: Any) -> None:
        # The trace runs the model forward once: each decoder layer's entry is a step of it.
        nonlocal seen
        if type(module).__name__.endswith(("DecoderLayer", "Block")) and layers:
            seen += 1
            say("progress", f"tracing layer {(seen - 1) % layers + 1}/{layers}")
            if seen % layers == 0:
                say("progress", "writing the ONNX graph and its weights")

    hook = torch.nn.modules.module.register_module_forward_pre_hook(layer_reached)
    _stream_external_data_merge()
    try:
        with _quiet():
            # no_post_process: optimum's only post-processing of a single decoder is the deduplication of
            # tied weights, which loads the whole ONNX model (weights and all) beside the torch model and
            # writes the lm_head as Transpose(embedding table), which fold_transposed_weights then writes
            # out again as its own table: packager keeps a tied pair tied itself (recipes.int4). An
            # encoder-decoder needs it: it merges the two decoders into decoder_model_merged.onnx.
            main_export(job["folder"], job["out"], task=job["task"], opset=job["opset"],
                        local_files_only=True, do_validation=False, device="cpu",
                        no_post_process=not job.get("post_process", False),
                        do_constant_folding=job.get("constant_folding", True))
    except Exception as e:
        say("outcome", json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}))
        return
    finally:
        hook.remove()
    say("outcome", "{}")


def _stream_external_data_merge() -> None:
    """Make optimum's merge of torch.onnx's per-tensor files into one model.onnx_data stream, in this
    (child) process. optimum-onnx 0.1.0 (exporters/onnx/convert.py, export_pytorch) merges them with
    onnx.load(load_external_data=True) and onnx.save while it still holds the torch model: for a 1B model
    5 GB of torch weights and 6 GB of protobuf at once. Here its module's `onnx` is the real one but for
    load (the graph only) and save (each tensor's file appended to the one data file, a tensor at a time)."""
    import types

    from optimum.exporters.onnx import convert

    real = convert.onnx
    if getattr(real, "packager_streaming", False):
        return
    proxy: Any = types.ModuleType("onnx")  # onnx, with attributes of packager's set below
    proxy.__dict__.update(real.__dict__)
    proxy.packager_streaming = True

    def load(f: Any, *args: Any, load_external_data: bool = True, **kwargs: Any) -> onnx.ModelProto:
        model: onnx.ModelProto = real.load(f, *args, load_external_data=False, **kwargs)
        return model

    def save(model: onnx.ModelProto, f: Any, *args: Any, save_as_external_data: bool = False,
             location: str | None = None, size_threshold: int = 1024, **kwargs: Any) -> None:
        if not save_as_external_data or location is None:
            real.save(model, f, *args, save_as_external_data=save_as_external_data, location=location,
                      size_threshold=size_threshold, **kwargs)
            return
        merge_external_data(model, Path(f), location, size_threshold)

    proxy.load, proxy.save = load, save
    convert.onnx = proxy


def _tensors_with_data(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and Constant nodes' tensors, of the graph and its subgraphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                found.append(attr.t)
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += _tensors_with_data(g)
    return found


def merge_external_data(model: onnx.ModelProto, path: Path, location: str, size_threshold: int = 1024) -> None:
    """Save `model` (loaded without its external data) as `path` with every tensor's bytes in one file,
    `location`, beside it: each external tensor copied from its own file, and inline tensors over
    `size_threshold` bytes moved there, one at a time (tensors of 1 MiB and more page-aligned, as onnx
    aligns them). The files the tensors came from are left for the caller to remove."""
    folder = path.parent
    with open(folder / location, "wb") as data:
        for t in _tensors_with_data(model.graph):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                source = folder / info["location"]
                start = int(info.get("offset", 0))
                length = int(info["length"]) if "length" in info else source.stat().st_size - start
                if length >= 2**20:
                    data.write(b"\0" * (-data.tell() % 4096))
                offset = data.tell()
                with open(source, "rb") as src:
                    src.seek(start)
                    left = length
                    while left:   # 64 MiB at a time: a 1 GB embedding table is never read whole
                        chunk = src.read(min(left, 64 * 2**20))
                        if not chunk:
                            raise OSError(f"{source} ends before its tensor {t.name} does")
                        data.write(chunk)
                        left -= len(chunk)
            elif t.HasField("raw_data") and len(t.raw_data) > size_threshold:
                if len(t.raw_data) >= 2**20:
                    data.write(b"\0" * (-data.tell() % 4096))
                offset = data.tell()
                data.write(t.raw_data)
            else:
                continue
            t.ClearField("raw_data")
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(data.tell() - offset))):
                t.external_data.add(key=key, value=value)
    onnx.save(model, path)


def name_tied_lm_head(path: Path) -> None:
    """Name a tied lm_head's weight as optimum's deduplication (skipped: no_post_process) and then
    fold_transposed_weights named it: `<embedding table>_transposed`, last among the initializers.
    The exporter writes a tied lm_head as its own initializer, the embedding table transposed;
    optimum replaced it with Transpose(table), which the fold made a table again under that name.
    Only the name and the order change (the graph file; the weights stay where they are), so the
    reference, and every recipe's output, is what it was with the deduplication."""
    from packager.recipes.nbits import find_tied_embedding

    model = onnx.load(path, load_external_data=False)
    tied = find_tied_embedding(model, path.parent)
    if tied is None:
        return
    gather = next(n for n in model.graph.node if n.name == tied[0])
    head, name = tied[1], f"{gather.input[0]}_transposed"
    if head == name or any(i.name == name for i in model.graph.initializer):
        return
    index = next(i for i, t in enumerate(model.graph.initializer) if t.name == head)
    tensor = model.graph.initializer[index]
    moved = onnx.TensorProto()
    moved.CopyFrom(tensor)
    moved.name = name
    del model.graph.initializer[index]
    model.graph.initializer.append(moved)
    for node in model.graph.node:
        for i, value in enumerate(node.input):
            if value == head:
                node.input[i] = name
    onnx.save(model, path)


def fold_transposed_weights(path: Path, progress: Callable[[str], None] | None = None) -> None:
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
    if locations:
        _fold_external(model, path, folded, progress)
        return
    model = onnx.load(path)   # small: everything in memory, rewritten below
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    for output, weight in folded.items():
        table = onnx.numpy_helper.to_array(initializers[weight])
        graph.initializer.append(onnx.numpy_helper.from_array(table.T.copy(), output))
    _drop_transposes(graph, folded)
    onnx.save(model, path)


def _drop_transposes(graph: onnx.GraphProto, folded: dict[str, str]) -> None:
    """Remove the folded Transposes, and the weights that only they read (an external weight's bytes
    stay in its data file, unread)."""
    kept = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for g in all_graphs(graph) for n in g.node for i in n.input} | {o.name for o in graph.output}
    weights = set(folded.values())
    initializers = [t for t in graph.initializer if t.name in used or t.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


# Bytes of a transposed table written at a time: bounded memory whatever the table's size.
FOLD_CHUNK_BYTES = 64 * 2**20


def _fold_external(model: onnx.ModelProto, path: Path, folded: dict[str, str],
                   progress: Callable[[str], None] | None = None) -> None:
    """fold_transposed_weights for a model with external data (a 1B model's is 5 GB): each transposed
    table is appended to the weight's own data file, a slice at a time, read memory-mapped; nothing
    else is read or rewritten, and the graph is saved without its weights."""
    initializers = {i.name: i for i in model.graph.initializer}
    first = len(model.graph.initializer)
    for output, weight in folded.items():
        tensor = initializers[weight]
        info = {e.key: e.value for e in tensor.external_data}
        data_file = path.parent / info["location"]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        rows, cols = (int(d) for d in tensor.dims)
        table = np.memmap(data_file, dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=(rows, cols))
        with open(data_file, "ab") as f:
            f.seek(0, 2)
            offset = -(-f.tell() // 4096) * 4096   # page-aligned, as onnx writes external data
            f.write(b"\0" * (offset - f.tell()))
            # rows of the transposed table at a time: 512 at most, which transposes fastest (cache-sized tiles)
            step = max(1, min(512, FOLD_CHUNK_BYTES // (rows * table.itemsize)))
            for c in range(0, cols, step):
                f.write(np.ascontiguousarray(table[:, c:c + step].T).data)
            length = f.tell() - offset
        del table
        t = onnx.TensorProto(name=output, data_type=tensor.data_type, dims=[cols, rows],
                             data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", info["location"]), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=key, value=value)
        model.graph.initializer.append(t)
        if progress is not None:
            progress(f"folded {len(model.graph.initializer) - first}/{len(folded)} transposed weights")
    _drop_transposes(model.graph, folded)
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
    components: dict[str, dict[str, Any]] = {}
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
    versions: dict[str, str | None] = {}
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


def _io_problem(data: dict[str, Any]) -> str:
    """What is wrong with a cached export's data: its io description is what a hit needs."""
    io = data.get("io")
    if not isinstance(io, dict):
        return "its meta.json has no io description"
    return "" if _components_known(io) else "its io description names components an export does not make"


def _export_hf_cached(ctx: Context, out: Path) -> None:
    """The Hugging Face export, from the stage cache when an entry for the same inputs is there."""
    if ctx.stage_cache is None:
        ctx.cache["export"] = "off"
    else:
        inputs = cache_inputs(ctx)
        fetched = ctx.stage_cache.fetch("export", inputs, out, _io_problem)
        if fetched.status == "hit":
            assert fetched.data is not None
            ctx.cache["export"] = "hit"
            ctx.io = fetched.data["io"]
            return
        ctx.cache["export"] = fetched.status
        if fetched.status == "corrupt":
            ctx.cache_notes.append(f"export: damaged cache entry {fetched.problem}; removed it and exported again")
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


def _components_known(io: dict[str, Any]) -> bool:
    """Whether a cached io description's components are the ones an export makes, by the names it gives
    them: their names and files become paths in the work folder, so an edited entry must not name others."""
    components = io.get("components", {})
    if not isinstance(components, dict):
        return False
    return all(name in SEQ2SEQ_COMPONENTS and isinstance(c, dict) and c.get("export") == SEQ2SEQ_COMPONENTS[name]
               and c.get("merges", list(SEQ2SEQ_MERGED)) == list(SEQ2SEQ_MERGED) for name, c in components.items())


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
    family = family_for(ctx.io["kind"])
    ctx.tokenizer_files = [out / n for n in TOKENIZER_FILES if (out / n).is_file()] if family.needs_tokenizer else []
    if family.generates:
        ctx.context = decoder_context(ctx)
    if family.has_components:
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


if __name__ == "__main__":   # the export's child process (_run_export_child)
    import sys

    _export_child(int(sys.argv[1]), json.loads(sys.argv[2]))
