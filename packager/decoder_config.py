"""A decoder LLM's shape from its config.json alone: parameters counted analytically, and each layer's attention.

`packager plan` reads today's decoder configs with this, not with the host's transformers: a config whose class
the installed transformers lacks (Gemma 4 before 5.x) plans all the same, and nothing is instantiated. The counts
are the checkpoint's own (tests/test_decoder_config.py checks them against transformers' meta-device count for
every family the host's transformers has). What a layer's KV cache holds is the model's (layer types, sliding
windows, per-layer KV heads and head sizes, KV sharing); what the runtime makes of it is the runtime's
(packager/runtimes: DecoderMemory).

A config this module does not understand raises PackagerError (exit 5) with one sentence naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packager.errors import ExitCode, PackagerError

FULL, SLIDING = "full_attention", "sliding_attention"


# The E-class exporter's (runtimes/eclass_export.py) name for a sliding layer's past length axis: that past holds
# the last window - 1 positions, whatever the context (the estimate sizes it as plan does)
WINDOW_AXIS = "window"
# ... and a full layer's. Its pasts are laid out positions first, [batch, positions, KV heads, size], and its presents
# are the new tokens' keys and values alone, which the device's loop appends (io.kv.appends): a past whose axis 1 is
# named CACHED_AXIS or WINDOW_AXIS is laid out so; any other is [batch, KV heads, positions, size] (optimum's, genai's).
CACHED_AXIS = "cached"
# ... and the inputs after position_ids of its graph of a multimodal checkpoint: the vision and audio encoders' soft
# tokens ([batch, sequence, hidden], float32) and where they go ([batch, sequence], bool), read in place of the
# embeddings there (io.soft; targets/runtime/soft.py feeds them)
SOFT_INPUTS = ("soft_tokens", "soft_mask")


def past_axes(dims: list[Any] | tuple[Any, ...]) -> tuple[int, int]:
    """The (positions, KV heads) axes of a past's shape `dims` (names or sizes): positions first where the E-class
    exporter's length axis names it (CACHED_AXIS, WINDOW_AXIS), heads first otherwise."""
    return (1, 2) if len(dims) > 2 and dims[1] in (CACHED_AXIS, WINDOW_AXIS) else (2, 1)
# The device's decoder loop prefills a graph that gives the last position's logits (optimum's export with
# onnx_rewrite.last_position_logits, the E-class exporter's) in chunks of this many tokens (targets/runtime/
# session.py's PREFILL_CHUNK): plan and the estimate count a chunk's activations. 64, not 256: the exported attention
# holds a layer's scores about 5 times (runtimes/onnxruntime.py SCORE_COPIES), 4x less a chunk (a 16-head Llama at
# 2,048 positions: 37 MiB beyond the cache at 64, 168 at 256); genai's rpi5 profile prefills in 64 too, measured
# no slower (docs/llms.md).
LAST_ONLY_CHUNK = 64
# ... and, as the cache grows, in smaller ones: a pass's scores (its tokens x the positions it attends to) held at
# most CHUNK_SCORES (64 tokens up to 4,096 positions, 32 up to 8K, MIN_CHUNK beyond; run.py's Decoder.pass_tokens),
# so that a context twice as long costs no more scores. The pass that fills the context is the largest (the
# earlier, larger ones hold as many scores against a shorter cache): plan and the estimate count prefill_chunk
# tokens at the context. Gemma-4-E2B int4 on rpi5 at 8K: 45.5 MiB of activations at 64, 23.3 at 32, the peak
# 1,441 -> 1,419 MiB against a 1,431 budget. The cost, past 4,096 positions only: an 8,192-token prompt on a 4-layer
# bundle of E2B's widths prefilled at 263 tok/s against 353 with 64 throughout (2 threads on the host;
# scripts/bench_decoder_step.py BUNDLE --speed --prompt 8192 --chunks 0 64 32: 32 throughout 266).
CHUNK_SCORES = LAST_ONLY_CHUNK * 4096
MIN_CHUNK = 16


def prefill_chunk(context: int) -> int:
    """The prompt tokens of the pass that fills `context` positions (targets/runtime/session.py's prefill_chunk, the
    same rule)."""
    chunk = LAST_ONLY_CHUNK
    while chunk > MIN_CHUNK and chunk * context > CHUNK_SCORES:
        chunk //= 2
    return chunk

# The suffix of the Slice onnx_rewrite.last_position_logits puts before an lm_head (recipes/nbits.py reads it there)
LAST_POSITION = "/last_position"


@dataclass(frozen=True)
class LayerAttention:
    """One decoder layer's attention as its KV cache sees it."""

    kind: str            # FULL or SLIDING
    kv_heads: int
    head_dim: int
    window: int          # positions a sliding layer attends to (0: the whole context)
    owns_cache: bool     # False: the layer reads an earlier layer's keys and values (KV sharing)

    def positions(self, context: int, windowed: bool) -> int:
        """Positions its cache holds at `context` tokens: a windowed layer stops at its window where the runtime
        keeps only the window (`windowed`)."""
        if not self.owns_cache:
            return 0
        return min(context, self.window) if windowed and self.window else context

    def kv_bytes(self, context: int, windowed: bool, kv_bits: int) -> int:
        return 2 * self.kv_heads * self.head_dim * self.positions(context, windowed) * kv_bits // 8


@dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    stored_parameters: int       # every tensor the checkpoint stores for the text decoder (tied ones once)
    mapped_parameters: int       # read a row at a time from storage, never resident: the per-layer embeddings
    embedding_parameters: int    # the input embedding table
    tied: bool
    layers: tuple[LayerAttention, ...]
    heads: int
    hidden: int
    intermediate: int            # the widest layer's
    vocab: int
    max_context: int

    @property
    def effective_parameters(self) -> int:
        """What runs resident: the stored parameters but the mapped table (Gemma's "E2B": effective 2B)."""
        return self.stored_parameters - self.mapped_parameters


class Keys:
    """A config's keys, read with the one-sentence error that names the key a plan cannot use."""

    def __init__(self, config: dict[str, Any], where: str) -> None:
        self.config, self.where = config, where

    def fail(self, key: str, problem: str) -> PackagerError:
        return PackagerError(f"{self.where}: key {key!r} {problem}; fix config.json (a Hugging Face decoder's "
                             "config, as the model's repository has it).", ExitCode.BAD_INPUT)

    def count(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key)
        if value is None:
            if default is None:
                raise self.fail(key, "is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, f"must be a whole number, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def per_layer(self, key: str, layers: int, default: int | None = None) -> list[int]:
        """A size given once for all layers or as a list of one per layer (Gemma 3n's intermediate_size)."""
        value = self.config.get(key)
        if isinstance(value, list):
            if len(value) != layers or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
                raise self.fail(key, f"must be one whole number or a list of {layers} (one per layer), "
                                f"got a list of {len(value)}: {value[:4]}{' ...' if len(value) > 4 else ''}")
            return list(value)
        return [self.count(key, default)] * layers

    def layer_types(self, layers: int, default: Callable[[int], str]) -> list[str]:
        value = self.config.get("layer_types")
        if value is None:
            return [default(i) for i in range(layers)]
        known = {FULL, SLIDING}
        if not isinstance(value, list) or len(value) != layers or any(v not in known for v in value):
            raise self.fail("layer_types", f"must list {layers} layer types, each \"{FULL}\" or \"{SLIDING}\"")
        return list(value)


@dataclass(frozen=True)
class Family:
    """What a family's layers hold beyond Llama's: biases, extra norms, the attention pattern."""

    tied_default: bool = False
    qkv_bias: bool | None = None       # None: the config's attention_bias
    o_bias: bool | None = None         # None: the config's attention_bias
    layer_norms: int = 2               # per layer, of hidden size
    qk_norm: str = ""                  # "head": q_norm and k_norm of head_dim; "all": of heads x head_dim
    sliding: Callable[[Keys, int], list[str]] | None = None   # the layers' types where a family windows some


def _pattern(period: int) -> Callable[[Keys, int], list[str]]:
    """Every `period`-th layer global, the others sliding (Gemma 2: 2, Gemma 3: sliding_window_pattern)."""
    def types(k: Keys, layers: int) -> list[str]:
        p = k.count("sliding_window_pattern", period)
        return k.layer_types(layers, lambda i: SLIDING if (i + 1) % p else FULL)
    return types


def _all_sliding_if_window(k: Keys, layers: int) -> list[str]:
    """Mistral, Phi-3: one window for every layer, where the config gives one shorter than its positions (Phi-3.5-mini
    and Phi-4-mini give 262,144 against 131,072 positions: no window at all)."""
    window, positions = k.config.get("sliding_window"), k.config.get("max_position_embeddings")
    beyond = isinstance(window, int) and isinstance(positions, int) and window >= positions
    return k.layer_types(layers, lambda i: SLIDING if window and not beyond else FULL)


def _qwen_window(k: Keys, layers: int) -> list[str]:
    """Qwen2/Qwen3: windowed from max_window_layers on, only with use_sliding_window."""
    if not k.flag("use_sliding_window", False):
        return [FULL] * layers
    first = k.count("max_window_layers", layers)
    return k.layer_types(layers, lambda i: SLIDING if i >= first else FULL)


def _full(k: Keys, layers: int) -> list[str]:
    return [FULL] * layers


FAMILIES: dict[str, Family] = {
    "llama": Family(sliding=_full),
    "mistral": Family(sliding=_all_sliding_if_window),
    "granite": Family(sliding=_full),
    "smollm3": Family(tied_default=True, sliding=_full),
    "qwen2": Family(qkv_bias=True, o_bias=False, sliding=_qwen_window),
    "qwen3": Family(qk_norm="head", sliding=_qwen_window),
    "phi3": Family(qkv_bias=False, o_bias=False, sliding=_all_sliding_if_window),
    "olmo2": Family(qkv_bias=False, o_bias=False, qk_norm="all", sliding=_full),
    "gemma": Family(tied_default=True, sliding=_full),
    "gemma2": Family(tied_default=True, layer_norms=4, sliding=_pattern(2)),
    "gemma3_text": Family(tied_default=True, layer_norms=4, qk_norm="head", sliding=_pattern(6)),
}
# Gemma 3n and Gemma 4: per-layer embeddings, KV sharing, per-layer sizes (their own counters below).
E_FAMILIES = ("gemma3n_text", "gemma4_text")
# A multimodal config's text decoder lives under text_config with its own model_type.
TEXT_TYPES = {"gemma3": "gemma3_text", "gemma3n": "gemma3n_text", "gemma4": "gemma4_text"}


def known(config: dict[str, Any]) -> bool:
    """A decoder this module counts: a family above, or a multimodal Gemma's text decoder (its vision and audio
    encoders, loaded on demand, are not counted); other multimodal configs are not (their towers would be missed)."""
    if "text_config" in config and config.get("model_type") not in TEXT_TYPES:
        return False
    return _model_type(config) in FAMILIES or _model_type(config) in E_FAMILIES


def e_type(config: dict[str, Any]) -> str:
    """The E-class family of a config (a Gemma 3n or Gemma 4 text decoder with per-layer embeddings), else ""."""
    model_type = _model_type(config)
    return model_type if model_type in E_FAMILIES and text_keys(config).get("hidden_size_per_layer_input") else ""


def soft_token_problem(config: dict[str, Any]) -> str:
    """What keeps a multimodal E-class checkpoint's loop from placing its encoders' soft tokens ("" when nothing):
    the loop puts the text decoder's pad_token_id at their positions of input_ids, as transformers does, so a
    text_config whose pad_token_id is null has none to put (an absent one is transformers' default, 0)."""
    if not e_type(config) or not any(isinstance(config.get(k), dict) for k in ("vision_config", "audio_config")):
        return ""
    text = config.get("text_config")
    if isinstance(text, dict) and "pad_token_id" in text and text["pad_token_id"] is None:
        return ("text_config.pad_token_id is null, and a multimodal model's decoder puts the pad token where its "
                "encoders' soft tokens go; set it to the tokenizer's pad id (Gemma's is 0) in config.json.")
    return ""


def text_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The text decoder's keys: a multimodal config's text_config over the outer keys (tie_word_embeddings, where
    the text one lacks them); a text-only config as it is."""
    text = config.get("text_config")
    return {**config, **(text if isinstance(text, dict) else {})}


def _model_type(config: dict[str, Any]) -> str:
    text = config.get("text_config")
    outer = str(config.get("model_type", ""))
    if isinstance(text, dict):
        return str(text.get("model_type") or TEXT_TYPES.get(outer, outer))
    return TEXT_TYPES.get(outer, outer) if outer in ("gemma3n", "gemma4") else outer


def read(config: dict[str, Any], where: str) -> DecoderConfig:
    """The decoder's shape and counts from a config of a family in FAMILIES or E_FAMILIES."""
    text = config.get("text_config")
    if text is not None and not isinstance(text, dict):
        raise Keys(config, where).fail("text_config", "must be an object of the text decoder's keys")
    k = Keys(text_keys(config), where)
    model_type = _model_type(config)
    if model_type in E_FAMILIES:
        return _e_model(k, model_type)
    return _dense(k, model_type, FAMILIES[model_type])


def _attention_shape(k: Keys) -> tuple[int, int, int, int, int]:
    hidden, layers, heads = k.count("hidden_size"), k.count("num_hidden_layers"), k.count("num_attention_heads")
    if not heads or not layers or not hidden:
        raise k.fail("num_attention_heads" if not heads else "num_hidden_layers" if not layers else "hidden_size",
                     "must be above 0")
    kv_heads = k.count("num_key_value_heads", heads)
    head_dim = k.count("head_dim", hidden // heads)
    return hidden, layers, heads, kv_heads, head_dim


def _dense(k: Keys, model_type: str, f: Family) -> DecoderConfig:
    hidden, layers, heads, kv_heads, head_dim = _attention_shape(k)
    vocab = k.count("vocab_size")
    intermediate = k.per_layer("intermediate_size", layers)
    bias = k.flag("attention_bias", False)
    qkv_bias, o_bias = (bias if f.qkv_bias is None else f.qkv_bias), (bias if f.o_bias is None else f.o_bias)
    tied = k.flag("tie_word_embeddings", f.tied_default)
    mlp_bias = k.flag("mlp_bias", False)
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q + 2 * kv) + q * hidden + (q + 2 * kv if qkv_bias else 0) + (hidden if o_bias else 0)
    norms = f.layer_norms * hidden + {"head": 2 * head_dim, "all": q + kv}.get(f.qk_norm, 0)
    mlp = sum(3 * hidden * i + (2 * i + hidden if mlp_bias else 0) for i in intermediate)
    embedding = vocab * hidden
    stored = embedding + layers * (attention + norms) + mlp + hidden + (0 if tied else embedding)
    window = k.count("sliding_window", 0) if k.config.get("sliding_window") else 0
    types = f.sliding(k, layers) if f.sliding else [FULL] * layers
    attn = tuple(LayerAttention(t, kv_heads, head_dim, window if t == SLIDING else 0, True) for t in types)
    return DecoderConfig(model_type, stored, 0, embedding, tied, attn, heads, hidden, max(intermediate), vocab,
                         k.count("max_position_embeddings", 0))


def _e_model(k: Keys, model_type: str) -> DecoderConfig:
    """Gemma 3n and Gemma 4 text decoders: per-layer embeddings (PLE: a vocab x layers x width table, mapped), the
    last num_kv_shared_layers layers reading an earlier layer's cache, Gemma 4's global layers with their own head
    size and KV heads and double-wide MLPs on the shared layers, Gemma 3n's AltUp and Laurel blocks."""
    hidden, layers, heads, kv_heads, head_dim = _attention_shape(k)
    gemma4 = model_type == "gemma4_text"
    if gemma4 and k.flag("enable_moe_block", False):
        raise k.fail("enable_moe_block", "is true: mixture-of-experts Gemma 4 models are not planned yet")
    vocab, per_layer_vocab = k.count("vocab_size"), k.count("vocab_size_per_layer_input", k.count("vocab_size"))
    width = k.count("hidden_size_per_layer_input", 0)
    shared = k.count("num_kv_shared_layers", 0)
    if shared > layers:
        raise k.fail("num_kv_shared_layers", f"is {shared}, more than the {layers} layers")
    period = 6 if gemma4 else 5
    types = k.layer_types(layers, lambda i: FULL if (i + 1) % period == 0 else SLIDING)
    if gemma4:
        types[-1] = FULL   # transformers forces the last layer global
    window = k.count("sliding_window", 512)
    intermediate = k.per_layer("intermediate_size", layers)
    global_dim = k.count("global_head_dim", 512) if gemma4 else head_dim
    k_eq_v = gemma4 and k.flag("attention_k_eq_v", False)
    global_kv = k.count("num_global_key_value_heads", kv_heads) if k_eq_v else kv_heads
    double_wide = gemma4 and k.flag("use_double_wide_mlp", False)
    first_shared = layers - shared
    attn: list[LayerAttention] = []
    stored = 0
    for i, t in enumerate(types):
        dim, n_kv = (global_dim, global_kv) if t == FULL else (head_dim, kv_heads)
        owns = i < first_shared
        attn.append(LayerAttention(t, n_kv, dim, window if t == SLIDING else 0, owns))
        q = heads * dim
        # Gemma 4's shared layers store no k/v projections; Gemma 3n's store theirs (unused).
        keeps_kv = owns or not gemma4
        kv = n_kv * dim * (1 if k_eq_v and t == FULL else 2)
        inter = intermediate[i] * (2 if double_wide and not owns else 1)
        stored += hidden * q + q * hidden + dim + (hidden * kv + dim if keeps_kv else 0)   # q, o, q_norm, k, v, k_norm
        stored += 3 * hidden * inter + 4 * hidden                                         # MLP, four norms
        stored += 2 * width * hidden + hidden                                              # the PLE gate and projection
        if not gemma4:
            stored += _altup_laurel(k, hidden)
    table = per_layer_vocab * layers * width
    embedding = vocab * hidden
    stored += embedding + table + layers * width * hidden + width + hidden   # + PLE projection, its norm, final norm
    if not gemma4:
        n = k.count("altup_num_inputs", 4)
        stored += 2 * (n - 1) * hidden * hidden   # AltUp's projections in and out
    tied = k.flag("tie_word_embeddings", True)
    stored += 0 if tied else embedding
    return DecoderConfig(model_type, stored, table, embedding, tied, tuple(attn), heads, hidden, max(intermediate),
                         vocab, k.count("max_position_embeddings", 0))


def _altup_laurel(k: Keys, hidden: int) -> int:
    """Gemma 3n's per-layer AltUp (router, coefficients, scale, norm) and Laurel (a low-rank block and its norm)."""
    n, rank = k.count("altup_num_inputs", 4), k.count("laurel_rank", 64)
    return n * n * n + n * n + n * hidden + 2 * hidden + 2 * rank * hidden + hidden
