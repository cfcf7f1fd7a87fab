"""Mixed precision for decoder LLMs: which layers to keep at 8 bits when int4 loses the answers.

int4 costs a little accuracy in every layer, but not equally: a few layers (often the first, the
last, the lm_head) carry most of the loss. The `int4-mixed` recipe keeps the most sensitive layers
at 8 bits (MatMulNBits bits=8, the same blocks), the rest at 4. Sensitivity is measured, not
guessed: for each layer, a model with every layer at 8 bits but that one at 4 bits reads the
reference's own generations (teacher-forced) on the user's eval cases and the sample prompts, and
the mean KL divergence of its next-token distributions from the fp32 reference's is that layer's
cost at 4 bits. The search (packager/mixed_search.py) then keeps the fewest most-sensitive layers
that pass verify's gates, found by bisection, and the fit stage judges the result's memory.

A "layer" is a decoder block ("layers.3", "h.3": every MatMul inside it) or a named MatMul outside
the blocks ("lm_head"). A tied embedding follows the lm_head; an untied embedding table ("embed_tokens")
is a layer of its own, written at 8 bits by packager (onnxruntime's quantizer writes GatherBlockQuantized
at 4 bits only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from packager.context import Context
from packager.device_code import runner
from packager.leftovers import temp_folder
from packager.recipes.common import needs_external_data, save
from packager.recipes.layers import layer_bytes
from packager.recipes.nbits import fitting_settings, mix_nbits, quantized_nbits


def quantizations(ctx: Context) -> Path:
    """Where this run keeps its model's 4- and 8-bit quantizations (recipes.quantized_nbits): made once,
    by the sensitivity measurement or the first try, then mixed for each layer set the search tries."""
    return ctx.work_dir / "int4-mixed"


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    log_probs: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return log_probs


def continuation_logp(decoder: Any, start: int, ids: list[int]) -> np.ndarray:
    """The log-probabilities of the next token at each position of the continuation ids[start:], teacher-forced
    (run.py's score_from: a last-position-logits graph's prompt prefilled in chunks)."""
    return _log_softmax(runner().score_from(decoder, ids, start)[:-1])


def divergence(decoder: Any, seqs: list[tuple[int, list[int]]], reference: list[np.ndarray]) -> float:
    """Mean KL(reference || decoder) of the next-token distributions over the continuations' positions."""
    total, count = 0.0, 0
    for (start, ids), ref in zip(seqs, reference):
        logp = continuation_logp(decoder, start, ids)
        total += float(np.sum(np.exp(ref) * (ref - logp)))
        count += len(ref)
    return total / max(count, 1)


def sensitivity(ctx: Context) -> tuple[list[dict[str, Any]], str]:
    """Each layer's cost at 4 bits, most sensitive first: the KL divergence from the fp32 reference of a
    model with every layer at 8 bits but that one (see the module's doc), with its bytes at 4 and 8 bits;
    and what it was measured on. Verify has run: the reference's generations of the sample prompts are
    in ctx.expected_outputs."""
    import onnxruntime as ort


    assert ctx.reference_model is not None and ctx.reference_io is not None
    rt, src = runner(), ctx.reference_model
    settings = fitting_settings(src, ctx.profile.int4)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    io = ctx.reference_io.to_dict()   # the export's (a runtime that builds its own graph describes that in ctx.io)
    ref = rt.Decoder(ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]), io)
    seqs, measured_on = _sequences(ctx, ref)
    ref_logp = [continuation_logp(ref, start, ids) for start, ids in seqs]
    del ref
    four, tied = quantized_nbits(src, settings, 4, ctx.progress, quantizations(ctx))
    eight = quantized_nbits(src, settings, 8, ctx.progress, quantizations(ctx))[0]
    bytes4, bytes8 = layer_bytes(four), layer_bytes(eight)
    large = needs_external_data(src)
    ranking = []
    with temp_folder("mixed") as tmp:
        for layer in bytes8:
            candidate = onnx.ModelProto()
            candidate.CopyFrom(four)
            mix_nbits(candidate, eight, tuple(other for other in bytes8 if other != layer), tied, settings)
            path = Path(tmp) / "candidate.onnx"
            save(candidate, path, large)
            ctx.progress(f"sensitivity of {layer}")
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            decoder = rt.Decoder(session, io)
            ranking.append({"layer": layer, "kl_at_4bit": round(divergence(decoder, seqs, ref_logp), 6),
                            "int4_bytes": bytes4[layer], "int8_bytes": bytes8[layer]})
    return sorted(ranking, key=lambda r: -r["kl_at_4bit"]), measured_on


def _sequences(ctx: Context, reference: Any) -> tuple[list[tuple[int, list[int]]], str]:
    """(prompt length, prompt + the reference's greedy continuation) for the sample prompts (verify's) and
    the user's eval cases, and a phrase saying so."""

    seqs = [(len(s["prompt_ids"]), [int(t) for t in s["prompt_ids"]] + [int(t) for t in s["tokens"]])
            for s in ctx.expected_outputs]
    measured_on = f"{len(seqs)} sample prompts"
    if ctx.eval_cases:
        rt = runner()
        tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io.to_dict())
        for case in ctx.eval_cases:
            prompt = list(tokenizer.encode(case["prompt"]).ids)
            tokens, _ = reference.generate(prompt, int(case.get("max_new_tokens", rt.EVAL_DEFAULT_TOKENS)))
            seqs.append((len(prompt), prompt + tokens))
        where = ctx.eval_file.name if ctx.eval_file else "--eval"
        measured_on = f"{len(ctx.eval_cases)} eval cases of {where} and {measured_on}"
    return seqs, measured_on
