"""A multimodal decoder's encoders as `packager plan` counts them (issue 20, items 3 and 4): the vision and audio
encoders beside a Gemma 4 or Gemma 3n text decoder, loaded on demand (when an input of their mode arrives) and
released after, each with its projection into the decoder's embedding space.

Each kind is a rule over its sub-config (`vision_config`, `audio_config`; absent keys take transformers 5.x's
defaults, which its docs give as google/gemma-4-e2b-it's): the parameters, counted as transformers builds the module
(tests/test_plan_encoders.py checks each rule against transformers' own count on the meta device), the soft tokens
one input of the processor's largest size puts in the context, and the activations of one pass over that input as
packager's encoder graphs hold them (packager/runtimes/eclass_encoders.py: the vision encoder's attention in blocks
of QUERY_BLOCK queries). scripts/bench_encoders.py measures those graphs beside these figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packager.decoder_config import Keys

FP32 = 4
QUERY_BLOCK = 256   # packager/runtimes/eclass_encoders.py's QUERY_BLOCK
MODES = {"vision_config": "image", "audio_config": "audio"}


@dataclass(frozen=True)
class OnDemand:
    """An encoder the decoder's prompt calls on: loaded for an input of its mode, released after."""

    mode: str            # "image" or "audio"
    kind: str            # its sub-config's model_type
    parameters: int
    tokens: int          # soft tokens one input of the processor's largest size puts in the context
    activations: int     # bytes its pass over that input holds at once (fp32 activations)
    load_factor: float = 1.0   # what creating its session holds, in multiples of its weights (convolutions: 2.1)


def gemma4_vision(k: Keys, text_hidden: int) -> OnDemand:
    """Gemma4VisionModel (a ViT on patches of patch_size, 2-D position tables, gated MLPs) and embed_vision. One image
    is max_soft_tokens (280, the processor's default) x pooling_kernel_size^2 patches. Its pass holds a layer's MLP
    (gate, up, their product and a matmul's int32 accumulator beside its float output), the hidden states, queries,
    keys and values, and a block's scores twice (scores, softmax)."""
    hidden, layers = k.count("hidden_size", 768), k.count("num_hidden_layers", 16)
    heads, head_dim = k.count("num_attention_heads", 12), k.count("head_dim", 64)
    kv_heads, inter = k.count("num_key_value_heads", heads), k.count("intermediate_size", 3072)
    patch, pooling = k.count("patch_size", 16), k.count("pooling_kernel_size", 3)
    per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 2 * head_dim \
        + 3 * hidden * inter + 4 * hidden
    parameters = 2 * k.count("position_embedding_size", 10240) * hidden + 3 * patch * patch * hidden \
        + layers * per_layer + text_hidden * hidden
    tokens = 280
    patches = tokens * pooling * pooling
    activations = FP32 * (patches * (3 * inter + 4 * hidden) + 2 * patches * inter
                          + 2 * heads * min(QUERY_BLOCK, patches) * patches)
    return OnDemand("image", "gemma4_vision", parameters, tokens, activations)


def _conformer(hidden: int, layers: int, heads: int, kernel: int, channels: list[int], features: int) -> int:
    """The USM conformer of Gemma 4's and Gemma 3n's audio encoders: two stride-2 3x3 convolutions (each with a norm),
    a projection of their output, and per layer two feed-forward blocks (4x wide, two norms each), attention (q, k,
    v, out and a relative-position projection, a per-dimension scale), a light convolution block (a gated projection
    in, a depthwise convolution, a projection out, two norms) and three norms."""
    first, second = channels
    convs = first * 9 + first + second * first * 9 + second + hidden * (features // 4) * second
    per_layer = 2 * (8 * hidden * hidden + 2 * hidden) + 5 * hidden * hidden + hidden // heads \
        + 3 * hidden * hidden + kernel * hidden + 2 * hidden + 3 * hidden
    return convs + layers * per_layer


def _conformer_activations(hidden: int, channels: list[int], frames: int, features: int) -> int:
    """One clip's pass: the first convolution's output, the second's input unfolded for its matmul (3x3 x channels
    a position), and a feed-forward block's 4x-wide activations twice."""
    first = channels[0]
    tokens = frames // 4
    return FP32 * (first * (frames // 2) * (features // 2) + first * 9 * tokens * (features // 4)
                   + 2 * tokens * 4 * hidden)


AUDIO_FRAMES = 3000   # the feature extractors' longest clip: 30 s at a frame each 10 ms


def gemma4_audio(k: Keys, text_hidden: int) -> OnDemand:
    """Gemma4AudioModel (the conformer, then output_proj with its bias) and embed_audio; one clip is 30 s."""
    hidden, output = k.count("hidden_size", 1024), k.count("output_proj_dims", 1536)
    channels = _channels(k, "subsampling_conv_channels")
    parameters = _conformer(hidden, k.count("num_hidden_layers", 12), k.count("num_attention_heads", 8),
                            k.count("conv_kernel_size", 5), channels, channels[0]) \
        + output * hidden + output + text_hidden * output
    activations = _conformer_activations(hidden, channels, AUDIO_FRAMES, 128)
    return OnDemand("audio", "gemma4_audio", parameters, AUDIO_FRAMES // 4, activations)


def gemma3n_audio(k: Keys, text_hidden: int) -> OnDemand:
    """Gemma3nAudioEncoder (the conformer: conf_* keys) and embed_audio (its own table of vocab_size rows, two norms,
    a projection); one clip is 30 s, a token each 4 frames reduced again by conf_reduction_factor."""
    hidden, features = k.count("hidden_size", 1536), k.count("input_feat_size", 128)
    channels = _channels(k, "sscp_conv_channel_size")
    parameters = _conformer(hidden, k.count("conf_num_hidden_layers", 12), k.count("conf_num_attention_heads", 8),
                            k.count("conf_conv_kernel_size", 5), channels, features) \
        + k.count("vocab_size", 128) * hidden + 2 * hidden + text_hidden * hidden
    tokens = -(-AUDIO_FRAMES // 4 // max(1, k.count("conf_reduction_factor", 4)))   # rounded up: 188, as exported
    return OnDemand("audio", "gemma3n_audio", parameters, tokens,
                    _conformer_activations(hidden, channels, AUDIO_FRAMES, features))


# timm 1.0.31's MobileNet-V5 by architecture name, as transformers builds Gemma 3n's vision tower with it (no
# classifier: mobilenetv5_base's 1,000-class head is not built; counted on the meta device in
# tests/test_plan_encoders.py). Its stages are timm's own, not config keys: another name, or model_args that change
# them, has no rule.
MOBILENET_V5 = {"mobilenetv5_300m_enc": 294_126_912, "mobilenetv5_base": 80_598_976}
# One 768 x 768 image through E2B's tower as packager exports it (runtimes/eclass_encoders_3n.py; random weights, 2
# threads): the run added 470 MiB at fp32 and 482 at int8 once loaded, its largest tensors [768, 192, 192] in fp32
# (108 MiB) beside their inputs; and creating the fp32 session held 2,386 MiB, 2.1 times its 1,140 MiB of weights
# (the convolutions' prepacked copies beside the originals)
MOBILENET_V5_ACTIVATIONS = 400 * 2**20
CONV_LOAD_FACTOR = 2.1


def gemma3n_vision(k: Keys, text_hidden: int) -> OnDemand | None:
    """timm's MobileNet-V5 (the vision_config's `architecture`) and embed_vision (its own table of vocab_size rows, two
    norms, a projection from hidden_size); one image is the processor's 768 x 768, 256 soft tokens. None for a tower
    this rule does not know."""
    tower = MOBILENET_V5.get(str(k.config.get("architecture", "mobilenetv5_300m_enc")))
    if tower is None or k.config.get("model_args"):
        return None
    hidden = k.count("hidden_size", 2048)
    parameters = tower + k.count("vocab_size", 128) * hidden + 2 * hidden + text_hidden * hidden
    return OnDemand("image", "gemma3n_vision", parameters, 256, MOBILENET_V5_ACTIVATIONS, CONV_LOAD_FACTOR)


def _channels(k: Keys, key: str) -> list[int]:
    value = k.config.get(key, [128, 32])
    if not isinstance(value, list) or len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                             or v <= 0 for v in value):
        raise k.fail(key, f"must be a list of two channel counts, got {value!r}")
    return list(value)


RULES: dict[str, Callable[[Keys, int], OnDemand | None]] = {
    "gemma4_vision": gemma4_vision, "gemma4_audio": gemma4_audio, "gemma3n_audio": gemma3n_audio,
    "gemma3n_vision": gemma3n_vision,
}


def on_demand(config: dict[str, Any], text_hidden: int, where: str) -> tuple[tuple[OnDemand, ...], list[str]]:
    """The encoders of a multimodal config that plan counts, and the model_types of those it has no rule for
    (another family's; a MobileNet-V5 other than timm's published ones)."""
    found: list[OnDemand] = []
    unknown: list[str] = []
    for key in MODES:
        sub = config.get(key)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise Keys(config, where).fail(key, "must be an object of the encoder's keys")
        # transformers writes model_type into a saved sub-config; one written by hand may leave it to the outer
        kind = str(sub.get("model_type") or f"{config.get('model_type', '')}_{key.removesuffix('_config')}")
        rule = RULES.get(kind)
        encoder = rule(Keys(sub, f"{where} ({key})"), text_hidden) if rule else None
        if encoder is None:
            unknown.append(kind)
            continue
        found.append(encoder)
    return tuple(found), unknown


def encoder_bytes(encoder: OnDemand, bytes_per_param: float) -> tuple[int, int]:
    """What loading the encoder and running it on one input adds to the process, (low, high): its weights at the
    recipe's bytes and the pass's activations. Measured beside this rule (scripts/bench_encoders.py, glibc's mmap
    threshold held as run.py holds it), a session and its run added the weights and 1.4-1.5x these activations
    (int8: onnxruntime's quantized copies of the activations, its arena), 0.9x for the fp32 audio encoder: low counts
    0.8x, high a quarter more weights and 1.75x."""
    weights = int(encoder.parameters * bytes_per_param)
    high = max(weights * 5 // 4 + encoder.activations * 7 // 4, int(weights * encoder.load_factor))
    return weights + encoder.activations * 4 // 5, high
