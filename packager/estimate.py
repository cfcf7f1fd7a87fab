"""Static estimate of a model's peak resident memory on a target, from the ONNX graph.

Peak = max(load, run), each a sum of components:

    runtime_base     interpreter, numpy, the runtime and an empty session (calibration data)
    weights          initializers, inline and in external data (external data is memory-mapped,
                     but resident once the model runs)
    prepacked        copies the CPU kernels make of MatMul/Gemm/Conv/... weights at load; low:
                     the originals are freed once packed, high: both stay
    load_transient   while the session is created ORT holds the parsed proto's copy of inline
                     initializers as well (microsoft/onnxruntime #23775, #15080); external data
                     is mapped, not copied
    activations      intermediate tensors at the sample inputs' concrete shapes, live from their
                     producer to their last consumer, as the arena plans them; high: the arena
                     grows in powers of two
    kv_cache         past key/value inputs of a decoder at the requested context
    gpu_context      GPU profiles: the CUDA context of the GPU providers on unified memory (the
                     profile's runtime.gpu_context_bytes), resident from load on

The figures are calibrated against measurements in scripts/bench_memory.py.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager.paths import profiles_dir
from packager.profiles import Profile

# Ops whose constant weight input the CPU provider packs into its own layout at load.
PREPACKED_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (1,), "Gemm": (1,), "Conv": (1,), "ConvTranspose": (1,), "MatMulInteger": (1,),
    "DynamicQuantizeMatMul": (1,), "MatMulIntegerToFloat": (1,), "MatMulNBits": (1,),
    "QLinearMatMul": (3,), "QLinearConv": (3,), "LSTM": (1, 2), "GRU": (1, 2), "DynamicQuantizeLSTM": (1, 2),
}
# Where the calibration has no figure for a runtime, use the nearest version's and say so.
CALIBRATION = "calibration/runtime_base.toml"
# Measured: loading inline weights peaks 5-25% above them, before prepacked copies (scripts/bench_memory.py).
LOAD_TRANSIENT_LOW, LOAD_TRANSIENT_HIGH = 0.05, 0.25
# Allocator and session bookkeeping on top of the weights, measured at 5-8%.
OVERHEAD_LOW, OVERHEAD_HIGH = 0.02, 0.10


@dataclass(frozen=True)
class Estimate:
    low_bytes: int
    high_bytes: int
    breakdown: dict[str, int]              # component -> bytes (the expected figure)
    load_high_bytes: int
    run_high_bytes: int
    context: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"low_bytes": self.low_bytes, "high_bytes": self.high_bytes, "breakdown": self.breakdown,
                "load_high_bytes": self.load_high_bytes, "run_high_bytes": self.run_high_bytes,
                "context": self.context, "notes": self.notes}


# ---------------------------------------------------------------- runtime base

def runtime_base(profile: Profile, kind: str) -> tuple[int, str]:
    """The runtime's own resident cost for the target's runtime version and thread count."""
    data = tomllib.loads((profiles_dir() / CALIBRATION).read_text(encoding="utf-8"))
    runs = data["runtime"]
    version = profile.runtime.version
    key = version if version in runs else min(runs, key=lambda v: _version_distance(v, version))
    entry = runs[key]
    base = entry["base_bytes"] + entry["session_bytes"] + entry["per_thread_bytes"] * profile.session.intra_op_threads
    if kind in ("text", "decoder"):
        base += entry["tokenizers_bytes"]
    note = "" if key == version else f"runtime base measured for onnxruntime {key}, not {version}"
    return base, note


def _version_distance(a: str, b: str) -> float:
    pa, pb = ([int(x) for x in v.split(".")[:3]] for v in (a, b))
    return sum(abs(x - y) * 100 ** (2 - i) for i, (x, y) in enumerate(zip(pa, pb)))


# ---------------------------------------------------------------- weights

def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if "length" in info:
            return int(info["length"])
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return math.ceil(math.prod(t.dims) / 2)
    return math.prod(t.dims) * itemsize


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every subgraph (If branches, Loop and Scan bodies), recursively."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += _graphs(g)
    return found


def weight_bytes(model: onnx.ModelProto) -> tuple[int, int, dict[str, int]]:
    """(inline, external, bytes by initializer name), subgraphs and Constant nodes included."""
    inline = external = 0
    sizes: dict[str, int] = {}
    for g in _graphs(model.graph):
        for t in g.initializer:
            size = _tensor_bytes(t)
            sizes[t.name] = size
            if t.data_location == onnx.TensorProto.EXTERNAL:
                external += size
            else:
                inline += size
        for node in g.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.TENSOR:
                        size = _tensor_bytes(attr.t)
                        sizes[node.output[0]] = size
                        inline += size
    return inline, external, sizes


def prepacked_bytes(model: onnx.ModelProto, sizes: dict[str, int]) -> int:
    packed: set[str] = set()
    for g in _graphs(model.graph):
        for node in g.node:
            for index in PREPACKED_INPUTS.get(node.op_type, ()):
                if index < len(node.input) and node.input[index] in sizes:
                    packed.add(node.input[index])
    return sum(sizes[n] for n in packed)


# ---------------------------------------------------------------- activations

def _concrete(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A weightless copy of the model with the graph inputs fixed to concrete shapes, shape-inferred."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for g in _graphs(copy.graph):
        for t in g.initializer:
            # Keep dims and type, drop the bytes: shape inference needs no values.
            t.ClearField("raw_data")
            t.ClearField("external_data")
            t.data_location = onnx.TensorProto.DEFAULT
    for inp in copy.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, value in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(value)
    try:
        return onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: unknown shapes fall back below
        return copy


def _value_sizes(graph: onnx.GraphProto) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for v in [*graph.value_info, *graph.output, *graph.input]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not t.elem_type or not t.HasField("shape") or any(d is None for d in dims):
            sizes.setdefault(v.name, None)  # an unshaped declaration never hides an inferred shape
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
        sizes[v.name] = math.prod(dims) * itemsize  # type: ignore[arg-type]
    return sizes


def activation_peak(graph: onnx.GraphProto, constants: set[str]) -> int:
    """Peak bytes of intermediate tensors alive at once, walking the nodes in order (liveness).

    A tensor lives from its producer to its last consumer; graph outputs live to the end. A node
    with subgraphs adds its largest branch's own peak while it runs. Tensors whose shape
    inference could not settle count as large as the node's largest known input.
    """
    sizes = _value_sizes(graph)
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
        for attr in node.attribute:  # subgraphs read outer tensors too
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for sub in g.node:
                    for name in sub.input:
                        last_use[name] = max(last_use.get(name, i), i)
    end = len(graph.node)
    for out in graph.output:
        last_use[out.name] = end
    live: dict[str, int] = {}
    for inp in graph.input:
        if inp.name not in constants and sizes.get(inp.name):
            live[inp.name] = sizes[inp.name] or 0
    peak = sum(live.values())
    for i, node in enumerate(graph.node):
        known = [sizes.get(n) or 0 for n in node.input if n and n not in constants]
        fallback = max(known, default=0)
        for name in node.output:
            if name:
                size = sizes.get(name)
                live[name] = size if size is not None else fallback
        inner = 0
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                inner = max(inner, activation_peak(g, constants))
        peak = max(peak, sum(live.values()) + inner)
        for name in [n for n in live if last_use.get(n, -1) <= i and n not in {o.name for o in graph.output}]:
            del live[name]
    return peak


def _is_past(name: str) -> bool:
    return name.startswith(("past_key_values", "past."))


def kv_cache_bytes(model: onnx.ModelProto, context: int | None) -> int:
    """Past key/value inputs (`past_key_values.N.key/value`) at `context` tokens, batch 1."""
    if not context:
        return 0
    total = 0
    for inp in model.graph.input:
        if not _is_past(inp.name):
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        # [batch, kv_heads, past_sequence, head_dim]: the open sequence axis takes the context.
        fixed = [1 if i == 0 and d is None else (context if d is None else d) for i, d in enumerate(dims)]
        total += math.prod(fixed) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


# ---------------------------------------------------------------- the estimate

def estimate(model_path: Path, profile: Profile, kind: str, sample_shapes: dict[str, tuple[int, ...]],
             context: int | None = None) -> Estimate:
    model = onnx.load(model_path, load_external_data=False)
    inline, external, sizes = weight_bytes(model)
    weights = inline + external
    packed = prepacked_bytes(model, sizes)
    # Past key/values are the KV cache, counted on their own; the presents a step returns are
    # fresh buffers and count as activations.
    past = {i.name for i in model.graph.input if _is_past(i.name)}
    activations = activation_peak(_concrete(model, sample_shapes).graph, set(sizes) | past)
    kv = kv_cache_bytes(model, context)
    base, note = runtime_base(profile, kind)
    gpu = profile.runtime.gpu_context_bytes
    base_gpu = base + gpu

    transient_low, transient_high = int(inline * LOAD_TRANSIENT_LOW), int(inline * LOAD_TRANSIENT_HIGH)
    overhead_low, overhead_high = int(weights * OVERHEAD_LOW), int(weights * OVERHEAD_HIGH)
    # low: packed copies replace their originals; high: both stay.
    load_low = base_gpu + weights + overhead_low + transient_low
    load_high = base_gpu + weights + overhead_high + packed + transient_high
    run_low = base_gpu + weights + overhead_low + activations + kv
    run_high = base_gpu + weights + overhead_high + packed + 2 * activations + kv
    breakdown = {
        "runtime_base": base,
        "weights_inline": inline,
        "weights_external": external,
        "prepacked": packed,
        "load_transient": int(inline * (LOAD_TRANSIENT_LOW + LOAD_TRANSIENT_HIGH) / 2),
        "allocator_overhead": int(weights * (OVERHEAD_LOW + OVERHEAD_HIGH) / 2),
        "activations": activations,
        "kv_cache": kv,
        **({"gpu_context": gpu} if gpu else {}),
    }
    notes = [n for n in [note] if n]
    return Estimate(max(load_low, run_low), max(load_high, run_high), breakdown, load_high, run_high, context, notes)


def decode_step_shapes(io: dict[str, Any], context: int) -> dict[str, tuple[int, ...]]:
    """A decoder's inputs at its largest step: one new token on a KV cache of context - 1 tokens."""
    kv = io["kv"]
    shapes = {"input_ids": (1, 1), "position_ids": (1, 1), "attention_mask": (1, context)}
    names = [i["name"] for i in io["inputs"]]
    past = {n: (1, int(kv["heads"]), context - 1, int(kv["head_dim"])) for n in names if _is_past(n)}
    return {n: shapes[n] for n in names if n in shapes} | past


def sample_shapes(samples: list[dict[str, np.ndarray]]) -> dict[str, tuple[int, ...]]:
    """The largest shape each input takes across the samples: the run the arena must hold."""
    shapes: dict[str, tuple[int, ...]] = {}
    for sample in samples:
        for name, value in sample.items():
            if name not in shapes or value.size > math.prod(shapes[name]):
                shapes[name] = tuple(value.shape)
    return shapes
