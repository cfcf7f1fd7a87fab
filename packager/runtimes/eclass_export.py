"""The E-class exporter (issue 20): a Gemma 4 or Gemma 3n text decoder with per-layer embeddings (PLE) and KV
sharing as an ONNX decoder with the io run.py's Decoder runs (input_ids, attention_mask, position_ids,
past_key_values.N.key/value -> logits, present.N.key/value). Run in the `genai` exporter environment (transformers
5.x has both) as `python -m eclass_export SOURCE OUT`, a copy of this file beside it: packager is not installed
there.

onnxruntime-genai's builder refuses PLE and KV sharing, and optimum cannot export gemma4_text or gemma3n_text, so
the graph is traced from a forward of its own over the model's modules, with the cache as explicit tensors (Gemma
4's: EDecoder; Gemma 3n's: E3nDecoder, the same with AltUp's streams, LAuReL and the MLP's activation sparsity):

- Only the layers that own a cache have a past/present pair (`past_key_values.N` numbers the owners); a KV-shared
  layer reads the cache of the last owner of its layer type, as transformers' Gemma 4 does.
- The cache is appended to, never copied: a past is laid out positions first ([batch, positions, KV heads, size], its
  length axis CACHED_AXIS, or WINDOW_AXIS on a sliding layer), the present is the new tokens' keys and values alone
  in the same layout, which run.py's loop writes after the past in a buffer it holds (io.kv.appends), and the
  attention scores the past and the new keys apart under one softmax, joining neither keys nor scores: no step holds
  a second copy of the cache (a graph that returned past and new tokens together held two, 108 MiB more for E2B at 8K).
- The KV-shared layers write no cache, so they run on the last position only, and the logits are the last
  position's: [batch, 1, vocab] (io "logits": "last"), never [batch, sequence, vocab] of a 262,144 vocabulary.
- The PLE table (vocabulary x layers x width, nearly half of E2B's parameters) is int8 with a scale per row,
  read by a Gather on the token ids, in a file of its own (OWN_FILE), page-aligned: onnxruntime memory-maps an
  aligned external initializer on the CPU, so a run touches only the pages of the rows its tokens read.
- That table never exists whole in this process: E2B's is 2.35B parameters, 8.8 GiB in fp32 (and the trace, the
  ONNX proto and its quantization each held another copy). The model loads with a stub table of STUB rows, the
  graph is traced over it, and the real rows are quantized into OWN_FILE a slice at a time, read from the
  safetensors file (CheckpointTensor). verify's PyTorch reference (`reference`) maps the same table in its stored
  dtype and upcasts the rows it looks up.
- A multimodal checkpoint's (its config.json has a vision_config or an audio_config) takes two more inputs after
  position_ids: soft_tokens ([batch, sequence, hidden], float) and soft_mask ([batch, sequence], uint8), the vision
  and audio encoders' outputs (already projected to the text width) and where they go: the layers' input is
  where(soft_mask, soft_tokens, embedding), and the per-layer inputs are projected from it. The loop puts the pad
  token at those positions of input_ids, so the embedding and per-layer rows read there are the pad's, as
  transformers' Gemma4Model reads them (its llm_input_ids). A text-only checkpoint's graph has neither input.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any, BinaryIO

import numpy as np
import onnx
import torch
from eclass_checkpoint import PLE_WEIGHT, CheckpointTensor, Refused, load
from eclass_checkpoint import reference as reference  # verify's (runtimes/genai_host.py imports it from here)
from onnx import numpy_helper

OWN_FILE = "model.ple.data"       # the PLE table and its scales
WEIGHTS_FILE = "model.onnx.data"  # every other initializer
ALIGN = 65536                     # onnxruntime maps an external tensor whose offset is a multiple of this
PACK = 64                         # the other weights: read whole at load, aligned for vector loads only
PLE_NAMES = ("ple_rows", "ple_scales")
NEG = -1e9                        # a masked position's score (finite: a row masked whole stays a number)
OPSET = 17
SLICE_BYTES = 256 * 2**20         # fp32 rows quantized at a time: the host holds this much of the table, not all
WINDOW_AXIS = "window"            # a sliding layer's past length: packager/decoder_config.py's WINDOW_AXIS
CACHED_AXIS = "cached"            # a full layer's past length: packager/decoder_config.py's CACHED_AXIS
SOFT_INPUTS = ("soft_tokens", "soft_mask")   # a multimodal checkpoint's: packager/decoder_config.py's SOFT_INPUTS


class EDecoder(torch.nn.Module):
    """Gemma4ForCausalLM's forward with its KV cache as tensors, its PLE table int8 per row."""

    def __init__(self, model: Any, ple_vocab: int = 0, soft: bool = False) -> None:
        super().__init__()
        self.model, self.config = model, model.config
        self.ple_vocab = ple_vocab   # the checkpoint's table's rows (the model loaded a stub of STUB)
        self.soft = soft             # soft_tokens and soft_mask after position_ids (a multimodal checkpoint's)
        if soft and self.config.pad_token_id is None:
            raise Refused("a multimodal checkpoint's text_config has no pad_token_id: the loop puts it at the soft "
                          "tokens' positions of input_ids, as transformers does; set it in config.json.")
        text = model.model
        if getattr(self.config, "enable_moe_block", False):
            raise Refused("a Gemma 4 MoE block (enable_moe_block) is not an E-class decoder; this exporter "
                          "takes the E models (per-layer embeddings, KV sharing): package an E2B or E4B checkpoint.")
        # the stub the model loaded (load): the graph is the same for any number of rows; write_table puts the real
        # ones in its place. The embedding's scale sqrt(width) is folded into the rows' scales: one Mul fewer a token
        self.embed_scale = float(text.embed_tokens_per_layer.scalar_embed_scale)
        rows, scales = quantize_rows(text.embed_tokens_per_layer.weight.detach().float())
        self.register_buffer("ple_rows", rows)
        self.register_buffer("ple_scales", scales * self.embed_scale)
        modes = self.config.kv_sharing_modes
        self.owners = [i for i, m in enumerate(modes) if m != "reuse"]
        self.first_shared = self.config.num_hidden_layers - self.config.num_kv_shared_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        text, config = self.model.model, self.config
        x = text.embed_tokens(input_ids)
        if self.soft:   # the encoders' soft tokens in place of the placeholders' (pad) embeddings
            (soft_tokens, soft_mask), past = past[:2], past[2:]
            x = torch.where(soft_mask[..., None].bool(), soft_tokens, x)
        # Gather the int8 rows, then Cast: a Cast first would be folded into a float copy of the whole table. The
        # scales by GatherElements: a recipe's 8-bit quantizer quantizes every float Gather's table, with one
        # scale for all its rows, and leaves GatherElements alone.
        ids = self.ple_ids(input_ids)
        scales = torch.gather(self.buffer("ple_scales"), 0, ids.reshape(-1, 1)).view(*input_ids.shape, 1)
        rows = self.buffer("ple_rows")[ids].float() * scales
        ple = rows.view(*input_ids.shape, config.num_hidden_layers, config.hidden_size_per_layer_input)
        ple = text.project_per_layer_inputs(x, ple)
        queries = position_ids
        # sorted: a set's order changes with each process's string hashing, and the graph with it
        rope = {kind: text.rotary_emb(x, position_ids, kind) for kind in sorted(set(config.layer_types))}
        x = self.streams_in(x)
        shared: dict[str, KV] = {}
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(text.layers):
            if i == self.first_shared:   # no cache to write from here on: the last position is all they need
                x, ple, queries = x[..., -1:, :], ple[:, -1:], queries[:, -1:]
                rope = {k: (c[:, -1:], s[:, -1:]) for k, (c, s) in rope.items()}
            kind = config.layer_types[i]
            past_kv = None
            if i in self.owners:
                n = self.owners.index(i)
                past_kv = (past[2 * n], past[2 * n + 1])
            x = self.layer(layer, x, ple[:, :, i], rope[kind], (queries, attention_mask), shared, past_kv, presents)
        logits = self.model.lm_head(self.last_hidden(x[..., -1:, :]))
        cap = config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return (logits, *presents)

    def ple_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The rows of the per-layer table the tokens read (Gemma 4's table covers its vocabulary)."""
        return input_ids

    def streams_in(self, x: torch.Tensor) -> torch.Tensor:
        """The layers' input from the embeddings (Gemma 4: the embeddings)."""
        return x

    def last_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output at the last position, normed for the lm_head."""
        return self.model.model.norm(x)  # type: ignore[no-any-return]

    def buffer(self, name: str) -> torch.Tensor:
        table = getattr(self, name)
        assert isinstance(table, torch.Tensor)
        return table

    def layer(self, layer: Any, x: torch.Tensor, per_layer: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
              mask: tuple[torch.Tensor, torch.Tensor], shared: dict[str, KV],
              past_kv: tuple[torch.Tensor, torch.Tensor] | None, presents: list[torch.Tensor]) -> torch.Tensor:
        """Gemma4TextDecoderLayer.forward, its attention on explicit tensors."""
        attn = layer.self_attn
        out = self.attention(attn, layer.input_layernorm(x), rope, mask, shared, past_kv, presents)
        x = x + layer.post_attention_layernorm(out)
        x = x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
        gate = layer.act_fn(layer.per_layer_input_gate(x)) * per_layer
        x = x + layer.post_per_layer_input_norm(layer.per_layer_projection(gate))
        scaled: torch.Tensor = x * layer.layer_scalar
        return scaled

    def attention(self, attn: Any, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                  mask: tuple[torch.Tensor, torch.Tensor],
                  shared: dict[str, KV],
                  past_kv: tuple[torch.Tensor, torch.Tensor] | None, presents: list[torch.Tensor]) -> torch.Tensor:
        cos, sin = rope
        shape = (*h.shape[:-1], -1, attn.head_dim)
        q = rotary(attn.q_norm(attn.q_proj(h).view(shape)), cos, sin).transpose(1, 2)
        if past_kv is None:
            (k_past, k_new), (v_past, v_new) = shared[attn.layer_type]
        else:
            # the new tokens' keys and values, positions first as the cache holds them: the present
            raw_k = attn.k_proj(h).view(shape)
            raw_v = attn.v_proj(h).view(shape) if attn.v_proj is not None else raw_k
            k_new, v_new = rotary(attn.k_norm(raw_k), cos, sin), attn.v_norm(raw_v)
            (k_past, v_past) = past_kv
            presents += [k_new, v_new]
            if attn.store_full_length_kv:
                shared[attn.layer_type] = ((k_past, k_new), (v_past, v_new))
        # Each KV head's query heads as one matrix of queries ([batch, KV heads, group x new, size]): their scores
        # against the cache as it is, never a copy of the cache per query head (repeat_interleave: at 8K, 8 query
        # heads on a global layer's 512-wide cache made 2 x 128 MiB at every step). The past's keys and the new ones
        # are scored apart and the softmax taken over both (one maximum, one sum): a Concat of the keys would copy
        # the cache at every step, and one of the scores their largest buffer.
        # The model's sizes as numbers, not Shape ops: ONNX shape inference propagates a shape's values through
        # Gather and Mul but not Div, and a size it cannot follow leaves the estimate's activations unsized
        batch, new, cached = q.shape[0], q.shape[2], k_past.shape[1]
        heads, size, kv_heads = int(q.shape[1]), int(q.shape[3]), int(k_past.shape[2])
        grouped = q.reshape(batch, kv_heads, heads // kv_heads * new, size)
        additive = key_mask(*mask, cached + k_new.shape[1], self.config.sliding_window if attn.is_sliding else 0)
        # every shape spelled out: a past of 0 positions (the first pass) leaves Reshape no -1 to infer
        parts = [(torch.matmul(grouped, heads_first(k).transpose(2, 3)) * attn.scaling)
                 .view(batch, heads, new, k.shape[1]) + m
                 for k, m in ((k_past, additive[..., :cached]), (k_new, additive[..., cached:]))]
        # an empty past (the first pass) reduces to -inf, below any score of the new keys (each sees itself)
        top = torch.maximum(parts[0].amax(dim=-1, keepdim=True), parts[1].amax(dim=-1, keepdim=True))
        exps = [torch.exp(p - top) for p in parts]
        rows = heads // kv_heads * new
        total = (exps[0].sum(dim=-1, keepdim=True) + exps[1].sum(dim=-1, keepdim=True)).view(batch, kv_heads, rows, 1)
        out = (torch.matmul(exps[0].view(batch, kv_heads, rows, cached), heads_first(v_past))
               + torch.matmul(exps[1].view(batch, kv_heads, rows, k_new.shape[1]), heads_first(v_new))) / total
        projected: torch.Tensor = attn.o_proj(out.view(batch, heads, new, size).transpose(1, 2)
                                              .reshape(*h.shape[:-1], -1))
        return projected


class E3nDecoder(EDecoder):
    """Gemma3nForCausalLM's forward: EDecoder's, the layers on AltUp's streams ([streams, batch, sequence, hidden],
    the first the embeddings), LAuReL beside the attention, the MLP's activation sparsity as a cutoff (mean + std x
    the normal quantile, a constant here: transformers computes it with an erfinv that ONNX lacks)."""

    def ple_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Gemma 3n's table is shorter than its vocabulary (E2B: 262,144 of 262,400): the others read row 0."""
        return torch.where(input_ids < self.ple_vocab, input_ids, torch.zeros_like(input_ids))

    def streams_in(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.mean(x**2, dim=-1, keepdim=True) ** 0.5
        streams = [x] + [rescaled(proj(x), target) for proj in self.model.model.altup_projections]
        return torch.stack(streams, dim=0)

    def last_hidden(self, x: torch.Tensor) -> torch.Tensor:
        text = self.model.model
        target = torch.mean(x[0] ** 2, dim=-1, keepdim=True) ** 0.5
        streams = [x[0]] + [rescaled(proj(x[i]), target) for i, proj in enumerate(text.altup_unembed_projections, 1)]
        return text.norm(torch.stack(streams).mean(dim=0))  # type: ignore[no-any-return]

    def layer(self, layer: Any, x: torch.Tensor, per_layer: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
              mask: tuple[torch.Tensor, torch.Tensor], shared: dict[str, KV],
              past_kv: tuple[torch.Tensor, torch.Tensor] | None, presents: list[torch.Tensor]) -> torch.Tensor:
        """Gemma3nTextDecoderLayer.forward, its attention on explicit tensors."""
        config = self.config
        predictions = layer.altup.predict(x)
        active = predictions[config.altup_active_idx]
        normed = layer.input_layernorm(active)
        laurel = layer.laurel(normed)
        attn = self.attention(layer.self_attn, normed, rope, mask, shared, past_kv, presents)
        gated = (active + layer.post_attention_layernorm(attn) + laurel) / math.sqrt(2)
        ffw = layer.post_feedforward_layernorm(self.mlp(layer.mlp, layer.pre_feedforward_layernorm(gated)))
        corrected = layer.altup.correct(predictions, gated + ffw)
        first = corrected[config.altup_active_idx]
        if config.altup_correct_scale:
            first = layer.altup.scale_corrected_output(first)
        first = layer.per_layer_projection(layer.act_fn(layer.per_layer_input_gate(first)) * per_layer)
        # streams 1: take it, stream 0 adds 0: no Concat of slices, which the estimate doubled at every layer
        others = torch.tensor([0.0] + [1.0] * (corrected.shape[0] - 1)).view(-1, 1, 1, 1)
        out: torch.Tensor = corrected + others * layer.post_per_layer_input_norm(first)
        return out

    @staticmethod
    def mlp(mlp: Any, h: torch.Tensor) -> torch.Tensor:
        gate = mlp.gate_proj(h)
        if mlp.activation_sparsity > 0:
            spread = NormalDist().inv_cdf(mlp.activation_sparsity)
            cutoff = gate.mean(dim=-1, keepdim=True) + gate.std(dim=-1, keepdim=True, unbiased=False) * spread
            gate = torch.relu(gate - cutoff)
        out: torch.Tensor = mlp.down_proj(mlp.act_fn(gate) * mlp.up_proj(h))
        return out


def rescaled(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`x` at the root-mean-square `target` (Gemma 3n's AltUp projections in and out)."""
    return x * target / torch.sqrt(torch.mean(x**2, dim=-1, keepdim=True).clamp(min=1e-5))


def decoder_for(model: Any, ple_vocab: int, soft: bool = False) -> EDecoder:
    return (E3nDecoder if model.config.model_type == "gemma3n_text" else EDecoder)(model, ple_vocab, soft)


def takes_soft_tokens(source: Path) -> bool:
    """Whether the checkpoint's config.json has a vision or an audio encoder (a multimodal checkpoint): its graph
    takes their soft tokens. config.json as written, not transformers' config, which makes defaults of absent ones."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    return any(isinstance(config.get(key), dict) for key in ("vision_config", "audio_config"))


KV = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]   # (past, new) keys, then values


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """[batch, positions, KV heads, size] as [batch, KV heads, positions, size]: with one KV head a Squeeze and an
    Unsqueeze, which onnxruntime runs on the same buffer (E2B's every layer); with more, a Transpose, a copy of one
    layer's keys or values while it computes."""
    if x.shape[2] == 1:
        return x.squeeze(2).unsqueeze(1)
    return x.transpose(1, 2)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb on [batch, sequence, heads, size] (its unsqueeze_dim=2)."""
    half = int(x.shape[-1]) // 2   # a number (the head size is the model's), not a Div that shape inference stops at
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(2) + turned * sin.unsqueeze(2)


def quantize_rows(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows, symmetric, a float scale per row ([rows, 1]); an all-zero row (padding) keeps scale 1."""
    peak = table.abs().amax(dim=1, keepdim=True)
    scales = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    return torch.round(table / scales).clamp(-127, 127).to(torch.int8), scales


def key_mask(queries: torch.Tensor, attention_mask: torch.Tensor, keys: Any, window: int) -> torch.Tensor:
    """Additive mask [batch, 1, new, keys]: the keys are the last `keys` positions (a sliding layer's cache holds
    its window only; batch 1, no padding), causal, and for a sliding layer within the window (as transformers':
    query - key < window)."""
    total = attention_mask.shape[1]
    positions = (torch.arange(keys) + (total - keys))[None, None, :]
    allowed = (positions <= queries[:, :, None]) & attention_mask[:, -keys:][:, None, :].bool()
    if window:
        allowed = allowed & (positions > queries[:, :, None] - window)
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(NEG))[:, None]


def export(source: Path, out: Path) -> dict[str, Any]:
    """model.onnx (+ its two data files) in `out`; returns what was made (names, seconds)."""
    started = time.monotonic()
    table = CheckpointTensor.find(source, PLE_WEIGHT)
    module = decoder_for(load(source), table.shape[0], takes_soft_tokens(source))
    config = module.config
    names = io_names(module)
    # a past of 2 positions: torch's amax refuses an empty axis, which onnxruntime's ReduceMax takes (-inf)
    past = [torch.zeros(1, 2, heads, dim) for heads, dim in owner_shapes(module) for _ in (0, 1)]
    # the mask as uint8, not bool: onnxruntime's Objective-C/Swift API makes no bool tensor, so an iOS app could
    # not feed it
    soft = (torch.zeros(1, 3, config.hidden_size), torch.zeros(1, 3, dtype=torch.uint8)) if module.soft else ()
    args = (torch.tensor([[1, 2, 3]]), torch.ones(1, 5, dtype=torch.int64), torch.arange(2, 5)[None], *soft, *past)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "total"},
                                       "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    axes |= {name: {0: "batch", 1: "sequence"} for name in SOFT_INPUTS if module.soft}
    sliding = [module.model.model.layers[i].self_attn.is_sliding for i in module.owners for _ in (0, 1)]
    for name, windowed in zip(names["past"], sliding, strict=True):
        # WINDOW_AXIS: a sliding layer's past is at most its window - 1 positions, whatever the context
        axes[name] = {0: "batch", 1: WINDOW_AXIS if windowed else CACHED_AXIS}
    for name in names["present"]:
        axes[name] = {0: "batch", 1: "sequence"}   # the new tokens' alone: the loop appends them
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "traced.onnx"
    with torch.inference_mode():
        torch.onnx.export(module, args, str(raw), input_names=names["inputs"],
                          output_names=["logits", *names["present"]], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    traced = time.monotonic() - started
    model = onnx.load(raw)
    raw.unlink()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1   # the last position's: a fixed 1
    scope_layer_matmuls(model, module)
    split_weights(model, out, table, module.embed_scale)
    # the loop puts the pad token at the soft tokens' positions of input_ids (transformers' llm_input_ids)
    soft_tokens = {"soft_tokens": True, "pad_token_id": config.pad_token_id} if module.soft else \
        {"soft_tokens": False}
    return {"owners": module.owners, "layers": config.num_hidden_layers, "ple_file": OWN_FILE,
            "ple_tensors": list(PLE_NAMES), **soft_tokens, "traced_s": round(traced, 2),
            "seconds": round(time.monotonic() - started, 2)}


def owner_shapes(module: EDecoder) -> list[tuple[int, int]]:
    """(kv heads, head size) of each layer that owns a cache, in order."""
    layers = module.model.model.layers
    return [(layers[i].self_attn.k_proj.out_features // layers[i].self_attn.head_dim, layers[i].self_attn.head_dim)
            for i in module.owners]


def io_names(module: EDecoder) -> dict[str, list[str]]:
    past = [f"past_key_values.{n}.{kind}" for n in range(len(module.owners)) for kind in ("key", "value")]
    soft = list(SOFT_INPUTS) if module.soft else []
    return {"inputs": ["input_ids", "attention_mask", "position_ids", *soft, *past], "past": past,
            "present": [p.replace("past_key_values.", "present.", 1) for p in past]}


def scope_layer_matmuls(model: onnx.ModelProto, module: torch.nn.Module) -> None:
    """Each MatMul of a decoder layer's weight named by that weight's module ("/model/model/layers.3/self_attn/q_proj/
    MatMul"): the decoder's forward calls the layers' modules itself, so the trace scoped them by their own names alone
    ("/q_proj_5/MatMul"), and int4-mixed, which takes a layer as the block in a node's path (packager/recipes/
    layers.py), measured and reported each of E2B's some 400 matmuls as a layer of its own. A weight is found by its
    bytes (the trace folds a Linear's transpose into the initializer); the others keep their names."""
    owners: dict[bytes, str] = {}   # a weight's bytes -> its module's path, "model/model/layers.3/self_attn/q_proj"
    for name, param in module.named_parameters():
        if param.dim() == 2 and any(p.isdigit() for p in name.split(".")):   # a block's ("layers.3"), not lm_head's
            path = re.sub(r"\.(?!\d)", "/", name.rsplit(".", 1)[0])   # "layers.3" stays one segment
            owners.setdefault(hashlib.sha1(param.detach().t().contiguous().numpy().tobytes()).digest(), path)
    weights = {t.name: t for t in model.graph.initializer}
    # a weight read twice reaches its second reader through an Identity (packager/eclass.py bypasses them later)
    weights |= {n.output[0]: weights[n.input[0]] for n in model.graph.node
                if n.op_type == "Identity" and n.input[0] in weights}
    taken = {n.name for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        owner = owners.get(hashlib.sha1(numpy_helper.to_array(weights[node.input[1]]).tobytes()).digest())
        if owner is None:
            continue
        scoped, n = f"/{owner}/MatMul", 0
        while scoped in taken:   # one weight read twice (Gemma 3n's AltUp router): each node its own name
            n += 1
            scoped = f"/{owner}/MatMul_{n}"
        taken.discard(node.name)
        node.name = scoped
        taken.add(scoped)


def split_weights(model: onnx.ModelProto, out: Path, table: CheckpointTensor, embed_scale: float) -> None:
    """model.onnx with every initializer external: the PLE's in OWN_FILE (the checkpoint's table, write_table),
    the rest in WEIGHTS_FILE, each at an offset that is a multiple of ALIGN (so that onnxruntime maps it rather
    than reads it)."""
    ple = {t.name: t for t in model.graph.initializer if t.name in PLE_NAMES}
    with open(out / WEIGHTS_FILE, "wb") as f:
        for tensor in model.graph.initializer:
            if tensor.name not in ple:
                data = numpy_helper.to_array(tensor).tobytes()
                _external(tensor, WEIGHTS_FILE, _pad(f, PACK), len(data))
                f.write(data)
    with open(out / OWN_FILE, "wb") as f:
        places = write_table(f, table, embed_scale)
    for name, (offset, length, dims) in places.items():
        del ple[name].dims[:]
        ple[name].dims.extend(dims)
        _external(ple[name], OWN_FILE, offset, length)
    onnx.save(model, out / "model.onnx")


def write_table(f: BinaryIO, table: CheckpointTensor, embed_scale: float) -> dict[str, tuple[int, int, list[int]]]:
    """The checkpoint's per-layer embedding table quantized into `f` a slice of rows at a time (int8 rows, then
    their fp32 scales times `embed_scale`), each at an ALIGN offset; name -> (offset, length, dims)."""
    rows, width = table.shape
    step = max(1, SLICE_BYTES // (width * 4))
    scales = np.empty((rows, 1), np.float32)
    offset = _pad(f, ALIGN)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        q, s = quantize_rows(table.rows(start, stop))
        f.write(q.numpy().tobytes())
        scales[start:stop] = s.numpy() * embed_scale
    places = {"ple_rows": (offset, rows * width, [rows, width])}
    offset = _pad(f, ALIGN)
    f.write(scales.tobytes())
    places["ple_scales"] = (offset, scales.nbytes, [rows, 1])
    return places


def _pad(f: BinaryIO, align: int) -> int:
    """Zeros up to the next multiple of `align`; that offset."""
    offset = -(-f.tell() // align) * align
    f.write(b"\0" * (offset - f.tell()))
    return offset


def _external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def main(argv: list[str]) -> int:
    source, out = Path(argv[0]), Path(argv[1])
    made = export(source, out)
    if made["soft_tokens"]:   # the encoders whose soft tokens the decoder takes, as graphs of their own
        from eclass_encoders import export_checkpoint

        made["encoders"] = export_checkpoint(source, out)
    print(json.dumps(made), flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main(sys.argv[1:]))
