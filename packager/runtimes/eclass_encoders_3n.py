"""The E-class exporter's Gemma 3n encoders (eclass_encoders.export_checkpoint's for a gemma3n checkpoint): its vision
encoder (timm's MobileNet-V5) and its audio encoder (a USM conformer), each with its projection into the text
decoder's embedding space (embed_vision, embed_audio), as graphs of their own (encoders/vision.onnx, audio.onnx).
Run in the `genai` exporter environment, a copy of this file beside eclass_encoders.py.

Each graph gives the rows transformers' Gemma3nModel.forward puts in the prompt: at the input's placeholders, then
at its end token, whose embedding is the encoder's own table's (a hard embedding: ids from embed_vision's
vocab_offset up read embed_vision, from embed_audio's embed_audio), not the text table's; the loop puts that last
row at the end token (the spec's `end_row`).

- Vision (Vision3nEncoder): pixel_values [1, 3, H, W], the image processor's (SiglipImageProcessor: resized to its
  `size`, 768 x 768 in the published checkpoints, rescaled, normalized where its do_normalize says), in; out the
  vision_soft_tokens_per_image (256) rows of get_image_features (the tower's last hidden state, a grid of 16 x 16
  at 768, each position a row) and eoi's. The image is always resized to the one size: no padding. Traced with its
  fusion adapter's pooling kernel as constants (StaticPooling).
- Audio (Audio3nEncoder): the prompt always holds audio_soft_tokens_per_image (188) placeholders; past the clip's
  soft tokens transformers puts the padding embedding (embed_audio's row of the text vocabulary's last id) there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from eclass_checkpoint import Refused
from eclass_encoders import (
    ENCODERS_DIR,
    audio_inputs,
    block_context,
    export_graph,
    load_parts,
    saved_processor,
)

AUDIO_SAMPLES = 480_000  # Gemma3nAudioFeatureExtractor's max_length (30 s at 16 kHz): its longest clip
# The published checkpoints' image size (their preprocessor_config.json's `size`); SiglipImageProcessor's, whose
# other figures are the defaults, is 224
IMAGE_SIZE = {"height": 768, "width": 768}


class Vision3nEncoder(torch.nn.Module):
    """Gemma3nModel.forward's rows of an image in the prompt, [soft_tokens + 1, text hidden]: pixel_values
    [1, 3, height, width] in; out the `soft_tokens` rows get_image_features gives (the tower's last hidden state,
    [1, hidden, rows, columns], a row a grid position, times sqrt(hidden), through embed_vision's soft path), then
    the end token's hard embedding (embed_vision's row of `end_id`), which transformers puts at that token."""

    def __init__(self, tower: Any, embedder: Any, soft_tokens: int, end_id: int) -> None:
        super().__init__()
        self.tower, self.embedder, self.soft_tokens = tower, embedder, soft_tokens
        self.register_buffer("end_ids", torch.tensor([[end_id]]), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from unittest import mock

        from timm.models import mobilenetv5

        with mock.patch.object(mobilenetv5, "F", StaticPooling()):
            hidden = self.tower(pixel_values=pixel_values, do_pooling=False, return_dict=True).last_hidden_state
        size = self.embedder.multimodal_hidden_size
        grid = tuple(int(n) for n in hidden.shape[2:])   # Python ints in the trace: the input's size is fixed
        if int(hidden.shape[1]) != size or grid[0] * grid[1] != self.soft_tokens:
            raise Refused(f"the vision tower makes a {hidden.shape[1]} x {grid[0]} x {grid[1]} grid of an image of "
                          f"{pixel_values.shape[2]} x {pixel_values.shape[3]} and the prompt holds "
                          f"{self.soft_tokens} placeholders of {size} (vision_soft_tokens_per_image, "
                          "vision_config.hidden_size): the image processor's size does not fit the tower; set "
                          "preprocessor_config.json's size to the tower's input.")
        tokens = hidden.reshape(1, size, self.soft_tokens).permute(0, 2, 1) * size**0.5
        end = self.embedder(input_ids=self.end_ids)[0]
        return torch.cat([self.embedder(inputs_embeds=tokens)[0], end])


class Audio3nEncoder(torch.nn.Module):
    """Gemma3nModel.forward's rows of a clip in the prompt, [soft_tokens + 1, text hidden]: mel frames and their mask
    in (True: a real frame, as Gemma3nAudioFeatureExtractor gives it; the inverse of the tower's mask); out the
    `soft_tokens` rows it scatters into the placeholders (the tower's through embed_audio, the padding embedding,
    embed_audio's row of `pad_id`, at the masked ones and after the last), then the end token's hard embedding
    (embed_audio's row of `end_id`), which transformers puts at that token.

    The clip is the frames up to its last real one (the feature extractor masks none before it). The subsampling's
    second convolution reads 2 rows past each of its output's (transformers pads the time axis after): on the clip
    alone, zeros past the first convolution's last row; on the padded input, that convolution's rows of the zero
    frames, which its cumulative norm makes other than zero. Those rows are zeroed, as the clip's last soft token
    reads them (at a clip of 993 frames, 0.009 off in a tiny model)."""

    def __init__(self, tower: Any, embedder: Any, soft_tokens: int, pad_id: int, end_id: int) -> None:
        super().__init__()
        self.tower, self.embedder, self.soft_tokens = tower, embedder, soft_tokens
        self.register_buffer("hard_ids", torch.tensor([[pad_id, end_id]]), persistent=False)

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor) -> torch.Tensor:
        from unittest import mock

        from transformers.models.gemma3n import modeling_gemma3n

        frames = torch.arange(1, input_features.shape[1] + 1)
        last = torch.where(input_features_mask[0], frames, 0).max()   # the clip's frames
        convs = self.tower.subsample_conv_projection
        stride = int(convs.conv_0.conv.stride[0])

        def clip_only(module: Any, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            rows = args[0]   # [batch, channels, time, frequency]: the first convolution's, of the clip where < last
            inside = torch.arange(rows.shape[2]) * stride < last
            return (torch.where(inside[None, None, :, None], rows, 0.0),)

        hook = convs.conv_1.register_forward_pre_hook(clip_only)
        try:
            with mock.patch.object(modeling_gemma3n.Gemma3nAudioAttention, "_extract_block_context", block_context):
                out = self.tower(input_features, ~input_features_mask, return_dict=True)
        finally:
            hook.remove()
        tokens = self.embedder(inputs_embeds=out.last_hidden_state)[0]
        pad, end = self.embedder(input_ids=self.hard_ids)[0].split(1)
        tokens = torch.where(out.audio_mel_mask[0, :, None], pad, tokens)
        extra = self.soft_tokens - tokens.shape[0]   # a Python int in the trace: the input's frames are fixed
        if extra < 0:
            raise Refused(f"the audio encoder makes {tokens.shape[0]} soft tokens of the longest clip and the "
                          f"prompt holds {self.soft_tokens} placeholders; set audio_soft_tokens_per_image to the "
                          "encoder's count in config.json.")
        return torch.cat([tokens, pad.expand(extra, -1), end])


class StaticPooling:
    """torch.nn.functional as timm's MobileNet-V5 module calls it, but avg_pool2d's kernel and stride Python ints: its
    fusion adapter (MobileNetV5MultiScaleFusionAdapter) pools its grid to the output's (48 x 48 to 16 x 16 at 768)
    with a kernel it computes from its input's shape, which the tracer keeps as tensors, and ONNX's AveragePool takes
    constants. The same pooling (the input's size is fixed)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.nn.functional, name)

    @staticmethod
    def avg_pool2d(img: torch.Tensor, kernel_size: Any, stride: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(img, [int(k) for k in kernel_size], [int(s) for s in stride],
                                              *args, **kwargs)


def load_vision_3n(source: Path, config: Any) -> Vision3nEncoder:
    """A Gemma 3n checkpoint's vision encoder (the tower as transformers builds it from vision_config, timm's
    MobileNet-V5 in TimmWrapperModel, and embed_vision; loaded from their tensors alone), with the end of image's id,
    whose embed_vision row its graph gives last."""
    from transformers import AutoModel
    from transformers.models.gemma3n import modeling_gemma3n as g3n

    vision, text = config.vision_config, config.text_config
    parts = load_parts(source, {"vision_tower": AutoModel.from_config(vision),
                                "embed_vision": g3n.Gemma3nMultimodalEmbedder(vision, text)})
    hard = range(vision.vocab_offset, min(vision.vocab_offset + vision.vocab_size, config.audio_config.vocab_offset))
    if config.eoi_token_id not in hard or config.boi_token_id >= vision.vocab_offset:
        raise Refused(f"{source}: the image tokens are not where Gemma 3n keeps them (begin {config.boi_token_id} "
                      f"a text token, end {config.eoi_token_id} in embed_vision's ids "
                      f"{hard.start}-{hard.stop - 1}); the exporter takes the layout of Google's checkpoints, so "
                      "keep those ids as published.")
    return Vision3nEncoder(parts["vision_tower"], parts["embed_vision"], int(config.vision_soft_tokens_per_image),
                           int(config.eoi_token_id)).eval()


def image_pre_3n(source: Path) -> dict[str, Any]:
    """The image processor's figures (SiglipImageProcessor's: the saved ones over its defaults, IMAGE_SIZE for its
    size), and the processor's name for the device."""
    from transformers import SiglipImageProcessor

    defaults = SiglipImageProcessor().to_dict() | {"size": IMAGE_SIZE}
    image, _ = saved_processor(source)
    pre = {k: image.get(k, v) for k, v in defaults.items() if k != "image_processor_type"}
    size = pre["size"]
    if not isinstance(size, dict) or not {"height", "width"} <= set(size):
        raise Refused(f"{source}: the image processor's size is {size}; set it to a height and a width in "
                      "preprocessor_config.json, as Gemma 3n's.")
    # JSON's own types (the resampling filter is PIL's enum, the mean and deviation tuples)
    plain: dict[str, Any] = json.loads(json.dumps({k: int(v) if k == "resample" and v is not None else v
                                                   for k, v in pre.items()}))
    return plain | {"processor": "gemma3n"}


def load_audio_3n(source: Path, config: Any) -> Audio3nEncoder:
    """A Gemma 3n checkpoint's audio encoder (Gemma3nAudioEncoder and embed_audio, built from config.json and loaded
    from their tensors alone), with the ids whose embed_audio rows its graph gives: the padding (the text vocabulary's
    last id) and the end of audio."""
    from transformers.models.gemma3n import modeling_gemma3n as g3n

    audio, text = config.audio_config, config.text_config
    parts = load_parts(source, {"audio_tower": g3n.Gemma3nAudioEncoder(audio),
                                "embed_audio": g3n.Gemma3nMultimodalEmbedder(audio, text)})
    pad_id, hard = text.vocab_size - 1, range(audio.vocab_offset, audio.vocab_offset + audio.vocab_size)
    # transformers embeds ids from the vision offset up with embed_vision or embed_audio, not the text table
    if pad_id not in hard or config.eoa_token_id not in hard or \
            config.boa_token_id >= min(config.vision_config.vocab_offset, audio.vocab_offset):
        raise Refused(f"{source}: the audio tokens are not where Gemma 3n keeps them (begin {config.boa_token_id} "
                      f"a text token, end {config.eoa_token_id} and the padding {pad_id} in embed_audio's ids "
                      f"{hard.start}-{hard.stop - 1}); the exporter takes the layout of Google's checkpoints, so "
                      "keep those ids as published.")
    return Audio3nEncoder(parts["audio_tower"], parts["embed_audio"], int(config.audio_soft_tokens_per_image),
                          pad_id, int(config.eoa_token_id)).eval()


def audio_pre_3n(source: Path) -> dict[str, Any]:
    """Gemma3nAudioFeatureExtractor's figures, the saved ones over its defaults (a published Gemma 3n saves them in
    preprocessor_config.json beside the image processor's), and the processor's name for the device."""
    from transformers import Gemma3nAudioFeatureExtractor

    defaults = Gemma3nAudioFeatureExtractor().to_dict()
    image, audio = saved_processor(source)
    saved = audio or image
    return {k: saved.get(k, v.tolist() if hasattr(v, "tolist") else v) for k, v in defaults.items()
            if k != "feature_extractor_type"} | {"processor": "gemma3n"}


def frames_3n(pre: dict[str, Any]) -> int:
    """The frames of the feature extractor's longest clip: a frame of frame_length + 1 samples every hop_length
    (2,997 at its defaults)."""
    return (AUDIO_SAMPLES - int(pre["frame_length"]) - 1) // int(pre["hop_length"]) + 1


def export_checkpoint_3n(source: Path, out: Path) -> dict[str, dict[str, Any]]:
    """A Gemma 3n checkpoint's encoders (those config.json has: vision_config, audio_config) as export_checkpoint
    gives Gemma 4's, by mode, each spec's `end_row` saying that the graph's last row is the end token's. The image
    at the processor's size (the graph's only input size)."""
    from transformers import AutoConfig

    saved = json.loads((source / "config.json").read_text(encoding="utf-8"))
    if not saved.get("vision_config") and not saved.get("audio_config"):
        return {}
    config, folder, specs = AutoConfig.from_pretrained(source), out / ENCODERS_DIR, {}
    folder.mkdir(parents=True, exist_ok=True)
    if saved.get("vision_config"):
        pre = image_pre_3n(source)
        pixels = torch.rand(1, 3, int(pre["size"]["height"]), int(pre["size"]["width"]))
        export_graph(load_vision_3n(source, config), (pixels,), folder / "vision.onnx", ["pixel_values"], {})
        specs["image"] = {"file": f"{ENCODERS_DIR}/vision.onnx", "token_id": int(config.image_token_id),
                          "begin": int(config.boi_token_id), "end": int(config.eoi_token_id), "end_row": True,
                          "pre": pre}
    if saved.get("audio_config"):
        pre = audio_pre_3n(source)
        export_graph(load_audio_3n(source, config), audio_inputs(frames_3n(pre)), folder / "audio.onnx",
                     ["input_features", "input_features_mask"], {})
        specs["audio"] = {"file": f"{ENCODERS_DIR}/audio.onnx", "token_id": int(config.audio_token_id),
                          "begin": int(config.boa_token_id), "end": int(config.eoa_token_id), "end_row": True,
                          "pre": pre}
    return specs
