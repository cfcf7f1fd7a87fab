"""An encoder-decoder's samples: raw inputs the device's user would have (a few seconds of generated sound as
WAV files, generated pictures as PNG files, or the family's sentences), turned into the encoder's inputs by
run.py's own pre-processing, from the files as written."""

from __future__ import annotations

import json
from types import ModuleType
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from packager.context import Context


def _sounds(rate: int) -> list[tuple[str, np.ndarray]]:
    """Deterministic test sounds: a rising sweep, a chord, and a tone whose loudness comes and goes
    like syllables (no recordings: nothing is downloaded, and random weights need no speech)."""
    t2, t3 = np.arange(2 * rate) / rate, np.arange(3 * rate) / rate
    sweep = 0.3 * np.sin(2 * np.pi * (200 * t2 + (1800 / 4) * t2 ** 2))        # 200 Hz -> 2 kHz in 2 s
    chord = 0.2 * cast(np.ndarray, sum(np.sin(2 * np.pi * f * t2[: int(1.5 * rate)]) for f in (262, 330, 392)))
    syllables = 0.4 * np.sin(2 * np.pi * 180 * t3) * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t3))
    return [("sweep.wav", sweep), ("chord.wav", chord), ("syllables.wav", syllables)]


def _pictures(height: int, width: int) -> list[tuple[str, np.ndarray]]:
    """Deterministic pictures at twice the model's size (the runner resizes them, as it would a photo)."""
    y, x = np.mgrid[0:2 * height, 0:2 * width] / np.array([2 * height, 2 * width])[:, None, None]
    gradient = np.stack([x, y, 1 - x], axis=-1)
    checker = np.repeat((((np.floor(x * 8) + np.floor(y * 8)) % 2))[..., None], 3, axis=-1) * [0.9, 0.8, 0.2]
    disc = np.stack([((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1)] * 3, axis=-1) * [0.1, 0.4, 0.9] + 0.05
    return [(n, np.round(255 * np.clip(a, 0, 1)).astype(np.uint8))
            for n, a in (("gradient.png", gradient), ("checker.png", checker), ("disc.png", disc))]


def media_samples(ctx: Context, rt: ModuleType, texts: list[str]) -> None:
    """The raw sample files (WAV, PNG, or the family's sentences) and the encoder inputs run.py's own
    pre-processing makes of them."""
    folder = ctx.stage_dir / "samples"   # made by the samples stage, which saves the inputs too
    io, pre = ctx.io.to_dict(), ctx.io.preprocess or {}   # the device code below reads the io as JSON
    entries: list[dict[str, str]] = []
    if ctx.io.modality == "audio":
        for name, wave in _sounds(int(pre["sampling_rate"])):
            rt.write_wav(folder / name, wave, int(pre["sampling_rate"]))
            entries.append({"file": f"samples/{name}"})
    elif ctx.io.modality == "image":
        for name, pixels in _pictures(int(pre["height"]), int(pre["width"])):
            rt.write_png(folder / name, pixels)
            entries.append({"file": f"samples/{name}"})
    else:
        entries = [{"text": t} for t in texts[:3]]
    (ctx.stage_dir / rt.SAMPLE_MEDIA).write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    tokenizer = rt.load_tokenizer(ctx.stage_dir, io)
    # From the files as written (16-bit samples, 8-bit pixels): the device reads the same bytes.
    ctx.sample_inputs = [rt.encoder_feeds(io, tokenizer, raw) for raw in rt.sample_media(ctx.stage_dir)]
