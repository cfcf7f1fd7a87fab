"""verify for a multimodal decoder's images and audio (its encoders loaded on demand, runtime/on_demand.py): each
generated sample file through the packaged encoder and decoder against the same file through the fp32 export's
(the encoders' and the decoder's graphs as exported, which tests/test_eclass_encoders.py and test_eclass_soft.py
hold to transformers' own model), by the text prompts' gate: the packaged pipeline predicts the fp32 one's greedy
tokens, teacher-forced, and its first logits point the same way."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.errors import ExitCode, PackagerError
from packager.recipes import remedy

if TYPE_CHECKING:
    from packager.context import Context

MEDIA_DIR = "samples/media"   # in the bundle: the generated files verify judged each encoder on
TOKENS = 16


def sample_files(ctx: Context, rt: ModuleType, modes: list[str]) -> list[Path]:
    """A generated picture (a gradient with a disc) and a clip (a rising tone, 2 s), as a user's files would be."""
    folder = ctx.stage_dir / MEDIA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    if "image" in modes:
        ys, xs = np.mgrid[0:240, 0:320]
        disc = ((ys - 120) ** 2 + (xs - 200) ** 2 < 60**2) * 120
        pixels = np.stack([xs * 255 // 320, ys * 255 // 240, disc + 60], axis=-1).clip(0, 255).astype(np.uint8)
        rt.write_png(folder / "picture.png", pixels)
        files.append(folder / "picture.png")
    if "audio" in modes:
        t = np.arange(32000) / 16000
        rt.write_wav(folder / "tone.wav", 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t), 16000)
        files.append(folder / "tone.wav")
    return files


def fp32_runner(ctx: Context, rt: ModuleType, spec: dict[str, Any]) -> Any:
    """run.py's Runner over the export folder: the fp32 decoder and encoders, the tokenizer beside them."""
    assert ctx.reference_model is not None
    io = spec["io"] | {"tokenizer": "tokenizer.json"}
    return rt.Runner(ctx.reference_model.parent, spec | {"model": ctx.reference_model.name, "io": io}, log_level=4)


def verify_media(ctx: Context, rt: ModuleType, packaged: Any) -> dict[str, Any]:
    """Each sample file's gate (exit 4 below the profile's thresholds); the figures by file."""
    encoders = (ctx.io.soft or {}).get("encoders") or {}
    if not encoders:
        return {}
    reference = fp32_runner(ctx, rt, packaged.runtime)
    prompt = "Describe this."
    limits, figures, expected, firsts = ctx.profile.accuracy, {}, [], {}
    for path in sample_files(ctx, rt, list(encoders)):
        ctx.progress(f"fp32 reference: generating for {path.name}")
        ids, soft = rt.prompt_with(reference, prompt, [path])
        tokens, first = reference.decoder.generate(ids, TOKENS, soft=soft)
        ctx.progress(f"{ctx.recipe_name} model: predicting the reference's tokens for {path.name}")
        packaged_ids, packaged_soft = rt.prompt_with(packaged, prompt, [path])
        if packaged_ids != ids:
            raise PackagerError(f"the packaged bundle reads {path.name} as {len(packaged_ids)} tokens, the fp32 export "
                                f"as {len(ids)}; rebuild with --no-cache.", ExitCode.TOOL_FAILED)
        logits = rt.score_from(packaged.decoder, ids + list(tokens), len(ids), packaged_soft)
        agreement, cosine = rt.followed(logits, list(tokens), first)
        figures[path.name] = {"token_agreement": agreement, "logits_cosine": cosine, "prompt_tokens": len(ids)}
        # what the device's smoke test holds its own run of the file to (targets/smoke_test.py check_media)
        expected.append({"file": f"media/{path.name}", "prompt": prompt, "prompt_ids": ids, "tokens": list(tokens)})
        firsts[path.name] = np.asarray(first, np.float32)
        if agreement < limits.min_token_agreement or cosine < limits.min_logits_cosine:
            raise PackagerError(
                f"recipe {ctx.recipe_name} changes the answers about {path.name} too much: the packaged encoder and "
                f"decoder predict {agreement:.1%} of the fp32 export's greedy tokens (threshold "
                f"{limits.min_token_agreement:.0%}), logits cosine {cosine:.4f} (threshold {limits.min_logits_cosine}) "
                f"on {ctx.profile.name}; try {remedy(ctx.recipe_name, False)}.", ExitCode.ACCURACY)
    folder = ctx.stage_dir / MEDIA_DIR
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    np.savez(str(folder / "expected.npz"), **firsts)  # type: ignore[arg-type]
    return figures
