"""A decoder LLM's peak memory on a runtime that measured how it holds one (Runtime.decoder_memory with load and
run fractions of the weights: onnxruntime-genai). One rule, applied by `packager plan` (the decoder's shape from its
config.json, packager/plan.py) and by the graph estimate of a packaged decoder (`check`, the fit stage: the shape
read from the packaged graph, packager/estimate.py), so the two agree for the same model, profile and context:

    load  = base + weights x load_weights             the mapped file and the packed copy side by side
    run   = base + weights x run_weights + KV cache x kv_copies + activations
    KV cache     per layer 2 x KV heads x head size x positions x bits / 8: a sliding layer holds its window where
                 the runtime keeps one, a layer that reads an earlier layer's cache holds none
    activations  the logits of the positions the runtime allocates, a chunk's attention scores against the cache
                 (the heads a pass holds at once), the chunk's MLP and residual stream

The low side takes the low fractions of each (low copies of the cache, half the activations); the high side the
high ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.decoder_config import LayerAttention
from packager.runtimes.base import DecoderMemory


@dataclass(frozen=True)
class DecoderShape:
    """What the rule needs of a decoder: from its config (plan) or from its packaged graph (the estimate)."""

    attention: tuple[LayerAttention, ...]   # each layer's, as its KV cache sees it
    heads: int
    hidden: int
    intermediate: int                       # the widest MLP's
    vocab: int                              # 0: no logits (not a decoder)
    logits_positions: int = 0               # positions a pass outputs logits for, where the graph fixes them


@dataclass(frozen=True)
class DecoderPeak:
    load_low: int
    load_high: int
    run_low: int
    run_high: int

    @property
    def low(self) -> int:
        return max(self.load_low, self.run_low)

    @property
    def high(self) -> int:
        return max(self.load_high, self.run_high)


def kv_by_type(attention: tuple[LayerAttention, ...], context: int, bits: int, windowed: bool) -> dict[str, int]:
    """The KV cache's bytes at `context` tokens by layer type (one copy)."""
    by_type: dict[str, int] = {}
    for layer in attention:
        by_type[layer.kind] = by_type.get(layer.kind, 0) + layer.kv_bytes(context, windowed, bits)
    return by_type


def activation_bytes(shape: DecoderShape, mem: DecoderMemory, act_bytes: int, context: int) -> int:
    """The largest activations of a prefill pass: its logits, one layer's attention scores against the context
    (the runtimes size them by the cache's length; all heads at once, or the runtime's few), the MLP and the
    residual stream."""
    prefill = mem.chunk(context)
    logits_rows = (shape.logits_positions or mem.logits_positions or prefill) if shape.vocab else 0
    heads = min(shape.heads, mem.score_heads) if mem.score_heads else shape.heads
    return act_bytes * (logits_rows * shape.vocab + prefill * (2 * shape.intermediate + 4 * shape.hidden)) \
        + score_bytes(heads, prefill, context, act_bytes, mem)


def score_bytes(heads: int, tokens: int, context: int, act_bytes: int, mem: DecoderMemory) -> int:
    """One layer's attention scores for a pass of `tokens` against `context` positions, in the buffers the runtime
    holds at once (mem.score_copies)."""
    return int(act_bytes * tokens * heads * context * mem.score_copies)


def measured_peak(base: int, weights: int, kv: int, activations: int, mem: DecoderMemory,
                  kv_bits: int) -> DecoderPeak:
    """The runtime's measured load peak and resident weights (mem.load_weights, mem.run_weights), a step's copies
    of the KV cache (`kv`: one copy, of `kv_bits` elements) and the activations, beyond `base` (the runtime's own)."""
    copies_low, copies_high = mem.copies(kv_bits)
    return DecoderPeak(
        load_low=base + int(weights * mem.load_weights[0]),
        load_high=base + int(weights * mem.load_weights[1]),
        run_low=base + int(weights * mem.run_weights[0] + kv * copies_low) + activations // 2,
        run_high=base + int(weights * mem.run_weights[1] + kv * copies_high) + activations)
