"""The E-class exporter's checkpoint side (runs in the `genai` exporter environment beside runtimes/eclass_export.py,
a copy of both files: packager is not installed there): the text decoder loaded in fp32 with a stub per-layer
embedding table, the real table read from the safetensors file a slice at a time (CheckpointTensor), and verify's
PyTorch reference, which maps that table in its stored dtype."""

from __future__ import annotations

import json
import mmap
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STUB = 8                          # rows of the table the model loads and the trace sees (the ids it traces are 1-3)
PLE_WEIGHT = "embed_tokens_per_layer.weight"   # the table's name in the checkpoint (after any prefix)
TEXT_PREFIX = "model.language_model."   # a multimodal checkpoint's text decoder (ForConditionalGeneration)
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# The exit of a refusal of the user's checkpoint: packager's ExitCode.BAD_INPUT, which exporter_envs.run gives the
# sentence the child printed last (any other failure of the child is the tool's: exit 10).
REFUSED = 5


class Refused(SystemExit):
    """The checkpoint cannot be exported as it is: one sentence naming the problem and the fix on stderr, exit
    REFUSED."""

    def __init__(self, sentence: str) -> None:
        print(sentence, file=sys.stderr, flush=True)
        super().__init__(REFUSED)


@dataclass(frozen=True)
class CheckpointTensor:
    """Where one tensor lies in a safetensors file: read a slice of its rows at a time, or map it whole."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int   # byte offset of its data in the file

    @classmethod
    def find(cls, source: Path, suffix: str) -> CheckpointTensor:
        """The tensor whose name ends with `suffix`, in model.safetensors or the shards its index names."""
        for name in checkpoint_files(source):
            with open(source / name, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
            for key, entry in header.items():
                if key.endswith(suffix) and isinstance(entry, dict):
                    if entry["dtype"] not in DTYPES:
                        raise Refused(f"{source / name}: {key} is {entry['dtype']}; the per-layer embedding "
                                      f"table is read as one of {', '.join(DTYPES)}: save it as one of those")
                    return cls(source / name, DTYPES[entry["dtype"]], tuple(entry["shape"]),
                               8 + size + entry["data_offsets"][0])
        raise Refused(f"{source}: no {suffix} in its safetensors files: an E-class model's per-layer embedding "
                      "table is read from there; save the model with save_pretrained.")

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as fp32, read from the file (not mapped: the pages read are not this process's)."""
        data = bytearray((stop - start) * self.row_bytes)
        with open(self.path, "rb") as f:
            f.seek(self.begin + start * self.row_bytes)
            f.readinto(data)
        return torch.frombuffer(data, dtype=self.dtype).view(stop - start, self.shape[1]).float()

    def mapped(self) -> torch.Tensor:
        """The whole tensor in its stored dtype over a private mapping of the file: its pages load as rows are
        read. ACCESS_COPY: writable (torch.frombuffer wants that), and nothing written reaches the file."""
        with open(self.path, "rb") as f:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = self.shape[0] * self.shape[1]
        return torch.frombuffer(view, dtype=self.dtype, count=count, offset=self.begin).view(self.shape)


class MappedRows(torch.nn.Module):
    """Gemma4TextScaledWordEmbedding's lookup over a table that stays in the checkpoint: the rows read upcast to
    fp32 before the scale, as the fp32 model computes them."""

    def __init__(self, table: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.table, self.scale = table, scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids].float() * self.scale


def load(source: Path) -> Any:
    """The model in fp32 with a stub per-layer embedding table of STUB rows: the checkpoint's is never read here
    (from_pretrained reads a tensor whatever its shape, with ignore_mismatched_sizes too: E2B's table measured
    10.7 GiB of host memory in fp32)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    text = config.get_text_config()
    if not getattr(text, "hidden_size_per_layer_input", 0):
        raise Refused(f"{source}: config.json has no hidden_size_per_layer_input: not an E-class (per-layer "
                      "embedding) model; package it on the onnxruntime or genai path.")
    text.vocab_size_per_layer_input = min(STUB, text.vocab_size_per_layer_input)
    multimodal = text is not config
    if multimodal:   # the model ties as the outer config says
        text.tie_word_embeddings = getattr(config, "tie_word_embeddings", text.tie_word_embeddings)
    # the text decoder alone (Gemma4ForCausalLM, Gemma3nForCausalLM), from a multimodal checkpoint too
    model = AutoModelForCausalLM.from_config(text, dtype=torch.float32, attn_implementation="eager")
    state: dict[str, torch.Tensor] = {}
    for name in checkpoint_files(source):
        with safe_open(source / name, framework="pt") as f:
            for key in f.keys():
                local = text_key(key, multimodal)
                if local is not None and not key.endswith(PLE_WEIGHT):
                    state[local] = f.get_tensor(key)
    missing, unexpected = model.load_state_dict(state, strict=False)   # copied into the fp32 parameters
    tied = {"lm_head.weight"} if text.tie_word_embeddings else set()   # the embedding's, which the state sets
    absent = [k for k in missing if not k.endswith(PLE_WEIGHT) and k not in tied]
    # Gemma 3n's checkpoints keep k/v projections on the KV-shared layers, which read an earlier layer's cache and
    # which transformers 5 no longer makes (it names them in _keys_to_ignore_on_load_unexpected)
    unused = getattr(model.model, "_keys_to_ignore_on_load_unexpected", None) or []
    unexpected = [k for k in unexpected if not any(f".{name}." in f".{k}" for name in unused)]
    if absent or unexpected:
        raise Refused(f"{source}: the checkpoint does not match {type(model).__name__} (missing "
                      f"{absent[:3]}, unexpected {unexpected[:3]}); save the text decoder with save_pretrained.")
    if multimodal and config.model_type == "gemma3n":
        model.model.embed_tokens = hard_tokens(source, config, model.model.embed_tokens)
    return model.eval()


class HardTokens(torch.nn.Module):
    """Gemma 3n's token embedding as Gemma3nModel.forward makes it: the ids from `offset` up (the end of image, of
    audio, and the other multimodal ids) read the encoders' own tables (a hard embedding through embed_vision's or
    embed_audio's norms and projection: `rows`, computed once), the others the text table. The text decoder alone
    (Gemma3nForCausalLM, which the export traces and verify's reference runs) would read the text table's rows for
    them: a model that generates one of those ids then continues otherwise."""

    def __init__(self, embed: torch.nn.Module, offset: int, rows: torch.Tensor) -> None:
        super().__init__()
        self.embed, self.offset = embed, offset
        self.register_buffer("rows", rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        text: torch.Tensor = self.embed(input_ids)
        inside = input_ids >= self.offset
        rows: Any = self.rows
        hard = rows[(input_ids - self.offset).clamp(0, rows.shape[0] - 1)]
        return torch.where(inside[..., None], hard.to(text.dtype), text)


def hard_tokens(source: Path, config: Any, embed: torch.nn.Module) -> torch.nn.Module:
    """`embed` with the hard embeddings of the encoders the checkpoint holds (its config.json's vision_config,
    audio_config, and their embedders' tensors), HardTokens; `embed` itself where it holds none."""
    from eclass_encoders import load_parts
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nMultimodalEmbedder

    written = json.loads((source / "config.json").read_text(encoding="utf-8"))
    subs = {name: getattr(config, key) for key, name in (("vision_config", "embed_vision"),
                                                        ("audio_config", "embed_audio")) if written.get(key)}
    if not subs:
        return embed
    embedders = load_parts(source, {name: Gemma3nMultimodalEmbedder(sub, config.text_config)
                                    for name, sub in subs.items()})
    offset = min(sub.vocab_offset for sub in subs.values())
    end = max(sub.vocab_offset + sub.vocab_size for sub in subs.values())
    rows = torch.zeros(end - offset, config.text_config.hidden_size)
    with torch.no_grad():
        for name, sub in subs.items():
            ids = torch.arange(sub.vocab_offset, sub.vocab_offset + sub.vocab_size)[None]
            start = sub.vocab_offset - offset
            rows[start:start + sub.vocab_size] = embedders[name](input_ids=ids)[0]
    return HardTokens(embed, offset, rows)


def text_key(key: str, multimodal: bool) -> str | None:
    """A checkpoint tensor's name in the text decoder's model: a multimodal checkpoint's language model
    (TEXT_PREFIX) renamed as the text-only class names it, its vision and audio encoders' tensors None (not read)."""
    if not multimodal or key == "lm_head.weight":
        return key
    return "model." + key.removeprefix(TEXT_PREFIX) if key.startswith(TEXT_PREFIX) else None


def checkpoint_files(source: Path) -> list[str]:
    """model.safetensors, or the shards its index names."""
    index = source / "model.safetensors.index.json"
    return sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]


def reference(source: Path) -> Any:
    """verify's PyTorch reference (packager/runtimes/genai_host.py's TORCH_SERVER): the model in fp32, its per-layer
    embedding table mapped from the checkpoint in its stored dtype, a row upcast as it is read."""
    model = load(source)
    text = model.model
    table = CheckpointTensor.find(source, PLE_WEIGHT)
    text.embed_tokens_per_layer = MappedRows(table.mapped(), float(text.embed_tokens_per_layer.scalar_embed_scale))
    text.config.vocab_size_per_layer_input = table.shape[0]
    return model
