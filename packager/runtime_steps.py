"""The runtimes' steps that take the run's Context (packager/runtimes/ names them "module:function", as the
families name theirs: the runtimes sit below the Context and the exporter environments these need).

    onnxruntime_runner(ctx)     verify's packaged side: run.py's Runner in this process
    onnxruntime_reference(ctx)  verify's reference: the fp32 export in an onnxruntime session
    genai_build(ctx, ...)       onnxruntime-genai's model builder, in the `genai` exporter environment
    genai_python()              that environment's interpreter (it has the pinned onnxruntime-genai)
    genai_runner(ctx)           verify's packaged side for genai: the bundle's code in a child of that interpreter
    genai_reference(ctx)        verify's reference for genai (and the E-class export's): the source model in PyTorch,
                                a child of it too
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from packager import eclass, exporter_envs
from packager.context import Context
from packager.coverage import coverage_of
from packager.device_code import runner
from packager.estimate import weight_bytes
from packager.export_process import merged
from packager.families import Export, described, family_for
from packager.manifest import runtime_spec
from packager.recipes.common import RecipeResult
from packager.recipes.layers import layer_bytes, layer_of
from packager.runtime_files import copy_runtime
from packager.runtimes import genai
from packager.runtimes.genai import KV8_OPTIONS, tune
from packager.runtimes.genai_host import ChildDecoder, ChildRunner, TorchReference
from packager.runtimes.genai_kv16 import kv_to_fp16

BUILDER = "onnxruntime_genai.models.builder"
BUILDER_BANNER = "Valid precision + execution provider combinations"   # printed by every build: no progress
TRANSFORMERS = next(r.split("==")[1] for r in exporter_envs.GENAI.requirements if r.startswith("transformers=="))
KV8_MARGIN = 1.5   # static scales: room above the sample prompts' largest |K| and |V|


def onnxruntime_runner(ctx: Context) -> Any:
    """The packaged model as run.py loads it, on this host's CPU."""
    spec = runtime_spec(ctx) | {"providers": ["CPUExecutionProvider"], "provider_options": {}}
    return runner().Runner(ctx.stage_dir, spec, log_level=4)


def onnxruntime_reference(ctx: Context) -> Any:
    import onnxruntime as ort

    if ctx.source is not None and ctx.source.path.is_dir() and eclass.e_type(ctx.source.path):
        # packager's own E-class export (a trace of its own forward): judged against the model itself, so that an
        # exporter's bug fails verify rather than sets its reference
        return torch_reference(ctx)
    assert ctx.reference_model is not None
    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures surface as exceptions, reported once
    return ort.InferenceSession(str(ctx.reference_model), so, providers=["CPUExecutionProvider"])


def genai_python() -> Path:
    exporter_envs.ensure(exporter_envs.GENAI)
    return exporter_envs.GENAI.python


def genai_build(ctx: Context, model_dir: Path, precision: str, options: tuple[str, ...], kv: str = "float") -> None:
    """`model_dir` as the builder makes it from the source folder (with --adapter merged into it first), tuned to
    the profile (`kv`, the KV cache's type: "float16" the attention cast to fp16, "int8" the builder's quantized
    cache with static scales measured on the source model in PyTorch; ctx.keep_8bit: the layers int4-mixed keeps at 8
    bits); ctx.packaged_model and ctx.recipe say so."""
    assert ctx.source is not None
    if kv == "int8":
        scales = ctx.work_dir / "kv_scales.json"
        if not scales.is_file():   # the source's, the same for every build of the run (--fit auto's tries)
            scales.write_text(json.dumps({"scales": kv_scales(ctx)}), encoding="utf-8")
        options = (*options, *KV8_OPTIONS, f"kv_cache_scale_file={scales}")
    nodes_8bit = _nodes_8bit(ctx, precision, options) if ctx.keep_8bit else []
    out = _run_builder(ctx, precision, options, nodes_8bit)
    tune(out / "genai_config.json", ctx.profile, kv)
    if kv == "float16":
        _kv_to_fp16(out / "model.onnx")
    for f in sorted(out.iterdir()):
        if f.is_file():
            shutil.copyfile(f, model_dir / f.name)
    shutil.rmtree(out, ignore_errors=True)
    ctx.packaged_model = model_dir / "model.onnx"
    # The manifest describes the graph that ships (its KV cache's type: fp16 on rpi5, int8 ...), not the fp32 export's
    ctx.io = described(Export(ctx.source.path, ctx.source.task, model_dir))
    model = onnx.load(ctx.packaged_model, load_external_data=False)
    params: dict[str, Any] = {"builder": BUILDER, "precision": precision, "execution_provider": "cpu",
              "extra_options": [o for o in options if "scale_file" not in o], "kv_cache": kv}
    if ctx.recipe_name == "int4-mixed":   # the shape of packager's own int4-mixed params (recipes/layers.py compose)
        params["mixed"] = _mixed_params(ctx, model, nodes_8bit)
    ctx.recipe = RecipeResult(ctx.recipe_name, params, 0, coverage=coverage_of(model),
                              note=f"built by {BUILDER} (onnxruntime-genai {ctx.profile.runtime.version})")


def _kv_to_fp16(path: Path) -> None:
    """The builder's graph at `path` with a 16-bit KV cache (its external data unchanged)."""
    model = onnx.load(path, load_external_data=False)
    if kv_to_fp16(model):
        onnx.save(model, path)


def _mixed_params(ctx: Context, model: onnx.ModelProto, nodes_8bit: list[str]) -> dict[str, Any]:
    """int4-mixed's record: the layers at 8 bits, the builder's nodes for them, and the bytes they cost over the
    plain int4 build (with a tied embedding that the builder then leaves float: it writes no 8-bit one)."""
    bytes8 = layer_bytes(model)
    total = sum(weight_bytes(model)[2].values())
    known = ctx.work_dir / "genai-nodes.json"
    if not ctx.keep_8bit or not known.is_file():   # the plain build: the reference of the costs
        _remember_int4(known, model, total)
    int4 = json.loads(known.read_text(encoding="utf-8"))
    keep = list(ctx.keep_8bit)
    return {"layers_8bit": keep, "layers": len(bytes8), "cost_bytes": total - int4["total_bytes"],
            "layer_bytes": {layer: {"int4": int4["layer_bytes"].get(layer, 0), "int8": bytes8.get(layer, 0)}
                            for layer in keep}, "nodes_8bit": nodes_8bit}


def _remember_int4(known: Path, model: onnx.ModelProto, total: int) -> None:
    """A plain int4 build's node names by layer, its layers' bytes and its weight bytes (once per run)."""
    nodes = {n.name.removesuffix("_Q4"): layer_of(n) for n in model.graph.node if n.op_type == "MatMulNBits"}
    known.write_text(json.dumps({"nodes": nodes, "layer_bytes": layer_bytes(model), "total_bytes": total}),
                     encoding="utf-8")


def _run_builder(ctx: Context, precision: str, options: tuple[str, ...], nodes_8bit: list[str]) -> Path:
    """The builder's output folder in the work dir, from the source (the adapter merged in first); the MatMuls
    named in `nodes_8bit` at 8 bits (its weight overrides, --target_options)."""
    assert ctx.source is not None
    out = ctx.work_dir / "genai-build"
    shutil.rmtree(out, ignore_errors=True)
    folder = merged(ctx, ctx.source.path) if ctx.source.adapter is not None else ctx.source.path
    args = ["-i", str(folder), "-o", str(out), "-p", precision, "-e", "cpu",
            "-c", str(ctx.work_dir / "genai-cache"), "--extra_options", *options]
    if nodes_8bit:
        overrides = [{"match": {"name": n}, "type": "int8"} for n in nodes_8bit]
        target = ctx.work_dir / "genai-target-options.json"
        target.write_text(json.dumps({"quant_config": {"weights": {"overrides": overrides}}}), encoding="utf-8")
        args += ["--target_options", str(target)]
    ctx.progress("building the onnxruntime-genai model")
    fixes = ctx.work_dir / "genai-fixes"   # the builder with its Gemma 3 and SmolLM3 bugs fixed (genai_builder_fixes)
    fixes.mkdir(exist_ok=True)
    # a copy, never imported here: it imports onnxruntime-genai, which only the environment has
    shutil.copyfile(Path(genai.__file__).with_name("genai_builder_fixes.py"), fixes / "genai_builder_fixes.py")
    try:
        exporter_envs.run(exporter_envs.GENAI, "genai_builder_fixes", args, _builder_progress(ctx), cwd=fixes)
    finally:
        if ctx.source.adapter is not None:
            shutil.rmtree(folder, ignore_errors=True)   # the merged weights: the build has them now
    return out


def _builder_progress(ctx: Context) -> Callable[[str], None]:
    """The builder's lines for the progress line, but the table of precisions it prints on every run."""
    def show(line: str) -> None:
        if not line.startswith(BUILDER_BANNER):
            ctx.progress(line)
    return show


def _nodes_8bit(ctx: Context, precision: str, options: tuple[str, ...]) -> list[str]:
    """The builder's MatMuls in ctx.keep_8bit's layers ("layers.3", "lm_head": recipes/layers.py names them from
    the nodes' paths, as for the ONNX export), named as before quantization (its overrides match those names).
    The builder names its nodes as it builds: they are read from a plain int4 build (once per run)."""
    known = ctx.work_dir / "genai-nodes.json"
    if not known.is_file():
        out = _run_builder(ctx, precision, options, [])
        model = onnx.load(out / "model.onnx", load_external_data=False)
        _remember_int4(known, model, sum(weight_bytes(model)[2].values()))
        shutil.rmtree(out, ignore_errors=True)
    nodes: dict[str, str] = json.loads(known.read_text(encoding="utf-8"))["nodes"]
    return sorted(name for name, layer in nodes.items() if layer in ctx.keep_8bit)


def kv_scales(ctx: Context) -> dict[str, list[float]]:
    """Per-layer static scales of an int8 KV cache: the largest |key| and |value| the source model writes (verify's
    PyTorch reference, fp32) over the family's prompts, over 127, with a margin for what longer texts reach."""
    tokenizer = runner().load_tokenizer(ctx.work_dir, {**ctx.io.to_dict(), "tokenizer": _tokenizer_file(ctx)})
    reference = torch_reference(ctx)
    peaks: dict[str, list[float]] = {}
    try:
        for text in family_for(ctx.io.kind).texts():
            found = reference.kv_peaks(list(tokenizer.encode(text).ids))
            peaks = {kind: [max(a, b) for a, b in zip(peaks.get(kind, values), values)]
                     for kind, values in found.items()}
    finally:
        reference.close()
    return {f"{kind[0]}_scales": [KV8_MARGIN * peak / 127 for peak in peaks[kind]] for kind in ("key", "value")}


def _tokenizer_file(ctx: Context) -> str:
    return str(next(f for f in ctx.tokenizer_files if f.name == "tokenizer.json"))


def genai_reference(ctx: Context) -> TorchReference:
    return torch_reference(ctx)


def torch_reference(ctx: Context) -> TorchReference:
    """The source model in PyTorch, fp32, in the genai environment (transformers 5.x)."""
    assert ctx.source is not None
    label = f"PyTorch (transformers {TRANSFORMERS} in the genai environment), fp32"
    # A fine-tune's reference is the base with its adapter merged (the model the builder built), in the work dir
    # (made once: every recipe --fit auto or int4-mixed tries is judged against the same one)
    folder = ctx.source.path
    if ctx.source.adapter is not None:
        folder = ctx.work_dir / "merged-reference"
        if not folder.is_dir():
            merged(ctx, ctx.source.path, folder.name)
        label += f", {ctx.source.adapter.path.name} merged"
    # an E-class model through its exporter's loader: the per-layer embedding table stays mapped from the checkpoint
    loader = eclass.exporter_code(ctx.work_dir) if eclass.e_type(folder) else None
    return TorchReference(str(genai_python()), folder, [int(t) for t in ctx.io.eos_token_ids or []],
                          ctx.work_dir, label, exporter_envs.child_environ(), loader)


def genai_runner(ctx: Context) -> ChildRunner:
    code = ctx.work_dir / "genai-runner"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    copy_runtime(code, ctx.profile)
    return ChildRunner(ChildDecoder(str(genai_python()), code, ctx.stage_dir, runtime_spec(ctx),
                                    exporter_envs.child_environ()))
