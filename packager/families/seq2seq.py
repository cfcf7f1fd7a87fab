"""Encoder-decoders (speech to text, image to text, text to text; the io's `modality` says which): an encoder
and a decoder with its KV cache, loaded together. The samples are raw inputs the device's user would have
(packager/families/media.py); they are judged end to end on what they generate."""

from __future__ import annotations

import json
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from packager.errors import ExitCode, PackagerError
from packager.families.base import Export, Family, eos_token_ids, max_length, step

if TYPE_CHECKING:
    from packager.context_view import FamilyContext
    from packager.records import Io

# Encoder-decoder exports (optimum's *-with-past seq2seq tasks) write four graphs: the encoder, the
# decoder's first step (no cache), its later steps (with the cache) and both decoders merged into one
# graph that switches on `use_cache_branch` and holds their shared weights once. The bundle ships the
# encoder and the merged decoder: the two unmerged decoders are the same weights a second and a third
# time, which the device would hold twice over for nothing. Component name -> file in the export.
SEQ2SEQ_COMPONENTS = {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}
SEQ2SEQ_MERGED = ("decoder_model.onnx", "decoder_with_past_model.onnx")
SEQ2SEQ_MODALITY = {"automatic-speech-recognition-with-past": "audio", "image-to-text-with-past": "image",
                    "text2text-generation-with-past": "text"}   # task -> what the encoder reads


class EncoderDecoder(Family):
    """An encoder-decoder exported as two graphs (encoder, decoder-with-past): one family for every modality,
    vision encoder-decoders included (io modality "image"), as the manifest names them all "seq2seq"."""

    name: ClassVar[str] = "seq2seq"
    title: ClassVar[str] = "an encoder-decoder"
    needs_tokenizer: ClassVar[bool] = True
    generates: ClassVar[bool] = True
    has_components: ClassVar[bool] = True
    files: ClassVar[str] = "text"             # shares the text family's tokenizer pin and sentences
    texts_file: ClassVar[str | None] = "samples.txt"
    eval_fix: ClassVar[str] = "no --eval (an encoder-decoder's generations are not judged by eval cases yet)"
    metric: ClassVar[str] = "token agreement"

    def claims(self, export: Export) -> bool:
        return export.task in SEQ2SEQ_MODALITY

    def describe_io(self, export: Export) -> dict[str, Any]:
        """Each component's inputs and outputs, the decoder's KV cache (its own and the cross-attention's), the
        decoder's start tokens and what the encoder's raw input needs first."""
        config = json.loads((export.source / "config.json").read_text(encoding="utf-8"))
        components: dict[str, dict[str, Any]] = {}
        for name, file in SEQ2SEQ_COMPONENTS.items():
            inputs, outputs = export.signature_of(file)
            components[name] = {"export": file, "inputs": inputs, "outputs": outputs}
        decoder_inputs = components["decoder"]["inputs"]
        past = [i for i in decoder_inputs if i["name"].startswith("past_key_values.")]
        own = [i for i in past if ".encoder." not in i["name"]]
        _, heads, _, head_dim = own[0]["shape"]
        modality = SEQ2SEQ_MODALITY[export.task]
        start = _config_value(config, "decoder_start_token_id")
        if start is None:
            raise PackagerError(f"{export.source}/config.json has no decoder_start_token_id, so the decoder cannot "
                                "start; add it (the token generation starts from).", ExitCode.BAD_INPUT)
        positions = _config_value(config, "max_target_positions", "n_positions", "max_position_embeddings")
        components["decoder"]["merges"] = list(SEQ2SEQ_MERGED)
        return {
            "kind": self.name,
            "modality": modality,
            "components": components,
            "inputs": components["encoder"]["inputs"],
            "outputs": components["decoder"]["outputs"],
            "checked_outputs": ["logits"],
            "primary_outputs": ["logits"],
            "tokenizer": "model/tokenizer.json",
            "max_length": int(positions) if positions else max_length(export.source),
            "eos_token_ids": eos_token_ids(export.source),
            "decoder_start_ids": [int(start)],
            "kv": {"layers": len(own) // 2, "heads": heads, "head_dim": head_dim, "dtype": own[0]["dtype"],
                   "cross_attention_cached": len(past) > len(own)},
            "preprocess": _preprocess(export, modality, config),
        }

    def make_samples(self, ctx: FamilyContext, rt: ModuleType) -> None:
        step("packager.families.media:media_samples")(ctx, rt, self.texts())

    def verify(self, ctx: FamilyContext, rt: ModuleType, reference: Any, packaged: Any) -> None:
        step("packager.families.verification:verify_seq2seq")(ctx, rt, packaged)

    def run_arguments(self, io: Io, samples: str) -> str:
        return {"audio": f"{samples}/sweep.wav --max-new-tokens 32     # any 16-bit PCM WAV",
                "image": f"{samples}/gradient.png --max-new-tokens 32  # any 8-bit PNG",
                }.get(io.modality or "", '"some text" --max-new-tokens 32')


def _config_value(config: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` set in config.json, at its top level or in its decoder's section."""
    for section in (config, config.get("decoder") or {}):
        for key in keys:
            if section.get(key) is not None:
                return section[key]
    return None


def _preprocess(export: Export, modality: str, config: dict[str, Any]) -> dict[str, Any]:
    """What the device does to raw input before the encoder (run.py's audio_features, image_pixels)."""
    path = export.folder / "preprocessor_config.json"
    pre = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if modality == "audio":
        return {"sampling_rate": int(pre.get("sampling_rate", 16000)), "n_fft": int(pre.get("n_fft", 400)),
                "hop_length": int(pre.get("hop_length", 160)),
                "feature_size": int(pre.get("feature_size", config.get("num_mel_bins", 80))),
                "n_samples": int(pre.get("n_samples", 480000)), "padding_value": float(pre.get("padding_value", 0.0))}
    if modality == "image":
        encoder = config.get("encoder") or {}
        side = int(encoder.get("image_size", 224))
        size = pre.get("size") or {}
        return {"height": int(size.get("height", side)), "width": int(size.get("width", side)),
                "rescale_factor": float(pre.get("rescale_factor", 1 / 255)),
                "mean": [float(v) for v in pre.get("image_mean", [0.5, 0.5, 0.5])],
                "std": [float(v) for v in pre.get("image_std", [0.5, 0.5, 0.5])],
                "channels": int(encoder.get("num_channels", 3))}
    return {}
