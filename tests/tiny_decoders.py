"""Tiny decoder LLMs of each supported architecture, built locally from small configs with random
weights (only shapes matter where these are used) and a small byte-level BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VOCAB = 512
CORPUS = [
    "The function returns the value of the attribute, or None if it is not set.",
    "In the beginning of the program, the configuration file is read and checked.",
    "This module provides a way to use operating system dependent functionality.",
    "If the file does not exist, the open call raises an error that names it.",
    "The license grants you the right to copy, modify and distribute the software.",
    "A list of all the names defined in the module, sorted in alphabetical order.",
]

# Small configs per architecture: every Linear's input a multiple of 32 (block-wise int4).
CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "tie_word_embeddings": True},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "tie_word_embeddings": True},
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16, "max_position_embeddings": 256, "sliding_window": 128},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "head_dim": 16,
              "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "tie_word_embeddings": True},
    "gemma": {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_size": 64, "head_dim": 16,
              "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "pad_token_id": 1},
    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 64, "head_dim": 16,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 256, "sliding_window": 128, "query_pre_attn_scalar": 16, "pad_token_id": 1},
    "phi3": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 1,
             "max_position_embeddings": 256, "original_max_position_embeddings": 256},
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64, "head_dim": 16,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 256, "sliding_window": None},
    "granite": {"architectures": ["GraniteForCausalLM"], "model_type": "granite", "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 256, "tie_word_embeddings": True, "pad_token_id": 1,
                "embedding_multiplier": 2.0, "logits_scaling": 2.0, "residual_multiplier": 0.5,
                "attention_multiplier": 0.25},
    "smollm3": {"architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3", "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 256, "tie_word_embeddings": True, "pad_token_id": 1,
                "no_rope_layer_interval": 4},
    "olmo2": {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "pad_token_id": 1},
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 1, "n_head": 4,
             "n_positions": 256},
}


def make_tokenizer(folder: Path, max_length: int = 256) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "model_max_length": max_length}), encoding="utf-8")


def make_decoder(folder: Path, arch: str, seed: int = 0, **overrides: Any) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of a tiny `arch` decoder; `overrides`
    replace config entries (more layers or heads for a larger KV cache, more positions)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    spec = dict(CONFIGS[arch]) | overrides
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, **spec)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    make_tokenizer(folder, int(spec.get("max_position_embeddings", spec.get("n_positions", 256))))
    return folder


# An E-class Gemma 4 text decoder (issue 20): per-layer embeddings, the last layers KV-shared, sliding and full
# layers with their own head sizes, a window shorter than the test prompts. transformers 5.x only (the genai
# exporter environment builds it).
ECLASS: dict[str, Any] = {
    "architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text", "hidden_size": 64,
    "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 16, "intermediate_size": 128,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
    "global_head_dim": 32, "sliding_window": 8, "num_kv_shared_layers": 2, "use_double_wide_mlp": True,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
    "max_position_embeddings": 256, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
    "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
    # weights 10x transformers' default spread: logits far enough apart that 8-bit weights keep the greedy tokens
    # (at 0.02 they are near ties, and int8-dynamic kept 73% of them)
    "initializer_range": 0.2,
}

MAKE_ECLASS = """
import json, sys, torch
from transformers import Gemma4ForCausalLM, Gemma4TextConfig
spec = json.loads(sys.argv[2])
spec.pop("model_type")
torch.manual_seed(int(sys.argv[3]))
Gemma4ForCausalLM(Gemma4TextConfig(**spec)).save_pretrained(sys.argv[1])
"""


# Gemma 3n's E class: AltUp's four streams, LAuReL, activation sparsity on the first layers, and a per-layer table
# shorter than the vocabulary (E2B's: 262,144 rows of 262,400), so that some tokens read its row 0.
ECLASS_3N: dict[str, Any] = {
    "architectures": ["Gemma3nForCausalLM"], "model_type": "gemma3n_text", "hidden_size": 64,
    "vocab_size_per_layer_input": VOCAB // 2, "hidden_size_per_layer_input": 16, "intermediate_size": 128,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 8,
    "num_kv_shared_layers": 2, "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
    "laurel_rank": 8, "altup_num_inputs": 4, "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
    "max_position_embeddings": 256, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
    "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "initializer_range": 0.2,
}

# transformers starts AltUp's correct_output_scale at zero, which would cut the per-layer inputs off: those get
# random values too. The KV-shared layers' k/v projections go into the checkpoint, as Google's checkpoints carry them
# (transformers 5 makes none for those layers, and the exporter must load past them).
MAKE_ECLASS_3N = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig
spec = json.loads(sys.argv[2])
spec.pop("model_type")
torch.manual_seed(int(sys.argv[3]))
model = Gemma3nForCausalLM(Gemma3nTextConfig(**spec))
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("correct_output_scale"):
            p.normal_(0, 0.5)
model.save_pretrained(sys.argv[1])
path = sys.argv[1] + "/model.safetensors"
state = load_file(path)
h, kv = spec["hidden_size"], spec["num_key_value_heads"] * spec["head_dim"]
for i in range(spec["num_hidden_layers"] - spec["num_kv_shared_layers"], spec["num_hidden_layers"]):
    for proj in ("k_proj", "v_proj"):
        state[f"model.layers.{i}.self_attn.{proj}.weight"] = torch.randn(kv, h)
save_file(state, path, metadata={"format": "pt"})
"""


def make_eclass(folder: Path, python: Path, seed: int = 0, **overrides: Any) -> Path:
    """A Hugging Face folder of a tiny E-class Gemma 4 (ECLASS | overrides), or Gemma 3n where overrides name its
    model_type (ECLASS_3N | overrides), made by `python` (transformers 5.x)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    gemma3n = overrides.get("model_type") == "gemma3n_text"
    spec = (ECLASS_3N if gemma3n else ECLASS) | overrides
    subprocess.run([str(python), "-c", MAKE_ECLASS_3N if gemma3n else MAKE_ECLASS, str(folder), json.dumps(spec),
                    str(seed)], check=True, capture_output=True, timeout=600)
    make_tokenizer(folder, int(spec["max_position_embeddings"]))
    return folder
