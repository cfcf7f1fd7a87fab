"""Tiny encoder-decoder samples built locally: `sample:tiny-whisper` (speech) and `sample:tiny-vision`
(image captioning: a ViT encoder feeding a GPT-2 decoder), and `sample:tiny-t5` (text to text).

They are made at first use from small configs with a fixed seed (random weights: only their shapes
matter, and the verify metric, teacher-forced token agreement and logits cosine against the fp32
reference, works on random weights), a small byte-level BPE tokenizer trained on a fixed corpus, and
the pre-processing config the device needs (log-mel or image). The folder lives under
$PACKAGER_CACHE_DIR/samples/<name>-<BUILD_VERSION> and is written atomically (a temporary folder
renamed into place), so two runs never see half a sample. Same torch and transformers versions,
same bytes: the export cache keys on the folder's hash like any other model's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager.errors import ExitCode, PackagerError
from packager.export_process import quiet
from packager.leftovers import CACHE_PARTIAL, cache_partial, sweep
from packager.paths import cache_dir

# Bump when a builder changes what it writes: the new folder gets a new name.
BUILD_VERSION = 1
VOCAB = 512
CORPUS = [
    "The function returns the value of the attribute, or None if it is not set.",
    "In the beginning of the program, the configuration file is read and checked.",
    "A cat sits on a red chair next to the window in the morning light.",
    "Two people walk along the river with a small dog on a long lead.",
    "Please turn the volume down and open the settings for the speaker.",
    "Translate English to German: the house is wonderful and the garden is green.",
]
SPECIAL = ["<s>", "</s>", "<pad>", "<|startoftranscript|>"]


def _tokenizer(folder: Path, max_length: int) -> None:
    """A byte-level BPE of VOCAB tokens; ids 0-3 are SPECIAL (bos, eos, pad, Whisper's start)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
         "model_max_length": max_length}), encoding="utf-8")


def _whisper(folder: Path) -> None:
    """Whisper's architecture at d_model 64, one layer each side, 80 mel bins over 30 s (3000 frames, as
    the exporter's dummy inputs require), 448 decoder positions as the real models have."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=VOCAB, num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=64,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                           bos_token_id=0, eos_token_id=1, pad_token_id=2, decoder_start_token_id=3,
                           suppress_tokens=[], begin_suppress_tokens=[])
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    _tokenizer(folder, 448)


def _vision(folder: Path) -> None:
    """A VisionEncoderDecoderModel: ViT (32x32 images, 8x8 patches, hidden 64, one layer) feeding a GPT-2
    decoder with cross-attention (hidden 64, one layer, 128 positions)."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    encoder = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=128)
    decoder = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=1, n_head=4, n_positions=128, add_cross_attention=True,
                         is_decoder=True, bos_token_id=0, eos_token_id=1)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = 0, 1, 2
    VisionEncoderDecoderModel(config=config).save_pretrained(folder)
    # ViTImageProcessor's own save needs Pillow; its config is plain JSON (what the device reads).
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
         "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, indent=1), encoding="utf-8")
    _tokenizer(folder, 128)


def _t5(folder: Path) -> None:
    """T5's architecture at d_model 64, one layer each side, relative attention."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_decoder_layers=1,
                      num_heads=4, decoder_start_token_id=2, pad_token_id=2, eos_token_id=1, bos_token_id=0,
                      n_positions=256)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    _tokenizer(folder, 256)


BUILDERS: dict[str, Callable[[Path], None]] = {"tiny-whisper": _whisper, "tiny-vision": _vision, "tiny-t5": _t5}


def built_sample(name: str) -> Path:
    """The folder of the built sample `name`, made (deterministically, seed 0) at first use."""
    folder = cache_dir() / "samples" / f"{name}-{BUILD_VERSION}"
    if (folder / "config.json").is_file():
        return folder
    try:
        import torch
    except ImportError:
        raise PackagerError(f"sample:{name} is built with torch and transformers, which are not installed; run: "
                            "pip install 'packager[hf]'.", ExitCode.MISSING_DEPENDENCY) from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep(folder.parent, CACHE_PARTIAL)
    tmp = cache_partial(folder.parent, f"{name}-")
    try:
        torch.manual_seed(0)
        _quiet_build(BUILDERS[name], tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another run built it first: theirs is the same
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _quiet_build(builder: Callable[[Path], None], folder: Path) -> None:
    with quiet():
        builder(folder)


def config_of(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return config
