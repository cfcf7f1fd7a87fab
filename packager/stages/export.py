"""export: turn the source into an fp32 ONNX reference model; its family describes its inputs and outputs.

Hugging Face folders go through optimum-onnx's exporter (the task comes from
config.architectures, since local folders cannot auto-infer it); .onnx files are copied with
their external data. The opset is capped by what the target's runtime implements.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import math
import platform
import shutil
from pathlib import Path
from typing import Any

import onnx

from packager import adapter, export_process, onnx_rewrite
from packager.adapter import base_shapes
from packager.compat import load_table
from packager.context import Component, Context
from packager.errors import ExitCode, PackagerError
from packager.export_process import export_here, merged, quiet, run_export_child
from packager.families import Export, described, family_for, family_of_task, io_modules
from packager.families.base import step
from packager.families.seq2seq import SEQ2SEQ_COMPONENTS, SEQ2SEQ_MERGED, SEQ2SEQ_MODALITY
from packager.graphs import all_graphs
from packager.model_files import PICKLE_SUFFIXES, TOKENIZER_FILES
from packager.onnx_rewrite import fold_transposed_weights, last_position_logits, name_tied_lm_head
from packager.profiles import Profile, builtin_profiles
from packager.recipes import parse_recipe, recipe_label
from packager.recipes.common import PROTO_LIMIT
from packager.records import Io
from packager.runtimes import ECLASS_EXPORTER_FILES, profile_for_model, runtime_for
from packager.stages.source import DECODER_TASK
from packager.version import __version__

# The highest opset the exporter supports: optimum-onnx 0.1.0 calls torch.onnx.export(dynamo=False), whose
# TorchScript exporter stops at 20 (torch 2.13: ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET). It accepts 21-23 but warns
# they are "not supported" and only restamps graphs built by its opset-20 symbolics (checked on a tiny BERT and
# Llama: node for node the same graph at 20 and 21), which would be wrong for operators changed after 20
# (GroupNormalization-21). Capped below by the target runtime's opset (profile runtime.max_opset).
DEFAULT_OPSET = 20


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
    if step("packager.eclass:e_type")(ctx.source.path):   # per-layer embeddings: packager's own exporter
        _export_eclass(ctx, out)
        return
    opset = export_opset(ctx)
    folder = _weights_only_copy(ctx.source.path, ctx.work_dir / "unpickled") if ctx.source.pickled else ctx.source.path
    if ctx.source.adapter is not None:
        folder = merged(ctx, folder)
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
        outcome = run_export_child(ctx, job) if weights > CHILD_EXPORT_BYTES else export_here(ctx, job)
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
        if ctx.source.task == DECODER_TASK:   # the lm_head on the last position only (io.logits = "last")
            last_position_logits(out / "model.onnx")
    if not (out / "tokenizer.json").is_file() and (out / "vocab.txt").is_file():
        # Slow-tokenizer folders: the device needs the fast tokenizer's single JSON file.
        from transformers import AutoTokenizer

        with quiet():
            AutoTokenizer.from_pretrained(str(out), use_fast=True).backend_tokenizer.save(str(out / "tokenizer.json"))


def _export_eclass(ctx: Context, out: Path) -> None:
    assert ctx.source is not None
    if ctx.source.pickled:   # the exporter reads the per-layer embedding table from the safetensors file itself
        raise PackagerError(f"{ctx.source.path}: an E-class model is exported from safetensors weights, and this "
                            "folder has only pickled ones; save the model with save_pretrained (safetensors) and "
                            "package that folder.", ExitCode.BAD_INPUT)
    if ctx.source.adapter is not None:
        raise PackagerError(f"{ctx.source.path}: an E-class model is exported from its safetensors alone, without "
                            "--adapter; merge the adapter into the model first, or drop it.", ExitCode.USAGE)
    step("packager.eclass:export_folder")(ctx.source.path, out, ctx.work_dir, ctx.progress)


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
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return 4 * sum(math.prod(shape) for shape in base_shapes(folder).values())
    return 0


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
        _check_onnx(out / "model.onnx")
    except Exception as e:  # ValidationError, or protobuf errors from a damaged file
        raise PackagerError(f"{ctx.source.path}: the ONNX model is invalid ({str(e).splitlines()[0][:300]}); "
                            "re-export it.", ExitCode.BAD_INPUT) from None


def _check_onnx(path: Path) -> None:
    """onnx's checker, which knows no operator that onnxruntime registers in the ONNX domain itself
    (SimplifiedLayerNormalization: onnxruntime-genai's builder writes it, and so does onnxruntime's own optimizer).
    Those nodes are checked as a contrib domain's, which the checker leaves to the runtime; the compatibility stage
    judges them against the pinned runtime (profiles/runtimes/onnxruntime.toml [contrib."ai.onnx"])."""
    try:
        onnx.checker.check_model(str(path))
        return
    except onnx.checker.ValidationError as e:
        error = e
    model = onnx.load(path, load_external_data=False)
    runtime_ops = {op for domain, op in load_table().contrib if domain == "ai.onnx"}
    nodes = [n for g in all_graphs(model.graph) for n in g.node
             if n.domain in ("", "ai.onnx") and n.op_type in runtime_ops]
    if not nodes:
        raise error
    for node in nodes:
        node.domain = RUNTIME_DOMAIN
    if all(o.domain != RUNTIME_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(RUNTIME_DOMAIN, 1))
    probe = path.with_name(f".packager-check-{path.name}")   # beside it: external data is found by relative path
    try:
        onnx.save(model, str(probe))
        onnx.checker.check_model(str(probe))
    finally:
        probe.unlink(missing_ok=True)


RUNTIME_DOMAIN = "com.microsoft"

# What the export's output depends on besides the source: these packages' versions (and packager's
# own, and the export's code: this file, export_process.py, onnx_rewrite.py, and the families' modules that
# describe its io), so that an upgrade re-exports instead of reusing an older export.
EXPORT_TOOLS = ("optimum", "optimum-onnx", "torch", "transformers", "tokenizers", "onnx", "safetensors")


# The E-class exporter's host side (packager/eclass.py runs runtimes.ECLASS_EXPORTER_FILES in the genai environment)
ECLASS_HOST = Path(__file__).parents[1] / "eclass.py"   # its rewrite of the export (the tied lm_head's name)


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
        "packager": {"version": __version__, "export_code": export_code()},
        "python": ".".join(platform.python_version_tuple()[:2]),
    }


def export_code() -> str:
    """sha256 of the export's code: this stage's, the exporter's run, the rewrites of its files and the
    families' description of its io (a cached export's meta.json holds that description)."""
    digest = hashlib.sha256()
    for module in (__file__, export_process.__file__, onnx_rewrite.__file__, *ECLASS_EXPORTER_FILES, ECLASS_HOST,
                   *(m.__file__ for m in io_modules())):
        assert module is not None
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()


def lora_code() -> str:
    return str(adapter.__file__)


def _io_problem(data: dict[str, Any]) -> str:
    """What is wrong with a cached export's data: its io description is what a hit needs."""
    io = data.get("io")
    if not isinstance(io, dict):
        return "its meta.json has no io description"
    try:
        Io.from_dict(io)
    except PackagerError:
        return "its io description is not of the shape packager writes"
    return "" if _components_known(io) else "its io description names components an export does not make"


def _describe_io(ctx: Context, out: Path) -> Io:
    """The export's io, as its family describes it (packager/families/)."""
    assert ctx.source is not None
    return described(Export(ctx.source.path, ctx.source.task, out))


def _export_hf_cached(ctx: Context, out: Path) -> Io:
    """The Hugging Face export and its io, from the stage cache when an entry for the same inputs is there."""
    if ctx.stage_cache is None:
        ctx.cache["export"] = "off"
    else:
        inputs = cache_inputs(ctx)
        fetched = ctx.stage_cache.fetch("export", inputs, out, _io_problem)
        if fetched.status == "hit":
            assert fetched.data is not None
            ctx.cache["export"] = "hit"
            return Io.from_dict(fetched.data["io"])
        ctx.cache["export"] = fetched.status
        if fetched.status == "corrupt":
            ctx.cache_notes.append(f"export: damaged cache entry {fetched.problem}; removed it and exported again")
        elif fetched.problem:
            ctx.cache_notes.append(f"export: {fetched.problem}")
    out.mkdir()
    _export_hf(ctx, out)
    # As a cache hit reads it back: a run that exported and one that reused the export write the same manifest.
    io = _describe_io(ctx, out)
    if ctx.stage_cache is not None:
        problem = ctx.stage_cache.store("export", cache_inputs(ctx), out, {"io": io.to_dict()})
        if problem:
            ctx.cache_notes.append(f"export: {problem}")
    return io


def _components_known(io: dict[str, Any]) -> bool:
    """Whether a cached io description's components are the ones an export makes, by the names it gives
    them: their names and files become paths in the work folder, so an edited entry must not name others."""
    components = io.get("components", {})
    if not isinstance(components, dict):
        return False
    return all(name in SEQ2SEQ_COMPONENTS and isinstance(c, dict) and c.get("export") == SEQ2SEQ_COMPONENTS[name]
               and c.get("merges", list(SEQ2SEQ_MERGED)) == list(SEQ2SEQ_MERGED) for name, c in components.items())


def reference(ctx: Context) -> None:
    """The fp32 reference (exported, from the stage cache where it has it, or the .onnx copied) and its io:
    ctx.reference_model and ctx.reference_io."""
    assert ctx.source is not None
    out = ctx.work_dir / "reference"
    if ctx.source.kind == "huggingface":
        io = _export_hf_cached(ctx, out)
    else:
        out.mkdir()
        _copy_onnx(ctx, out)
        fold_transposed_weights(out / "model.onnx")
        io = _describe_io(ctx, out)
    ctx.reference_model, ctx.reference_io = out / "model.onnx", io


def _builder_profile(ctx: Context) -> Profile | None:
    """The profile as it applies to a decoder LLM whose runtime builds the model from the source itself
    (onnxruntime-genai), known from the source alone; None for a model that is exported."""
    assert ctx.source is not None
    family = family_of_task(ctx.source.task)
    if ctx.source.kind != "huggingface" or family is None or not (ctx.source.path / "tokenizer.json").is_file():
        return None   # (a folder with a slow tokenizer only: the export writes its tokenizer.json, and decides)
    profile = ctx.profile
    if ctx.member_dir is None:
        profile, _ = profile_for_model(ctx.profile, family.name, ctx.source.architecture)
    runtime = runtime_for(profile)
    return profile if runtime.builds_model and runtime.takes(ctx.source.architecture) else None


def run(ctx: Context) -> None:
    assert ctx.source is not None
    built = _builder_profile(ctx)
    if built is not None:
        # No fp32 export: the builder makes the model from the source, verify runs the source in PyTorch (and measures
        # an int8 cache's scales there), and the graph describes its own io once built (runtime_steps.genai_build).
        # int4-mixed's layer search alone reads an export, and makes it when it needs it (stage_runner).
        ctx.profile = built
        family = family_of_task(ctx.source.task)
        assert family is not None
        ctx.io = Io.from_dict(family.describe_source(ctx.source.path))
        out = ctx.source.path   # its tokenizer files (the builder writes its own into the model's folder)
    else:
        reference(ctx)
        assert ctx.reference_io is not None
        ctx.io, out = ctx.reference_io, ctx.work_dir / "reference"
        if ctx.member_dir is None:   # several models in one bundle share one process: [runtime]'s (suite.py)
            ctx.profile, note = profile_for_model(ctx.profile, ctx.io.kind, ctx.source.architecture)
            ctx.cache_notes.extend([note] if note else [])
    family = family_for(ctx.io.kind)
    ctx.tokenizer_files = [out / n for n in TOKENIZER_FILES if (out / n).is_file()] if family.needs_tokenizer else []
    if family.generates:
        ctx.context = decoder_context(ctx)
    if ctx.options.kv_bits is not None:
        ctx.profile = kv_bits_profile(ctx, family.generates and not family.has_components)
    if family.has_components:
        if ctx.eval_cases:   # before any recipe runs
            raise PackagerError(f"--eval {ctx.eval_file}: eval cases judge decoder LLMs and text encoders, not an "
                                "encoder-decoder's generations yet; drop --eval.", ExitCode.BAD_INPUT)
        # In SEQ2SEQ_COMPONENTS' order (encoder, then decoder), whatever order a cached io was stored in.
        ctx.components = [Component(name, out / c["export"], parts=tuple(out / m for m in c.get("merges", [])))
                          for name, c in sorted((ctx.io.components or {}).items(),
                                                key=lambda kv: list(SEQ2SEQ_COMPONENTS).index(kv[0]))]
        ctx.reference_model = ctx.components[-1].reference   # the decoder: what single-model readers see
        assign_component_recipes(ctx)
    elif not ctx.recipe_explicit:
        ctx.recipe_name = ctx.profile.recipe_for(family.context_sized)
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
        default = ctx.profile.recipe_for(context_sized=c.name == "decoder")   # the decoder's KV cache grows
        c.recipe_name = chosen.get(c.name) or chosen.get("") or default
    ctx.recipe_name = recipe_label({c.name: c.recipe_name for c in ctx.components})


def kv_bits_profile(ctx: Context, decoder: bool) -> Profile:
    """The profile with --kv-bits's KV cache, which the decoder's runtime sets (a sentence where it cannot)."""
    bits = ctx.options.kv_bits
    assert bits is not None
    if not decoder:
        raise PackagerError(f"--kv-bits {bits}: {ctx.source.name if ctx.source else 'this model'} is a {ctx.io.kind} "
                            "model, with no KV cache of its own to size (decoder LLMs have one); drop --kv-bits.",
                            ExitCode.USAGE)
    made = runtime_for(ctx.profile).with_kv_bits(ctx.profile, bits)
    if made is None:
        genai = sorted(name for name, p in builtin_profiles().items()
                       if (p.decoder_runtime or p).runtime.name == "onnxruntime-genai")
        raise PackagerError(f"--kv-bits {bits}: {ctx.profile.runtime.package} runs this decoder with its KV cache in "
                            "the activations' type (32-bit; 16-bit with the fp16 recipe), which no setting changes; "
                            "drop --kv-bits, or package for a target whose decoders run on onnxruntime-genai "
                            f"({', '.join(genai)}).", ExitCode.USAGE)
    return made


def decoder_context(ctx: Context) -> int:
    """The KV cache the deployment holds: --context, else the profile's, within the model's positions."""
    assert ctx.io.max_length is not None   # a generating family's io gives it
    positions = ctx.io.max_length
    if ctx.context is not None and ctx.context > positions:
        raise PackagerError(f"--context {ctx.context} is longer than the model's {positions} positions "
                            "(max_position_embeddings); ask for at most that.", ExitCode.USAGE)
    return ctx.context or min(ctx.profile.budget.context, positions)

