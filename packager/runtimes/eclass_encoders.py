"""The E-class exporter's encoders (issue 20, item 4): a Gemma 4 model's vision and audio encoders, each with its
projection into the text decoder's embedding space, as ONNX graphs of their own (vision.onnx, audio.onnx) that a
bundle loads when an input of their kind arrives and releases after. Run in the `genai` exporter environment
(transformers 5.x), a copy of this file beside runtimes/eclass_export.py: packager is not installed there.

- One input per graph at the processor's largest size, padded: an image as max_soft_tokens x pooling^2 patches
  (280 x 9 = 2,520 by default), positions (-1, -1) for padding; audio as the feature extractor's longest clip (30 s:
  3,000 frames of 128 mel bins) with its mask. Out: the soft tokens of the real input, [tokens, text hidden], each
  the embedding of one placeholder token of the prompt.
- The vision encoder's attention is bidirectional over every patch: as traced from transformers (eager), its scores
  are [heads, patches, patches] in fp32 a layer, 12 x 2,520^2 x 4 B = 291 MiB, held twice (the scores, then their
  softmax), and a run of one image peaked at 2,502 MiB. Here the queries go in blocks of QUERY_BLOCK (the softmax is
  per query row, so the result is the same): 1,318 MiB in fp32, 548 MiB with int8 weights (E2B's encoder, 2,304
  patches, 2 threads; the audio encoder's attention is already local, chunks of 12 frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, start:start + QUERY_BLOCK]
        outs.append(torch.matmul(torch.softmax(scores, dim=-1), value))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


class VisionEncoder(torch.nn.Module):
    """Gemma4Model.get_image_features: patches and their positions in, the image's soft tokens out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, blocked_attention)
        self.model = model.model
        self.model.vision_tower.config._attn_implementation = ATTENTION

    def forward(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor) -> torch.Tensor:
        tokens = self.model.get_image_features(pixel_values, pixel_position_ids).pooler_output
        out: torch.Tensor = tokens[0] if isinstance(tokens, (tuple, list)) else tokens
        return out


class AudioEncoder(torch.nn.Module):
    """Gemma4Model.get_audio_features: mel frames and their mask in, the clip's soft tokens out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model.model

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor) -> torch.Tensor:
        from unittest import mock

        from transformers.models.gemma4 import modeling_gemma4  # type: ignore[import-not-found]

        with mock.patch.object(modeling_gemma4, "create_bidirectional_mask", local_mask), \
                mock.patch.object(modeling_gemma4.Gemma4AudioAttention, "_extract_block_context", block_context):
            out = self.model.get_audio_features(input_features, input_features_mask, return_dict=True)
        tokens: torch.Tensor = out.pooler_output[out.attention_mask]   # the real frames', as Gemma4Model keeps
        return tokens


def block_context(attn: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma4AudioAttention._extract_block_context ([batch, blocks, context, heads, size]: each block's window of
    context_size frames, a block every chunk_size) by indices: its Tensor.unfold has no ONNX export here."""
    padded = torch.nn.functional.pad(hidden, (0, 0, 0, 0, attn.max_past_horizon,
                                              attn.max_future_horizon + attn.chunk_size - 1))
    blocks = (padded.shape[1] - attn.context_size) // attn.chunk_size + 1
    index = torch.arange(blocks)[:, None] * attn.chunk_size + torch.arange(attn.context_size)[None, :]
    return padded[:, index]


def local_mask(config: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               and_mask_function: Any = None, **kwargs: Any) -> torch.Tensor:
    """transformers' create_bidirectional_mask as the audio encoder calls it ([batch, 1, frames, frames], 0 where a
    frame may attend, the dtype's minimum elsewhere) in tensor ops: transformers builds it with vmap, which torch's
    ONNX tracer cannot follow."""
    frames = inputs_embeds.shape[1]
    queries, keys = torch.arange(frames)[:, None], torch.arange(frames)[None, :]
    allowed = attention_mask[:, None, None, :].bool()
    if and_mask_function is not None:
        allowed = allowed & and_mask_function(0, 0, queries, keys)[None, None]
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(torch.finfo(inputs_embeds.dtype).min))


def vision_inputs(config: Any, soft_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's inputs at `soft_tokens` x pooling^2 patches, on the most nearly square grid of that many tokens
    (280: 14 x 20 tokens, 42 x 60 patches), with no padding: the processor's largest image."""
    vision = config.vision_config
    rows = max(r for r in range(1, int(soft_tokens**0.5) + 1) if soft_tokens % r == 0)
    k = vision.pooling_kernel_size
    height, width = rows * k, soft_tokens // rows * k
    grid = torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), dim=-1)
    pixels = torch.rand(1, height * width, 3 * vision.patch_size**2)
    return pixels, grid.reshape(1, -1, 2)


def audio_inputs(frames: int = AUDIO_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, frames, 128), torch.ones(1, frames, dtype=torch.bool)


def export_vision(model: Any, out: Path, soft_tokens: int = 280) -> Path:
    """vision.onnx (its weights in vision.onnx.data) in `out`."""
    path = out / "vision.onnx"
    with torch.no_grad():
        torch.onnx.export(VisionEncoder(model).eval(), vision_inputs(model.config, soft_tokens), str(path),
                          input_names=["pixel_values", "pixel_position_ids"], output_names=["soft_tokens"],
                          dynamic_axes={"soft_tokens": {0: "tokens"}}, opset_version=OPSET, dynamo=False,
                          external_data=True)
    return path


def export_audio(model: Any, out: Path, frames: int = AUDIO_FRAMES) -> Path:
    """audio.onnx (its weights in audio.onnx.data) in `out`."""
    path = out / "audio.onnx"
    with torch.no_grad():
        torch.onnx.export(AudioEncoder(model).eval(), audio_inputs(frames), str(path),
                          input_names=["input_features", "input_features_mask"], output_names=["soft_tokens"],
                          dynamic_axes={"soft_tokens": {0: "tokens"}}, opset_version=OPSET, dynamo=False,
                          external_data=True)
    return path
