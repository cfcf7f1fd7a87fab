"""Static estimate of a model's peak resident memory on a target, from the ONNX graph.

Peak = max(load, run), each a sum of components:

    runtime_base     interpreter, numpy, the bundle's runner, the runtime and an empty session
                     (calibration data, measured the way the fit stage measures: run.py --measure)
    graph            the session's own cost per node (kernels, node and arena bookkeeping): a
                     decoder's graph has a thousand nodes or more (calibration data); a Conv node's
                     kernel state more (the runtime's MemoryShare.conv_node_bytes)
    tokenizer        the tokenizer as the Rust `tokenizers` library holds it: per token and per
                     merge of tokenizer.json (calibration data)
    weights          initializers, inline and in external data (external data is memory-mapped,
                     but resident once the model runs), and the constants the runtime folds at
                     load (folded_constants, in every graph: a Transpose of a tied embedding table feeding
                     the lm_head makes a second table; silero-vad's LSTM weights sliced in its If branches)
    prepacked        what weights the CPU kernels pack (MatMul/Gemm/Conv/...) cost at load beyond
                     their own bytes, all told, by op (PREPACK_EXTRA, measured): an fp32 MatMul's
                     original is freed once packed, an int4 MatMulNBits' too where no other op reads it
                     (NBITS_PACKED)
    ort_format_buffer  phone profiles load model.ort: the runtime reads the whole file into a buffer
                     and holds it while it creates the session (load only); the runtime's
                     MemoryShare names it and gives its fraction (packager/runtimes/)
    load_transient   while the session is created ORT holds the parsed proto's copy of each inline
                     initializer beside its tensor, one at a time: the largest inline initializer
                     (microsoft/onnxruntime #23775, #15080); external data is mapped, not copied.
                     Measured, it is gone before the packing ends and before the runner loads the
                     tokenizer: load = max(this, prepacked + tokenizer)
    allocator_overhead  for the weights no kernel packs: allocator and session bookkeeping
    heap_retained    the load's copies of small inline initializers (each below glibc's mmap threshold): freed
                     inside the heap, which keeps them resident through the run (the high side: up to their
                     bytes; measured 1.6x the int8 weights of a MobileNetV3 resident after load), and a copy
                     of the constants folded at load (in every graph: If branches and Loop bodies too)
    activations      intermediate tensors at the sample inputs' concrete shapes, live from their
                     producer to their last consumer, as the arena plans them (Reshape, Squeeze and
                     the like alias their input: no buffer of their own), over the graph as
                     stored: the runtime's optimizer fuses some apart (Transposes into MatMuls), and
                     measured runs hold 0.80-0.97 of the figure (ACTIVATIONS_LOW/HIGH); a decoder's
                     presents (the new KV cache it returns) are activations
    memory_pattern   tensor models, run again and again at the same shapes: from the second run on the session
                     allocates its memory pattern (one block, planned from the first run) beside the arena
                     chunks the first run grew: a fraction of the activations more (the runtime's
                     MemoryShare.repeat_activations; none where the profile's session plans no pattern).
                     Decoders and text models change shape from run to run, and reuse no pattern
    kv_cache         past key/value inputs of a decoder at the requested context
    table_rows       lookup tables read a row per token (mapped_tables: an E-class model's per-layer embeddings,
                     a tied embedding's copy, issue 20): never resident whole; the loop feeds a pass its tokens'
                     rows (row_tables, packager/row_feed.py), read from the tables' files; a table still
                     memory-mapped (a bundle packaged before) holds the pages of the rows the context's tokens
                     read (at most one row per token, over PAGE-sized pages). The tables' whole size is
                     Estimate.mapped_bytes, shown beside the peak, not in it
    gpu_context      GPU profiles: the CUDA context of the GPU providers on unified memory (the
                     profile's runtime.gpu_context_bytes), resident from load on

The figures are calibrated against measurements in scripts/bench_memory.py. A decoder on a runtime that measured
how it holds one (onnxruntime-genai: DecoderMemory.measured_weights) is estimated by the rule `packager plan`
applies instead (packager/decoder_peak.py), on the shape read from its graph: the two agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager.decoder_config import WINDOW_AXIS, past_axes, prefill_chunk
from packager.decoder_peak import activation_bytes, kv_by_type, measured_peak, score_bytes
from packager.estimate_activations import (
    activation_peak,
    concrete_shapes,
    decoder_shape,
    folded_in_all_graphs,
    is_past,
    kv_cache_bytes,
    value_sizes,
)

# the prepacked weights' rules and figures, re-exported: their home was here
from packager.estimate_prepack import LARGE_WEIGHT as LARGE_WEIGHT
from packager.estimate_prepack import NBITS_PACKED as NBITS_PACKED
from packager.estimate_prepack import PREPACK_CONV_LAYOUT as PREPACK_CONV_LAYOUT
from packager.estimate_prepack import PREPACK_EXTRA as PREPACK_EXTRA
from packager.estimate_prepack import PREPACKED_INPUTS as PREPACKED_INPUTS
from packager.estimate_prepack import estimate_kernels, external_names
from packager.estimate_prepack import freed_nbits as freed_nbits
from packager.estimate_prepack import nbits_extra as nbits_extra
from packager.estimate_prepack import prepack_bands as prepack_bands
from packager.estimate_prepack import prepacked_bytes as prepacked_bytes
from packager.graphs import all_graphs
from packager.graphs import tensor_bytes as tensor_bytes
from packager.profile_types import Profile
from packager.records import Estimate as Estimate  # the estimate's record; its home was here
from packager.row_tables import PAGE as PAGE
from packager.row_tables import ROW_READERS as ROW_READERS
from packager.row_tables import mapped_tables as mapped_tables
from packager.row_tables import mapped_touched as mapped_touched
from packager.row_tables import table_file_bytes as table_file_bytes
from packager.row_tables import table_files as table_files
from packager.row_tables import table_rows
from packager.runtimes import DecoderMemory, MemoryShare, runtime_for
from packager.runtimes.onnxruntime import ECLASS_SCORE_COPIES

# The activations' liveness figure against the measured run (decoder steps at 1K-16K of context,
# fp32 and int4: 0.80-0.97 of it; the optimizer fuses what the stored graph holds apart).
ACTIVATIONS_LOW, ACTIVATIONS_HIGH = 0.75, 1.1
# A convolutional graph's first run takes more of the arena than its liveness figure: the optimizer's layout
# transform (NCHWc on x86-64) reorders each Conv's input and output into blocked copies, and the arena's chunks
# for a Conv net's many sizes fragment: measured 1.45x on a chain of 3x3 Convs at 32x160x160, 2.3x on PP-OCRv4
# det at 736 (fp32, mem_pattern off, so no pattern block).
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
ACTIVATIONS_HIGH_CONV = 2.0
# The load transient as a fraction of the largest inline initializer: measured 0.96-1.0 in bare sessions (MiniLM, 45
# MiB embedding table; MatMul chains of 16, 64 and 256 MiB weights), 0.85 for MiniLM under run.py --measure.
LOAD_TRANSIENT_LOW, LOAD_TRANSIENT_HIGH = 0.5, 1.1
# Folding a constant at load holds the evaluated tensor and its proto copy beside the result: the
# transient phase takes 1-3x the folded bytes more (measured 1.7x: a tied 7.5 MiB embedding table's
# Transpose for the lm_head, 2-layer Llama; silero-vad, 2.0 MiB folded inside its If branches: the basic
# optimizer costs 7.0 MiB at load, the result and 2.5x more, ORT_ENABLE_BASIC against ORT_DISABLE_ALL).
# The copies are freed into the heap, which keeps one resident through the run (silero-vad's run peak is its
# load's and 1 MiB more): the run's high side holds FOLD_RETAINED_HIGH of them.
FOLD_TRANSIENT_LOW, FOLD_TRANSIENT_HIGH = 1.0, 3.0
FOLD_RETAINED_HIGH = 1.0
# Allocator and session bookkeeping on top of the weights no kernel packs, measured at 5-8%.
OVERHEAD_LOW, OVERHEAD_HIGH = 0.02, 0.10
# The runtime base is calibrated on one host (profiles/calibration/runtime_base.toml); another host of
# the same kind and image measured a whole decoder peak 2.8 MiB (4.5% of the base) below this host's
# for the same commit and model (CI, tests/test_decoder_fit.py: 89.7 against 92.5 MiB). The low side
# takes the base at this fraction; the high side takes it whole.
BASE_LOW = 0.93
# glibc's malloc serves requests below its mmap threshold (128 KiB at start) from the heap, and a heap chunk freed
# below the top stays resident: the parsed model's copies of small initializers outlive the load.
MMAP_THRESHOLD = 128 * 2**10
HEAP_RETAINED_HIGH = 1.0


# ---------------------------------------------------------------- runtime base

def runtime_base(profile: Profile, kind: str) -> tuple[int, str]:
    """The runtime's own resident cost on the target (its version, thread count), and a note when its
    figures are another version's."""
    share = runtime_for(profile).memory(profile, kind)
    return share.base_bytes, "; ".join(share.notes)


def tokenizer_bytes(path: Path | None, share: MemoryShare) -> int:
    """The tokenizer's resident size: its tokens and merges (tokenizer.json) at the calibrated cost of each."""
    if path is None or not path.is_file():
        return 0
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model") or {}
        tokens = len(model.get("vocab") or ()) + len(data.get("added_tokens") or ())
        merges = len(model.get("merges") or ())
    except (OSError, ValueError, AttributeError):
        return 0
    return tokens * share.token_bytes + merges * share.merge_bytes


def node_count(model: onnx.ModelProto) -> int:
    return sum(len(g.node) for g in all_graphs(model.graph))


# ---------------------------------------------------------------- weights

def weight_bytes(model: onnx.ModelProto) -> tuple[int, int, dict[str, int]]:
    """(inline, external, bytes by initializer name), subgraphs and Constant nodes included."""
    inline = external = 0
    sizes: dict[str, int] = {}
    for g in all_graphs(model.graph):
        for t in g.initializer:
            size = tensor_bytes(t)
            sizes[t.name] = size
            if t.data_location == onnx.TensorProto.EXTERNAL:
                external += size
            else:
                inline += size
        for node in g.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.TENSOR:
                        size = tensor_bytes(attr.t)
                        sizes[node.output[0]] = size
                        inline += size
    return inline, external, sizes


# ---------------------------------------------------------------- the estimate

def estimate(model_path: Path, profile: Profile, kind: str, sample_shapes: dict[str, tuple[int, ...]],
             context: int | None = None, tokenizer: Path | None = None, converted_bytes: int = 0,
             once: bool = False) -> Estimate:
    """`converted_bytes`: the size of the file a runtime conversion made, which the device loads instead of
    `model_path` (phone profiles: model.ort), which the runtime reads whole and holds while it creates the
    session (the runtime's MemoryShare.converted_buffer). `once`: the session runs once and is released (an
    encoder loaded on demand), so the memory pattern ONNX Runtime plans on a first run for the next never
    allocates."""
    model = onnx.load(model_path, load_external_data=False)
    inline, external, sizes = weight_bytes(model)
    # A decoder on a runtime that measured how it holds one (onnxruntime-genai): plan's rule on the graph's shape.
    # The graph gives the KV element size; its MatMulNBits say int4 (how the runtime packs the weights).
    int4 = any(n.op_type == "MatMulNBits" for n in model.graph.node)
    mem = runtime_for(profile).decoder_memory(profile, "int4" if int4 else "") if context else None
    if mem is not None and any(d.dim_param == WINDOW_AXIS for i in model.graph.input
                               for d in i.type.tensor_type.shape.dim):   # the E-class exporter's graph, as plan's
        mem = replace(mem, score_copies=ECLASS_SCORE_COPIES)
    if context and mem is not None and mem.measured_weights:
        decoder = measured_decoder(model, profile, kind, mem, sample_shapes, context, tokenizer)
        if decoder is not None:
            return decoder
    concrete = concrete_shapes(model, sample_shapes)
    folded, freed = folded_in_all_graphs(concrete.graph, set(sizes))
    sizes |= folded  # folded constants are weights held in memory, packed like the others
    # (before the freed ones are summed: a subgraph's folding may be the only reader of an outer graph's folded one)
    freed_bytes = sum(sizes[n] for n in freed)
    tables = mapped_tables(model)
    mapped_total = sum(size for size, _ in tables.values())
    # the initializers of tables still mapped are never resident whole: the pages the context's tokens read are
    # (table_rows); a fed table is no initializer
    external -= sum(tensor_bytes(t) for tensors in table_files(model).values() for t in tensors)
    passed = max((math.prod(s) for n, s in sample_shapes.items() if n == "input_ids"), default=1)
    tokens = context or passed
    touched = table_rows(model, passed, tokens) if tables else 0
    weights = inline + external + sum(folded.values())
    bands = prepack_bands(model, sizes, estimate_kernels(profile),
                          profile.session.graph_optimization == "all" and not converted_bytes)
    packed_low = int(sum(sizes[n] * low for n, (low, _) in bands.items()))
    packed_high = int(sum(sizes[n] * high for n, (_, high) in bands.items()))
    # a MatMulNBits weight whose original is freed once packed holds both while it packs: the largest, at load
    # (an E-class bundle's tied lm_head, untied, 192 MiB: the load peak 186-190 MiB above the resident after it)
    packing = max((sizes[n] for n in freed_nbits(model) if n in sizes), default=0)
    plain = weights - sum(sizes[n] for n in bands)  # the weights that load as they are stored
    mapped = external_names(model)
    largest_inline = max((size for n, size in sizes.items() if n not in mapped), default=0)
    small_inline = sum(size for n, size in sizes.items() if n not in mapped and size < MMAP_THRESHOLD)
    # Past key/values are the KV cache, counted on their own; the presents a step returns are
    # fresh buffers and count as activations.
    past = frozenset(i.name for i in model.graph.input if is_past(i.name))
    activations = activation_peak(concrete.graph, set(sizes), past) \
        + unsized_scores(model, concrete.graph, sample_shapes, context, mem)
    kv = kv_cache_bytes(model, context, {n: v for n, v in sample_shapes.items() if is_past(n)})
    share = runtime_for(profile).memory(profile, kind)
    base = share.base_bytes
    convs = sum(n.op_type in CONV_OPS for g in all_graphs(model.graph) for n in g.node)
    graph = node_count(model) * share.node_bytes + convs * share.conv_node_bytes
    tokens = tokenizer_bytes(tokenizer, share)
    gpu = share.gpu_context_bytes  # GPU profiles: the CUDA context, resident from load on
    fixed = base + graph + tokens + gpu

    folded_bytes = sum(folded.values())
    transient_low = int(largest_inline * LOAD_TRANSIENT_LOW + folded_bytes * FOLD_TRANSIENT_LOW)
    transient_high = int(largest_inline * LOAD_TRANSIENT_HIGH + folded_bytes * FOLD_TRANSIENT_HIGH)
    overhead_low, overhead_high = int(plain * OVERHEAD_LOW), int(plain * OVERHEAD_HIGH)
    act_low = int(activations * ACTIVATIONS_LOW)
    act_high = int(activations * (ACTIVATIONS_HIGH_CONV if convs and not past else ACTIVATIONS_HIGH))
    repeat = share.repeat_activations if not past and tokenizer is None and not once else (0.0, 0.0)
    pattern_low, pattern_high = int(activations * repeat[0]), int(activations * repeat[1])
    # The transient is gone before the packing ends, and before the runner loads the tokenizer.
    # Constants only folding reads are freed after it (the heap may keep them: the high side does).
    # An ORT-format file is read into one buffer that lives until the session is created: beside the
    # tensors made from it and their packed copies (a 1B int4 model.ort: measured 2.53 GB at load
    # against 1.75 GB without this term, the file 0.8 GB).
    ort_low, ort_high = (int(converted_bytes * share.converted_buffer[0]),
                         int(converted_bytes * share.converted_buffer[1]))
    fixed_low = fixed - int(base * (1 - BASE_LOW))
    load_low = weights - freed_bytes + overhead_low + max(fixed_low + packed_low + packing + ort_low,
                                                          fixed_low - tokens + transient_low)
    load_high = weights + overhead_high + max(fixed + packed_high + packing + ort_high,
                                              fixed - tokens + transient_high)
    run_low = fixed_low + weights - freed_bytes + overhead_low + packed_low + act_low + pattern_low + kv + touched
    retained_high = int(small_inline * HEAP_RETAINED_HIGH + folded_bytes * FOLD_RETAINED_HIGH)
    run_high = fixed + weights + overhead_high + packed_high + act_high + pattern_high + retained_high + kv + touched
    breakdown = {
        "runtime_base": base,
        "graph": graph,
        "tokenizer": tokens,
        "weights_inline": inline,
        "folded_constants": folded_bytes,
        "weights_external": external,
        "prepacked": (packed_low + packed_high) // 2,
        "load_transient": (transient_low + transient_high) // 2,
        **({share.converted_buffer_name: (ort_low + ort_high) // 2} if converted_bytes else {}),
        "allocator_overhead": (overhead_low + overhead_high) // 2,
        "heap_retained": retained_high // 2,
        "activations": activations,
        **({"memory_pattern": (pattern_low + pattern_high) // 2} if pattern_high else {}),
        "kv_cache": kv,
        **({"gpu_context": gpu} if gpu else {}),
        **({"table_rows": touched} if tables else {}),
    }
    notes = list(share.notes)
    return Estimate(max(load_low, run_low), max(load_high, run_high), breakdown, load_high, run_high, context, notes,
                    run_low, mapped_total)


def measured_decoder(model: onnx.ModelProto, profile: Profile, kind: str, mem: DecoderMemory,
                     shapes: dict[str, tuple[int, ...]], context: int, tokenizer: Path | None) -> Estimate | None:
    """A decoder graph on a runtime that measured how it holds one (DecoderMemory.measured_weights): the rule
    `packager plan` applies (packager/decoder_peak.py), on the graph's layers, widths and KV element size, so that
    plan and the estimate of its bundle agree. None for a graph with no KV cache."""
    read = decoder_shape(model, shapes)
    if read is None:
        return None
    shape, bits = read
    inline, external, _ = weight_bytes(model)
    weights = inline + external
    kv = sum(kv_by_type(shape.attention, context, bits, mem.windowed_kv).values())
    logits = next((o for o in model.graph.output if o.name == "logits"), None)
    fp16 = logits is not None and logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    activations = activation_bytes(shape, mem, 2 if fp16 else 4, context)
    share = runtime_for(profile).memory(profile, kind)
    graph, tokens = node_count(model) * share.node_bytes, tokenizer_bytes(tokenizer, share)
    fixed = share.base_bytes + graph + tokens + share.gpu_context_bytes
    peak = measured_peak(fixed, weights, kv, activations, mem, bits)
    load, run, copies = (sum(mem.load_weights) / 2, sum(mem.run_weights) / 2, sum(mem.copies(bits)) / 2)
    breakdown = {
        "runtime_base": share.base_bytes,
        "graph": graph,
        "tokenizer": tokens,
        "weights_inline": inline,
        "weights_external": external,
        "prepacked": int(weights * (run - 1)),        # resident beyond the stored weights once loaded
        "load_transient": max(0, int(weights * (load - run))),  # while loading, beyond that (fp32 compute: none)
        "activations": activations,
        "kv_cache": int(kv * copies),
        **({"gpu_context": share.gpu_context_bytes} if share.gpu_context_bytes else {}),
    }
    notes = [*share.notes, *mem.notes,
             f"{profile.runtime.package}'s measured weights: {mem.load_weights[0]:g}-{mem.load_weights[1]:g}x the "
             f"stored bytes at load, {mem.run_weights[0]:g}-{mem.run_weights[1]:g}x once loaded; KV cache "
             f"{bits}-bit, {mem.copies(bits)[0]:g}-{mem.copies(bits)[1]:g} copies at a step"]
    return Estimate(peak.low, peak.high, breakdown, peak.load_high, peak.run_high, context, notes, peak.run_low)


def unsized_scores(model: onnx.ModelProto, concrete: onnx.GraphProto, shapes: dict[str, tuple[int, ...]],
                   context: int | None, mem: DecoderMemory | None) -> int:
    """A decoder pass's attention scores where shape inference cannot size them (an exported attention builds its
    mask from the inputs' values): one layer's, by the rule plan applies (decoder_peak.score_bytes), for the pass's
    new tokens against the context."""
    if not context or mem is None:
        return 0
    sizes = value_sizes(concrete)
    if not any(n.op_type == "Softmax" and sizes.get(n.output[0]) is None for n in concrete.node):
        return 0
    found = decoder_shape(model, shapes)
    if found is None:
        return 0
    shape, bits = found
    tokens = shapes.get("input_ids", (1, 1))[-1]
    return score_bytes(shape.heads, tokens, context, 2 if bits == 16 else 4, mem)


def largest_pass(io: dict[str, Any], context: int) -> int:
    """The new tokens of a decoder's largest pass at `context`: a prompt that fills the context goes to the device in
    chunks (decoder_config.prefill_chunk at the context) where the graph gives the last position's logits (run.py's
    Decoder.prefill), in one
    pass otherwise; its last pass, against the longest cache, holds the most (a chunk's attention scores against the
    context, its MLP, its logits), more than a decode step."""
    return min(context, prefill_chunk(context)) if io.get("logits") == "last" else context


def step_shapes(io: dict[str, Any], context: int, tokens: int = 1) -> dict[str, tuple[int, ...]]:
    """A decoder's inputs at a pass of `tokens` new tokens on a KV cache of context - tokens (the largest: largest_pass;
    a decode step: 1), a sliding layer's (its length axis "window", io.kv.window) on window - 1 of them."""
    kv = io["kv"]
    window = min(context, int(kv.get("window") or context))
    shapes: dict[str, tuple[int, ...]] = {"input_ids": (1, tokens), "position_ids": (1, tokens),
                                          "attention_mask": (1, context)}
    if io.get("soft"):   # the encoders' soft tokens and where they go (a multimodal E-class graph's)
        tokens_in, mask_in = io["soft"]["inputs"]
        shapes |= {tokens_in: (1, tokens, int(io["soft"]["hidden"])), mask_in: (1, tokens)}
    names = [i["name"] for i in io["inputs"]]
    # a layer of its own head count or size (Gemma 4's global layers) by its input's shape, the others by io.kv
    axes = {i["name"]: past_axes(i["shape"]) for i in io["inputs"] if is_past(i["name"])}
    own = {n: (int(i["shape"][axes[n][1]]), int(i["shape"][3])) for i in io["inputs"] if (n := i["name"]) in axes
           and isinstance(i["shape"][axes[n][1]], int) and isinstance(i["shape"][3], int)}
    past: dict[str, tuple[int, ...]] = {}
    windowed = {i["name"] for i in io["inputs"] if i["name"] in axes and i["shape"][axes[i["name"]][0]] == WINDOW_AXIS}
    for n in filter(is_past, names):
        heads, size = own.get(n, (int(kv["heads"]), int(kv["head_dim"])))
        length = window - 1 if n in windowed else context - tokens
        past[n] = (1, length, heads, size) if axes[n][0] == 1 else (1, heads, length, size)
    return {n: shapes[n] for n in names if n in shapes} | past


def seq2seq_step_shapes(io: dict[str, Any], context: int, encoder_length: int) -> dict[str, tuple[int, ...]]:
    """An encoder-decoder's decoder at its largest step: one new token on a KV cache of context - 1
    tokens, the cross-attention's cache and the encoder's output at the encoder's length."""
    kv = io["kv"]
    inputs = {i["name"]: i for i in io["components"]["decoder"]["inputs"]}
    shapes: dict[str, tuple[int, ...]] = {"input_ids": (1, 1), "use_cache_branch": (1,),
                                          "encoder_attention_mask": (1, encoder_length)}
    if "encoder_hidden_states" in inputs:
        shapes["encoder_hidden_states"] = (1, encoder_length, int(inputs["encoder_hidden_states"]["shape"][-1]))
    for name in inputs:
        if is_past(name):
            length = encoder_length if ".encoder." in name else context - 1
            shapes[name] = (1, int(kv["heads"]), length, int(kv["head_dim"]))
    return {n: v for n, v in shapes.items() if n in inputs}


def combine(estimates: dict[str, Estimate], shared: int) -> Estimate:
    """The estimate of components resident together in one process: each component's estimate counts
    the runtime (and a GPU's context) once, the whole counts it once (`shared`: those bytes). Loads are
    summed, each transient on top of the components loaded before it (the high side: they do not
    overlap, but the arena keeps what each session's run took)."""
    n = len(estimates)
    spare = (n - 1) * shared
    breakdown: dict[str, int] = {}
    for e in estimates.values():
        for key, value in e.breakdown.items():
            breakdown[key] = breakdown.get(key, 0) + value
    if "gpu_context" in breakdown:
        breakdown["gpu_context"] = max(e.breakdown.get("gpu_context", 0) for e in estimates.values())
    breakdown["runtime_base"] -= spare - breakdown.get("gpu_context", 0) * (n - 1)   # the shared base once
    first = next(iter(estimates.values()))
    return Estimate(sum(e.low_bytes for e in estimates.values()) - spare,
                    sum(e.high_bytes for e in estimates.values()) - spare, breakdown,
                    sum(e.load_high_bytes for e in estimates.values()) - spare,
                    sum(e.run_high_bytes for e in estimates.values()) - spare, first.context,
                    sorted({note for e in estimates.values() for note in e.notes}),
                    sum(e.run_low_bytes for e in estimates.values()) - spare)


def with_modes(decoder: Estimate, encoders: dict[str, Path], profile: Profile) -> Estimate:
    """A multimodal decoder's estimate with each encoder's mode (runtime/on_demand.py's order: the decoder loaded
    and its cache at the context held, the encoder loaded, run once on its graph's input, the processor's largest,
    and released before the decoder's next pass): what the decoder holds, plus the encoder's own estimate, the
    runtime counted once. The decoder holds its run without a pass's activations on the low side, with them on the
    high side (an arena keeps an earlier pass's buffers: the tiny Gemma 3n of tests/test_eclass_media_3n.py measured
    0.3 MiB above a high side without them). plan's rule is the same from the config."""
    act = decoder.breakdown.get("activations", 0)
    held_low = decoder.run_low_bytes - int(act * ACTIVATIONS_LOW)
    held_high = max(decoder.load_high_bytes, decoder.run_high_bytes)
    shared = runtime_for(profile).memory(profile, "tensor").shared_bytes
    modes = {}
    for mode, path in encoders.items():
        graph = onnx.load(path, load_external_data=False)
        shapes = {i.name: tuple(max(d.dim_value, 1) for d in i.type.tensor_type.shape.dim) for i in graph.graph.input}
        own = estimate(path, profile, "tensor", shapes, once=True)
        modes[mode] = {"low_bytes": held_low + own.low_bytes - shared,
                       "high_bytes": held_high + own.high_bytes - shared, "encoder_high_bytes": own.high_bytes - shared}
    return replace(decoder, modes=modes)


def sample_shapes(samples: list[dict[str, np.ndarray]]) -> dict[str, tuple[int, ...]]:
    """The largest shape each input takes across the samples: the run the arena must hold."""
    shapes: dict[str, tuple[int, ...]] = {}
    for sample in samples:
        for name, value in sample.items():
            if name not in shapes or value.size > math.prod(shapes[name]):
                shapes[name] = tuple(value.shape)
    return shapes
