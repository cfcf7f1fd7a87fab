"""The data of `packager plan` (packager/plan.py): a model's architecture as plan counts it, and one row of its
table."""

from __future__ import annotations

from dataclasses import dataclass, field

from packager.decoder_config import FULL, LayerAttention
from packager.plan_encoders import OnDemand


@dataclass(frozen=True)
class Architecture:
    name: str
    parameters: int
    embedding_parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    heads: int
    hidden: int
    intermediate: int
    vocab: int
    max_context: int
    decoder: bool
    # Encoder-decoders: parameters per component (encoder, decoder), and the positions of the encoder's
    # output the decoder's cross-attention cache holds (fixed: not the context).
    components: dict[str, int] = field(default_factory=dict)
    encoder_positions: int = 0
    tied_embeddings: bool = False   # the lm_head is the embedding table (counted once in parameters)
    # Decoders read from their config (packager/decoder_config.py): each layer's attention, and the parameters of
    # `parameters` (all stored) that are memory-mapped rather than resident (per-layer embeddings).
    attention: tuple[LayerAttention, ...] = ()
    mapped_parameters: int = 0
    # A multimodal decoder's encoders, loaded on demand (packager/plan_encoders.py), not among `parameters`; and the
    # model_types of those plan has no rule for, whose mode it does not plan.
    on_demand: tuple[OnDemand, ...] = ()
    unplanned_encoders: tuple[str, ...] = ()

    @property
    def effective_parameters(self) -> int:
        return self.parameters - self.mapped_parameters

    def layers_attention(self) -> tuple[LayerAttention, ...]:
        """Each decoder layer's attention: the config's, or every layer full with the model's KV heads."""
        return self.attention or tuple(LayerAttention(FULL, self.kv_heads, self.head_dim, 0, True)
                                       for _ in range(self.layers))

    def narrowest_input(self) -> int:
        """The fewest inputs (K) of any of its MatMuls: the hidden size, the attention's output, the MLP's."""
        return min((w for w in (self.hidden, self.intermediate,
                                *(self.heads * la.head_dim for la in self.layers_attention())) if w > 0), default=512)


@dataclass(frozen=True)
class Row:
    precision: str
    context: int
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    runtime_base_bytes: int
    peak_low_bytes: int
    peak_high_bytes: int
    fits: bool
    kv_bits: int
    planning_only: bool
    mapped_bytes: int = 0                      # weights read from storage a row at a time (not in the peak)
    kv_by_type: dict[str, int] = field(default_factory=dict)   # KV cache bytes by layer type
    # Decoders: the decode speed the device's memory bandwidth allows at this context (packager/bandwidth.py);
    # 0 where the profile names no bandwidth, or for a model that does not generate.
    decode_bound_tokens_per_s: float = 0.0
    # A multimodal decoder: the peak of each mode with an encoder ("image", "audio"), (low, high), the decoder's
    # weights and the KV cache at the context held while the encoder loads and runs; `fits` is the worst mode's.
    # The text mode is peak_low_bytes / peak_high_bytes.
    modes: dict[str, tuple[int, int]] = field(default_factory=dict)
    encoder_bytes: dict[str, int] = field(default_factory=dict)   # each mode's encoder weights, on demand

    @property
    def worst_high_bytes(self) -> int:
        return max([self.peak_high_bytes, *(high for _, high in self.modes.values())])
