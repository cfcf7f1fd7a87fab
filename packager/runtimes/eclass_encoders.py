"""The E-class exporter's encoders (issue 20, item 4): a Gemma 4 or Gemma 3n model's vision and audio encoders, each
with its projection into the text decoder's embedding space, as ONNX graphs of their own (vision.onnx, audio.onnx)
that a bundle loads when an input of their kind arrives and releases after. Run in the `genai` exporter environment
(transformers 5.x), a copy of this file beside runtimes/eclass_export.py: packager is not installed there.

- Gemma 4's: one input per graph at the processor's largest size, padded: an image as max_soft_tokens x pooling^2
  patches (280 x 9 = 2,520 by default), positions (-1, -1) for padding; audio as the feature extractor's longest
  clip (30 s: 3,000 frames of 128 mel bins) with its mask. Out: the soft tokens of the real input, [tokens, text
  hidden], each the embedding of one placeholder token of the prompt.
- Gemma 4's vision encoder's attention is bidirectional over every patch: as traced from transformers (eager), its
  scores are [heads, patches, patches] in fp32 a layer, 12 x 2,520^2 x 4 B = 291 MiB, held twice (the scores, then their
  softmax), and a run of one image peaked at 2,502 MiB. Here the queries go in blocks of QUERY_BLOCK (the softmax is
  per query row, so the result is the same): 1,318 MiB in fp32, 548 MiB with int8 weights (E2B's encoder, 2,304
  patches, 2 threads; the audio encoder's attention is already local, chunks of 12 frames).
- A Gemma 3n model's encoders are runtimes/eclass_encoders_3n.py's (export_checkpoint_3n): graphs of the rows
  transformers' Gemma3nModel puts in the prompt, the end token's (a hard embedding of the encoder's own table) the
  last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from eclass_checkpoint import Refused

QUERY_BLOCK = 256       # a block's scores: heads x QUERY_BLOCK x patches (12 x 256 x 2,520 x 4 B = 30 MiB)
ATTENTION = "packager_blocked"
OPSET = 17
AUDIO_FRAMES = 3000     # Gemma 4's feature extractor: at most 480,000 samples at 16 kHz, a frame each 10 ms


def blocked_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' eager attention ([batch, heads, positions, size] in, [batch, positions, heads, size] out) with
    the queries in blocks: one block's scores at a time."""
    scale = module.head_dim**-0.5 if scaling is None else scaling
    outs = []
    for start in range(0, query.shape[2], QUERY_BLOCK):
        scores = torch.matmul(query[:, :, start:start + QUERY_BLOCK], key.transpose(2, 3)) * scale
        if attention_mask is not None:   # [batch, 1, queries or 1, keys]
            rows = attention_mask.shape[2] > 1
            scores = scores + (attention_mask[:, :, start:start + QUERY_BLOCK] if rows else attention_mask)
        outs.append(torch.matmul(torch.softmax(scores, dim=-1), value))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


class VisionEncoder(torch.nn.Module):
    """Gemma4Model.get_image_features: patches and their positions in, the image's soft tokens out (the vision tower
    strips the padding patches' tokens)."""

    def __init__(self, tower: Any, embedder: Any) -> None:
        super().__init__()
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, blocked_attention)
        self.tower, self.embedder = tower, embedder
        self.tower.config._attn_implementation = ATTENTION

    def forward(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor) -> torch.Tensor:
        from unittest import mock

        from transformers.models.gemma4 import modeling_gemma4

        # transformers drops the padding mask of an image with none (as the trace's is): the graph keeps it
        with mock.patch.object(modeling_gemma4, "create_bidirectional_mask", local_mask):
            hidden = self.tower(pixel_values=pixel_values, pixel_position_ids=pixel_position_ids).last_hidden_state
        tokens: torch.Tensor = self.embedder(inputs_embeds=hidden)
        return tokens


class AudioEncoder(torch.nn.Module):
    """Gemma4Model.get_audio_features: mel frames and their mask in, the clip's soft tokens out (the real frames')."""

    def __init__(self, tower: Any, embedder: Any) -> None:
        super().__init__()
        self.tower, self.embedder = tower, embedder

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor) -> torch.Tensor:
        from unittest import mock

        from transformers.models.gemma4 import modeling_gemma4

        with mock.patch.object(modeling_gemma4, "create_bidirectional_mask", local_mask), \
                mock.patch.object(modeling_gemma4.Gemma4AudioAttention, "_extract_block_context", block_context):
            out = self.tower(input_features, input_features_mask, return_dict=True)
        tokens: torch.Tensor = self.embedder(inputs_embeds=out.last_hidden_state)[out.attention_mask]
        return tokens


ENCODERS = {"image": ("vision_config", "vision_tower", "embed_vision", VisionEncoder),
            "audio": ("audio_config", "audio_tower", "embed_audio", AudioEncoder)}


def encoders_of(model: Any) -> dict[str, torch.nn.Module]:
    """A Gemma4ForConditionalGeneration's encoders by mode (those its config has)."""
    inner = model.model
    return {mode: cls(getattr(inner, tower), getattr(inner, embed)).eval()
            for mode, (key, tower, embed, cls) in ENCODERS.items() if getattr(model.config, key, None) is not None}


def block_context(attn: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma4AudioAttention's and Gemma3nAudioAttention's _extract_block_context ([batch, blocks, context, ...]: each
    block's window of context_size frames, a block every chunk_size, of [batch, frames, ...]: the keys, the values,
    Gemma 3n's mask too) by indices: its Tensor.unfold has no ONNX export here. Zeros (False) pad the frames."""
    def zeros(n: int) -> torch.Tensor:
        return hidden.new_zeros((hidden.shape[0], n, *hidden.shape[2:]))

    padded = torch.cat([zeros(attn.max_past_horizon), hidden,
                        zeros(attn.max_future_horizon + attn.chunk_size - 1)], dim=1)
    blocks = (padded.shape[1] - attn.context_size) // attn.chunk_size + 1
    index = torch.arange(blocks)[:, None] * attn.chunk_size + torch.arange(attn.context_size)[None, :]
    return padded[:, index]


def local_mask(config: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               and_mask_function: Any = None, **kwargs: Any) -> torch.Tensor:
    """transformers' create_bidirectional_mask as the encoders call it, 0 where a position may attend and the dtype's
    minimum elsewhere, in tensor ops and always: transformers builds it with vmap, which torch's ONNX tracer cannot
    follow, and leaves it out where nothing is masked, which a trace would keep. [batch, 1, 1, positions] where only
    padding is masked (the vision encoder's: a row, not a square of 2,520^2), [batch, 1, positions, positions] with
    `and_mask_function` (the audio encoder's window)."""
    frames = inputs_embeds.shape[1]
    queries, keys = torch.arange(frames)[:, None], torch.arange(frames)[None, :]
    allowed = attention_mask[:, None, None, :].bool()
    if and_mask_function is not None:
        allowed = allowed & and_mask_function(0, 0, queries, keys)[None, None]
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(torch.finfo(inputs_embeds.dtype).min))


def vision_inputs(vision: Any, soft_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's inputs at `soft_tokens` x pooling^2 patches, on the most nearly square grid of that many tokens
    (280: 14 x 20 tokens, 42 x 60 patches), with no padding: the processor's largest image. `vision`: the
    vision_config."""
    rows = max(r for r in range(1, int(soft_tokens**0.5) + 1) if soft_tokens % r == 0)
    k = vision.pooling_kernel_size
    height, width = rows * k, soft_tokens // rows * k
    grid = torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), dim=-1)
    pixels = torch.rand(1, height * width, 3 * vision.patch_size**2)
    return pixels, grid.reshape(1, -1, 2)


def audio_inputs(frames: int = AUDIO_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, frames, 128), torch.ones(1, frames, dtype=torch.bool)


def load_encoders(source: Path) -> dict[str, torch.nn.Module]:
    """The encoders of the checkpoint in `source` by mode, each tower and its projection built from config.json and
    loaded from the safetensors files (model.vision_tower.*, model.embed_vision.*, ...), nothing else read: the text
    decoder's tables stay on disk."""
    from transformers import AutoConfig
    from transformers.models.gemma4 import modeling_gemma4 as g4

    config = AutoConfig.from_pretrained(source)
    builders = {"image": (g4.Gemma4VisionModel, "vision_tower", "embed_vision", config.vision_config),
                "audio": (g4.Gemma4AudioModel, "audio_tower", "embed_audio", config.audio_config)}
    found: dict[str, torch.nn.Module] = {}
    for mode, (tower_class, tower, embed, sub) in builders.items():
        if sub is None:
            continue
        parts = load_parts(source, {tower: tower_class(sub),
                                    embed: g4.Gemma4MultimodalEmbedder(sub, config.text_config)})
        found[mode] = ENCODERS[mode][3](parts[tower], parts[embed]).eval()
    return found


def load_parts(source: Path, parts: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Each module of `parts` (by its name under model.: vision_tower, embed_audio, ...) loaded from the checkpoint's
    safetensors files in fp32, only its own tensors read; the modules."""
    from safetensors import safe_open

    files = sorted(source.glob("*.safetensors"))
    for name, module in parts.items():
        prefix = f"model.{name}."
        state: dict[str, torch.Tensor] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                state |= {k.removeprefix(prefix): f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise Refused(f"{source}: the checkpoint's {prefix}* tensors do not make transformers' "
                          f"{type(module).__name__} (missing {missing[:3]}, unexpected {unexpected[:3]}); save the "
                          "model with save_pretrained.")
    return {name: module.float() for name, module in parts.items()}


def export_graph(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, names: list[str],
                 dynamic: dict[str, dict[int, str]]) -> None:
    """`module` traced into `path`, its output soft_tokens. Weights inline; past protobuf's 2 GiB (E2B's Gemma 3n
    audio encoder: 681M parameters, 2.6 GiB in fp32), where torch writes each weight and constant in a file of its
    own beside the graph, in one file, <name>.data, as packager's recipes write theirs."""
    import tempfile

    import onnx

    path.with_name(f"{path.name}.data").unlink(missing_ok=True)   # onnx.save would append to it
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        traced = Path(folder) / path.name
        with torch.no_grad():
            torch.onnx.export(module, inputs, str(traced), input_names=names, output_names=["soft_tokens"],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        if len(list(Path(folder).iterdir())) == 1:
            traced.replace(path)
        else:
            onnx.save(onnx.load(str(traced)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=f"{path.name}.data")


def export_encoders(encoders: dict[str, Any], out: Path, soft_tokens: int = 280) -> dict[str, str]:
    """Each encoder's graph in `out` (weights inline: the largest, E2B's audio encoder, is 1.2 GB in fp32), by mode;
    an image at `soft_tokens` (the processor's max_soft_tokens)."""
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for mode, encoder in encoders.items():
        name = "vision.onnx" if mode == "image" else "audio.onnx"
        vision = encoder.tower.config if mode == "image" else None
        inputs = vision_inputs(vision, soft_tokens) if mode == "image" else audio_inputs()
        names = ["pixel_values", "pixel_position_ids"] if mode == "image" else ["input_features",
                                                                                "input_features_mask"]
        export_graph(encoder, inputs, out / name, names, {"soft_tokens": {0: "tokens"}})
        made[mode] = name
    return made


ENCODERS_DIR = "encoders"   # beside model.onnx in the export: each encoder's graph, its weights inline
# Gemma4ImageProcessor's defaults; the patch and pooling sizes are the vision_config's where it has them
IMAGE_PRE = {"patch_size": 16, "max_soft_tokens": 280, "pooling_kernel_size": 3, "rescale_factor": 1 / 255}


def export_checkpoint(source: Path, out: Path) -> dict[str, dict[str, Any]]:
    """A multimodal Gemma 4 checkpoint's encoders as graphs in out/ENCODERS_DIR, by mode, each with what its loop
    needs (runtime.io.soft.encoders): its file, its placeholder token and the tokens around an input's run of them
    (the config's, transformers' defaults where it leaves them out), and its processor's figures (the saved
    processor's, the defaults otherwise; `processor` names the family's). A Gemma 3n checkpoint's vision and audio
    encoders (eclass_encoders_3n.export_checkpoint_3n). {} for another model."""
    from transformers import AutoConfig

    model_type = json.loads((source / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type == "gemma3n":
        from eclass_encoders_3n import export_checkpoint_3n

        specs: dict[str, dict[str, Any]] = export_checkpoint_3n(source, out)
        return specs
    if model_type != "gemma4":
        return {}
    config = AutoConfig.from_pretrained(source)
    image_pre, audio_pre = saved_processor(source)
    vision = config.vision_config
    defaults = IMAGE_PRE | ({"patch_size": vision.patch_size, "pooling_kernel_size": vision.pooling_kernel_size}
                            if vision is not None else {})
    image_pre = {k: image_pre.get(k, v) for k, v in defaults.items()} | {"processor": "gemma4"}
    audio_pre = audio_pre | {"processor": "gemma4"}
    files = export_encoders(load_encoders(source), out / ENCODERS_DIR, int(image_pre["max_soft_tokens"]))
    tokens = {"image": ("image_token_id", "boi_token_id", "eoi_token_id", image_pre),
              "audio": ("audio_token_id", "boa_token_id", "eoa_token_index", audio_pre)}
    return {mode: {"file": f"{ENCODERS_DIR}/{name}", "token_id": int(getattr(config, tokens[mode][0])),
                   "begin": int(getattr(config, tokens[mode][1])), "end": int(getattr(config, tokens[mode][2])),
                   "pre": tokens[mode][3]} for mode, name in files.items()}


def saved_processor(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image processor's and the feature extractor's saved figures: processor_config.json's image_processor and
    feature_extractor, or a flat preprocessor_config.json (the image processor's)."""
    found: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (source / name).is_file():
            found |= json.loads((source / name).read_text(encoding="utf-8"))
    image, audio = found.get("image_processor"), found.get("feature_extractor")
    return (image if isinstance(image, dict) else found), (audio if isinstance(audio, dict) else {})
