"""How verify judges each family against the fp32 reference (moved here from the verify stage, which loads
the two models and asks the model's family): outputs by cosine (text encoders, tensor models), generations by
token agreement (decoder LLMs; encoder-decoders end to end), and the user's --eval cases.

The reference's outputs become the bundle's expected outputs: the smoke test holds the device's answers to the
same threshold against the true model, whatever kernels the device rounds with. Decoders are compared on what
they generate: the reference's greedy continuation of each prompt, which the packaged model must predict token
by token (run.py's compare_decoder). `rt` is targets/run.py as the build host loads it.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from packager import evaluation
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.families.soft_verification import verify_media
from packager.recipes import remedy
from packager.records import Accuracy

if TYPE_CHECKING:
    from packager.context import Context


def _run_all(session: Any, feeds: list[dict[str, np.ndarray]], what: str) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    try:
        return [dict(zip(names, session.run(names, f))) for f in feeds]
    except Exception as e:
        shapes = ", ".join(f"{k}{list(v.shape)} {v.dtype}" for k, v in feeds[0].items())
        # ORT nests the failing node's message inside each enclosing If/Loop: the last one says what broke.
        reason = str(e).split("Status Message: ")[-1].splitlines()[0][:200]
        raise PackagerError(
            f"the {what} failed on the sample inputs made from its signature ({shapes}): {reason}; "
            "give the shapes and values it accepts with --shape NAME=D1,D2 and --value NAME=V.",
            ExitCode.BAD_INPUT,
        ) from None


# Tokens each prompt's reference continuation runs to (fewer where it ends first).
GENERATED_TOKENS = 16


def _verify_decoder(ctx: Context, rt: ModuleType, reference: Any, packaged: Any) -> None:
    prompts = [[int(t) for t in feeds["input_ids"][0]] for feeds in ctx.sample_inputs]
    try:
        # The runtime's reference: the fp32 export's session, or a decoder that runs the model itself (genai's
        # PyTorch reference, which names itself in `label`).
        decoder = reference if hasattr(reference, "generate") else rt.Decoder(reference, ctx.io.to_dict())
        ctx.expected_outputs = []
        for i, prompt in enumerate(prompts):   # a prompt at a time: on a 1B model each takes seconds
            ctx.progress(f"fp32 reference: generating for prompt {i + 1}/{len(prompts)}")
            ctx.expected_outputs += rt.reference_generations(decoder, [prompt], GENERATED_TOKENS)
        ctx.progress(f"{ctx.recipe_name} model: predicting the reference's tokens")
        result = rt.compare_decoder(ctx.expected_outputs, packaged.decoder)
    except Exception as e:
        reason = str(e).split("Status Message: ")[-1].splitlines()[0][:200]
        raise PackagerError(f"generating with the exported decoder failed ({reason}); check that the model "
                            "exports with its KV cache (text-generation-with-past).", ExitCode.TOOL_FAILED) from None
    label = getattr(reference, "label", None)
    _gate_generation(ctx, rt, result, len(prompts), reference, packaged,
                     {"reference": f"{label}, greedy decoding"} if label else None)


def _gate_generation(ctx: Context, rt: ModuleType, result: dict[str, Any], samples: int, reference: Any,
                     packaged: Any,
                     extra: dict[str, Any] | None = None) -> None:
    """ctx.accuracy from compare_decoder's figures, and exit 4 when they fall below the profile's thresholds."""
    limits = ctx.profile.accuracy
    ctx.accuracy = Accuracy(
        metric=family_for(ctx.io.kind).metric,
        reference="fp32 ONNX export, greedy decoding",
        samples=samples,
        generated_tokens=GENERATED_TOKENS,
        threshold={"token_agreement": limits.min_token_agreement, "logits_cosine": limits.min_logits_cosine},
        more={**result, **(extra or {})},
    )
    if result["token_agreement"] < limits.min_token_agreement or result["min_logits_cosine"] < limits.min_logits_cosine:
        error = PackagerError(
            f"recipe {ctx.recipe_name} changes the answers too much: the packaged model predicts "
            f"{result['token_agreement']:.1%} of the fp32 reference's greedy tokens (threshold "
            f"{limits.min_token_agreement:.0%}), logits cosine {result['min_logits_cosine']:.4f} (threshold "
            f"{limits.min_logits_cosine}) on {ctx.profile.name}{_alone(ctx.accuracy)}; try "
            f"{remedy(ctx.recipe_name, bool(ctx.components))}.",
            ExitCode.ACCURACY,
        )
        if ctx.eval_cases:   # the user's own cases are measured all the same: their figures say more
            _verify_eval(ctx, rt, reference, packaged, also=error)
        raise error


def _alone(accuracy: Accuracy) -> str:
    """' (each alone ...: encoder (int8-dynamic) 100.0% / 0.9999, ...)': each component's own share of a drift,
    token agreement and logits cosine."""
    parts = [f"{name} ({c['recipe']}) {c['token_agreement']:.1%} / {c['min_logits_cosine']:.4f}"
             for name, c in accuracy.more.get("components", {}).items()]
    return f" (each alone beside the other's fp32: {', '.join(parts)})" if parts else ""


def _verify_seq2seq(ctx: Context, rt: ModuleType, packaged: Any) -> None:
    """An encoder-decoder, end to end: the reference (fp32 encoder and decoder) generates from each
    sample's encoder input; the packaged pair must follow it (teacher-forced token agreement, first
    logits). Each component is also swapped in alone, beside the other's fp32 reference, to say which
    one's recipe costs what; the gate is the end-to-end figure, which is what the device produces."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    refs = {c.name: ort.InferenceSession(str(c.reference), so, providers=["CPUExecutionProvider"])
            for c in ctx.components}
    decoders = {"reference": rt.Decoder(refs["decoder"], ctx.io.to_dict()), "packaged": packaged.decoder}
    encoders = {"reference": refs["encoder"], "packaged": packaged.encoder}
    start = rt.start_ids(ctx.io.to_dict())

    def bound(encoder: str, decoder: str) -> list[Any]:
        return [rt.encoded(encoders[encoder], decoders[decoder], f) for f in ctx.sample_inputs]

    try:
        ctx.expected_outputs = rt.reference_generations(bound("reference", "reference"),
                                                        [start] * len(ctx.sample_inputs), GENERATED_TOKENS)
        result = rt.compare_decoder(ctx.expected_outputs, bound("packaged", "packaged"))
        alone = {"encoder": rt.compare_decoder(ctx.expected_outputs, bound("packaged", "reference")),
                 "decoder": rt.compare_decoder(ctx.expected_outputs, bound("reference", "packaged"))}
    except Exception as e:
        reason = str(e).split("Status Message: ")[-1].splitlines()[0][:200]
        raise PackagerError(f"generating with the exported encoder and decoder failed ({reason}); check that the "
                            "model exports with its KV cache (a *-with-past task).", ExitCode.TOOL_FAILED) from None
    components = {c.name: {"recipe": c.recipe_name, "token_agreement": alone[c.name]["token_agreement"],
                           "min_logits_cosine": alone[c.name]["min_logits_cosine"]} for c in ctx.components}
    _gate_generation(ctx, rt, result, len(ctx.sample_inputs), None, packaged,
                     {"reference": "fp32 ONNX export (encoder and decoder), greedy decoding", "end_to_end": True,
                      "components": components})


def _slice(result: dict[str, Any], count: int) -> dict[str, Any]:
    results = result["results"][:count]
    passed = sum(r["passed"] for r in results)
    return {"score": passed / len(results), "passed": passed, "cases": len(results), "results": results}


def _verify_eval(ctx: Context, rt: ModuleType, reference: Any, packaged: Any,
                 also: PackagerError | None = None) -> None:
    """--eval: the user's cases on the fp32 reference and on the packaged model; the packaged model may
    score at most the profile's eval_tolerance below the reference. `also`: the error verify raises
    anyway, to which the eval's figures are added."""
    assert ctx.eval_file is not None
    kind = "decoder" if "prompt" in ctx.eval_cases[0] else "encoder"
    family = family_for(ctx.io.kind)
    if family.eval_cases != kind:
        raise PackagerError(f"--eval {ctx.eval_file} holds {kind} cases, but the model is {family.title}; give "
                            f"{family.eval_fix}.", ExitCode.BAD_INPUT)
    tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io.to_dict())
    cases = ctx.eval_cases
    smoke_cases = cases[:evaluation.SMOKE_CASES]
    try:
        if ctx.eval_reference is None:   # the reference is the same for every recipe --fit auto tries
            # a session of the fp32 export, or a generator of its own (the genai path's PyTorch reference)
            on_reference = partial(rt.evaluate, None, ctx.io.to_dict(), tokenizer, decoder=reference) \
                if hasattr(reference, "generate") else partial(rt.evaluate, reference, ctx.io.to_dict(), tokenizer)
            full = on_reference(cases)
            sub = _slice(full, len(smoke_cases)) if family.eval_cases_alone else on_reference(smoke_cases)
            ctx.eval_reference = {"full": full, "smoke": sub}
        # A runner in another environment (onnxruntime-genai's) runs the cases there, with the device's code.
        evaluate = getattr(packaged, "evaluate", None) or partial(rt.evaluate, packaged.session, ctx.io.to_dict(),
                                                                  tokenizer)
        result = evaluate(cases)
        sub = _slice(result, len(smoke_cases)) if family.eval_cases_alone else evaluate(smoke_cases)
    except Exception as e:
        reason = str(e).split("Status Message: ")[-1].splitlines()[0][:200] if str(e) else type(e).__name__
        raise PackagerError(f"running the eval cases of {ctx.eval_file} failed ({reason}); check the cases.",
                            ExitCode.TOOL_FAILED) from None
    tolerance = ctx.profile.accuracy.eval_tolerance
    record = evaluation.summarize(ctx.eval_file, cases, ctx.eval_reference["full"], result, tolerance,
                                  (ctx.eval_reference["smoke"], sub))
    assert ctx.accuracy is not None   # the family's comparison ran first
    ctx.accuracy = dataclasses.replace(ctx.accuracy, more={**ctx.accuracy.more, "eval": record})
    evaluation.write_smoke_cases(smoke_cases, ctx.stage_dir / "samples" / "eval.jsonl")
    if also is not None:
        head, _, fix = also.message.partition("; try ")
        also.message = f"{head}, and passes {record['packaged_passed']}/{record['cases']} of your eval cases (fp32: " \
                       f"{record['reference_passed']}/{record['cases']}); try {fix}"
        also.args = (also.message,)
    elif not record["passed"]:
        raise PackagerError(evaluation.failure(ctx.recipe_name, ctx.profile.name, record), ExitCode.ACCURACY)


def verify_outputs(ctx: Context, rt: ModuleType, reference: Any, packaged: Any) -> None:
    """Text encoders and tensor models: each output against the fp32 reference's, by cosine."""
    ctx.expected_outputs = _run_all(reference, ctx.sample_inputs, "fp32 reference model")
    packaged_outputs = _run_all(packaged.session, ctx.sample_inputs, "packaged model")

    result = rt.compare(ctx.expected_outputs, packaged_outputs, ctx.io.checked_outputs)
    threshold = ctx.profile.accuracy.min_cosine
    ctx.accuracy = Accuracy(metric=family_for(ctx.io.kind).metric, reference="fp32 ONNX export",
                            samples=len(ctx.sample_inputs), threshold=threshold, more=result)
    if result["min_cosine"] < threshold:
        raise PackagerError(
            f"recipe {ctx.recipe_name} changes the answers too much: cosine {result['min_cosine']:.4f} against the "
            f"fp32 reference is below {ctx.profile.name}'s threshold of {threshold}; try --recipe fp32 or fp16.",
            ExitCode.ACCURACY,
        )
    rt.save_samples(ctx.stage_dir / "samples" / "expected.npz", ctx.expected_outputs)
    if ctx.eval_cases:
        _verify_eval(ctx, rt, reference, packaged)


def verify_decoder(ctx: Context, rt: ModuleType, reference: Any, packaged: Any) -> None:
    """Decoder LLMs: the packaged model predicts the reference's greedy continuation of each prompt; a multimodal
    one's images and audio too (soft_verification.py)."""
    _verify_decoder(ctx, rt, reference, packaged)
    media = verify_media(ctx, rt, packaged)
    if media and ctx.accuracy is not None:
        ctx.accuracy = dataclasses.replace(ctx.accuracy, more={**ctx.accuracy.more, "media": media})
    rt.save_samples(ctx.stage_dir / "samples" / "expected.npz", ctx.expected_outputs)
    if ctx.eval_cases:
        _verify_eval(ctx, rt, reference, packaged)


def verify_seq2seq(ctx: Context, rt: ModuleType, packaged: Any) -> None:
    """Encoder-decoders, end to end (and each component alone)."""
    _verify_seq2seq(ctx, rt, packaged)
    rt.save_samples(ctx.stage_dir / "samples" / "expected.npz", ctx.expected_outputs)
