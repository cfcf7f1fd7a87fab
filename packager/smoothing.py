"""Outlier smoothing before dynamic int8: what the int8-dynamic recipe does to text encoders first.

Dynamic int8 quantizes each MatMul's input at run time with one scale for the whole tensor. In
transformer encoders a few channels of those inputs carry values far beyond the rest, on a few
tokens: in all-MiniLM-L6-v2, channel 99 of the LayerNorm output that feeds each FFN reaches 13
to 30 where the median channel stays under 1.7, so the one scale leaves the ordinary channels a
handful of the 256 levels. Measured on sample:minilm over targets/families/text/eval.txt (mean
cosine of the pooled embedding against fp32, 64 sentences; scripts/bench_quality.py):

    weights alone int8 per channel, activations float           0.9995
    activations alone uint8 per tensor, weights float            0.994
    both: the plain recipe, on ARM (exact integer arithmetic)    0.993  (0.991 on an x86 AVX2
                                                                         host: U8S8 saturates)
    both, one activation scale per token instead                 0.9987 (no fused ORT kernel:
                                                                         from standard ops it
                                                                         costs 35-50% per MatMul)

so the activations' per-tensor scale is what costs the accuracy, spread over all 36 MatMuls: no
single one is worth keeping in float (the best one alone gains 0.0015 for 1.8 MB).

Smoothing (after SmoothQuant, Xiao et al. 2023) moves the outliers from the activation into the
weight, exactly in float: x @ W == (x * (1/s)) @ (diag(s) @ W). Only channels whose range on the
calibration texts exceeds THRESHOLD times the median channel's are scaled, by
(range / (THRESHOLD * median)) ** ALPHA, so ordinary channels keep their precision; the weight
rows take the factor, which per-channel weight quantization absorbs. The cost is one elementwise
Mul per smoothed MatMul input (19 in MiniLM, on [tokens, channels]: 0-5% of the run time) and
0.07 MB of scales.

The ranges come from running the fp32 model on a few built-in sentences
(targets/families/text/calibration.txt, kept apart from the verify samples and the evaluation
set): outlier channels are a property of the model, and calibrating on 4 of them gives the same
accuracy as on all 16. Only text models get it. Inputs made from a tensor model's signature say
nothing about its real activations: MiniLM calibrated on such inputs came out worse than plain
(0.989 against 0.991 on the x86 host), so tensor models are quantized plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from packager.device_code import runner
from packager.families.encoders import TOKENIZER_INPUTS
from packager.paths import targets_dir

THRESHOLD = 4.0    # a channel is an outlier above this many times the median channel's range
ALPHA = 0.75       # how much of an outlier's excess moves into the weights (1: all of it)
# Nodes that multiply input 0 by the weight in input 1 ([channels, outputs]): MatMul, and the fused
# attention of packager/fusion.py (its Q, K and V weights side by side).
WEIGHTED_OPS = {("", "MatMul"), ("com.microsoft", "Attention")}
MAX_TOKENS = 512


def calibration_feeds(src: Path) -> list[dict[str, np.ndarray]] | None:
    """The calibration sentences as the model's inputs, tokenized by the tokenizer beside `src`;
    None when `src` is not a text model with its tokenizer (the export stage puts it there)."""
    tokenizer_file = src.parent / "tokenizer.json"
    model = onnx.load(src, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if not tokenizer_file.is_file() or not names or not set(names) <= TOKENIZER_INPUTS:
        return None
    try:  # the device's own tokenizer loading (run.py)
        tokenizer = runner().load_tokenizer(src.parent, {"tokenizer": tokenizer_file.name, "max_length": MAX_TOKENS})
    except RuntimeError:  # no `tokenizers` package
        return None
    path = targets_dir() / "families" / "text" / "calibration.txt"
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [runner().encode(tokenizer, text, names) for text in texts]


def smoothable(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Inputs whose every consumer among WEIGHTED_OPS multiplies them by a 2-D float weight of its
    own: input tensor name -> the positions of those nodes in the top-level graph (the dynamic
    quantizer leaves subgraphs alone)."""
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    def own_weight(node: onnx.NodeProto) -> bool:
        w = weights.get(node.input[1])
        # a weight shared with another node, scaled for this input, would be wrong for the other
        return (w is not None and len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT
                and uses[w.name] == 1)

    groups: dict[str, list[int]] = {}
    refused: set[str] = set()
    for index, node in enumerate(graph.node):
        if (node.domain, node.op_type) not in WEIGHTED_OPS or node.input[0] in weights:
            continue
        groups.setdefault(node.input[0], []).append(index)
        if not own_weight(node):
            refused.add(node.input[0])
    return {x: nodes for x, nodes in groups.items() if x not in refused}


def channel_ranges(model: onnx.ModelProto, tensors: list[str],
                   feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |value| of each tensor's last-axis channels over the feeds, from the fp32 model."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed)):
            r = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges[name], r) if name in ranges else r
    return ranges


def scales(ranges: np.ndarray, threshold: float = THRESHOLD, alpha: float = ALPHA) -> np.ndarray:
    """Per-channel divisors: 1 for ordinary channels, (range / (threshold x median)) ** alpha above."""
    median = float(np.median(ranges))
    if not np.isfinite(median) or median <= 0.0:
        return np.ones_like(ranges, dtype=np.float32)
    return (np.maximum(1.0, ranges / (threshold * median)) ** alpha).astype(np.float32)


def apply(model: onnx.ModelProto, groups: dict[str, list[int]],
          divisors: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Rewrite `model` in place: each input x of `divisors` becomes x * (1/s) (one new Mul, just
    before its first MatMul) and its MatMuls' weight rows are multiplied by s. The model computes
    the same function in float. Returns the smoothed channels of each input."""
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    taken = {o for n in graph.node for o in n.output} | set(weights) | {i.name for i in graph.input}
    inserts: dict[int, onnx.NodeProto] = {}
    done: dict[str, list[int]] = {}
    for x, s in divisors.items():
        nodes = [graph.node[i] for i in groups[x]]
        if not (s > 1.0).any() or any(weights[n.input[1]].dims[0] != s.shape[0] for n in nodes):
            continue
        for node in nodes:
            w = weights[node.input[1]]
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * s[:, None], w.name))
        smoothed, inverse = _fresh(f"{x}_smoothed", taken), _fresh(f"{x}_smoothing", taken)
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
        inserts[min(groups[x])] = helper.make_node("Mul", [x, inverse], [smoothed], name=smoothed)
        for node in nodes:
            node.input[0] = smoothed
        done[x] = [int(i) for i in np.flatnonzero(s > 1.0)]
    if inserts:
        ordered = []
        for index, node in enumerate(graph.node):
            if index in inserts:
                ordered.append(inserts[index])
            ordered.append(node)
        del graph.node[:]
        graph.node.extend(ordered)
    return done


def _fresh(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def smooth(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write `src` with its activation outliers, as the calibration `feeds` show them, moved into
    the weights to `dst`. What was done, for the recipe's params; `dst` is not written when
    nothing was ("applied": False)."""
    model = onnx.load(src)
    groups = smoothable(model)
    if not groups:
        return {"applied": False, "why": "no MatMul with a float weight of its own"}
    try:
        ranges = channel_ranges(model, list(groups), feeds)
    except Exception as e:  # noqa: BLE001  (a model the calibration cannot run is quantized plain)
        return {"applied": False, "why": f"the calibration run failed ({type(e).__name__})"}
    divisors = {x: scales(r) for x, r in ranges.items()}
    done = apply(model, groups, divisors)
    if not done:
        return {"applied": False, "why": f"no activation channel above {THRESHOLD:g}x the median channel's range"}
    onnx.save(model, dst)
    return {
        "applied": True,
        "method": "outlier channels' scale moved into the MatMul weights (x/s @ s*W), one Mul per input",
        "threshold": THRESHOLD,
        "alpha": ALPHA,
        "calibration": f"{len(feeds)} sentences of targets/families/text/calibration.txt",
        "inputs_smoothed": len(done),
        "channels_smoothed": sum(len(c) for c in done.values()),
        "channels": done,
    }
