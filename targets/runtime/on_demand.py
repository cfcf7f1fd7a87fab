"""Encoders loaded on demand: a multimodal decoder's vision and audio encoders (runtime.io.soft.encoders), each a graph
of its own in the bundle's model folder. One is loaded when an input of its mode arrives, run once on that input,
and released before the decoder's pass, so the process never holds an encoder beside the decoder's activations and
holds none at all between such inputs (packager plan counts each mode this way). Its output, the input's soft tokens,
takes the place of a run of placeholder tokens in the prompt: [begin] + [placeholder] x tokens + [end]. Where the
encoder's spec says `end_row` (Gemma 3n's audio), its graph's last row is the end token's embedding, which the model
reads from the encoder's own small table rather than the text decoder's, fed at the end token's position.
"""

import gc
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .media import read_image, read_wav
from .media_gemma3n import gemma3n_audio_features, gemma3n_pixels
from .media_gemma4 import gemma4_audio_features, gemma4_patches
from .peak import peak_bytes, reset_peak
from .soft import Soft

MODES = {".wav": "audio"}   # by suffix; any other file is an image (PNG, or what Pillow reads)
# an audio encoder's features by its family's processor (pre["processor"]; Gemma 4's where a spec names none)
AUDIO_FEATURES = {"gemma4": gemma4_audio_features, "gemma3n": gemma3n_audio_features}
IMAGE_PROCESSORS = ("gemma4", "gemma3n")   # Gemma 4's patches and positions; Gemma 3n's pixels


def mode_of(path: Path) -> str:
    return MODES.get(path.suffix.lower(), "image")


def encoder_inputs(mode: str, path: Path, pre: dict[str, Any], session: Any) -> dict[str, np.ndarray]:
    """The encoder's inputs for one file, as transformers' processor makes them (runtime/media_gemma4.py), padded to
    the graph's input: an image's patches to the largest image's, a clip's frames to 30 s's."""
    names = [i.name for i in session.get_inputs()]
    processor = str(pre.get("processor", "gemma4"))
    if processor not in (AUDIO_FEATURES if mode == "audio" else IMAGE_PROCESSORS):
        raise ValueError(f"this bundle's {mode} encoder takes {processor}'s inputs, which this run.py does not "
                         "compute: package the model again with this packager")
    if mode == "image" and processor == "gemma3n":   # the image resized to the processor's size: [1, 3, H, W]
        return {names[0]: gemma3n_pixels(read_image(path), pre)[None]}
    if mode == "image":
        values, positions, _ = gemma4_patches(read_image(path), pre)
        return dict(zip(names, (values[None], positions[None])))
    rate = int(pre.get("sampling_rate", 16000))
    samples = read_wav(path, rate)
    limit = int(pre.get("max_length", 480000))
    if pre.get("truncation", True) and len(samples) > limit:   # as the feature extractor cuts it
        print(f"note: {path.name} is {len(samples) / rate:.1f} s long; the audio encoder hears its first "
              f"{limit / rate:.0f} s", file=sys.stderr)
    features, mask = AUDIO_FEATURES[processor](samples, pre)
    frames = int(session.get_inputs()[0].shape[1])
    if len(features) > frames:
        raise ValueError(f"{path} is longer than the audio encoder takes ({frames} frames, 30 s): cut it")
    padded = np.zeros((1, frames, features.shape[1]), np.float32)
    padded[0, :len(features)] = features
    valid = np.zeros((1, frames), bool)
    valid[0, :len(mask)] = mask
    return dict(zip(names, (padded, valid)))


def open_encoder(runner: Any, encoder: dict[str, Any]) -> Any:
    """A session of an encoder io.soft.encoders names (its file beside the decoder's), for one input only."""
    return runner.open_session(str(Path(runner.runtime["model"]).parent / encoder["file"]))


def soft_tokens(runner: Any, path: Path) -> tuple[str, np.ndarray]:
    """(mode, [tokens, hidden]) of one file: its encoder loaded, run and released."""
    mode = mode_of(path)
    encoders = (runner.io.get("soft") or {}).get("encoders") or {}
    if mode not in encoders:
        have = " or ".join(f"{'a .wav file' if m == 'audio' else 'an image'}" for m in encoders) or "none"
        raise ValueError(f"{path}: this bundle's model has no {mode} encoder (it takes {have})")
    encoder = encoders[mode]
    session = open_encoder(runner, encoder)
    try:
        rows = session.run(None, encoder_inputs(mode, path, encoder["pre"], session))[0]
    finally:
        del session
        gc.collect()   # the session's memory back before the decoder's pass
    return mode, np.asarray(rows, np.float32)


def prompt_with(runner: Any, prompt: str, paths: list[Path]) -> tuple[list[int], Soft]:
    """The prompt's ids with each file's run of placeholders before the text (after the tokens the tokenizer puts
    first, the BOS), and their soft tokens."""
    ids = runner.prompt_ids(prompt)
    lead = len(runner.tokenizer.encode("").ids)   # what the tokenizer adds in front of any text
    encoders = runner.io["soft"]["encoders"]
    runs: list[int] = []
    rows: dict[int, list[np.ndarray]] = {}
    for path in paths:
        mode, tokens = soft_tokens(runner, path)
        e = encoders[mode]
        if e.get("end_row"):   # the graph's last row is the end token's embedding (Gemma 3n's: its own table's)
            tokens, end = tokens[:-1], tokens[-1:]
            rows.setdefault(int(e["end"]), []).append(end)
        runs += [int(e["begin"]), *[int(e["token_id"])] * len(tokens), int(e["end"])]
        rows.setdefault(int(e["token_id"]), []).append(tokens)
    ids = ids[:lead] + runs + ids[lead:]
    return ids, Soft.at_tokens(ids, {token: np.concatenate(parts) for token, parts in rows.items()})


def largest_inputs(mode: str, pre: dict[str, Any], session: Any) -> dict[str, np.ndarray]:
    """Inputs that fill the encoder's graph: an image of every patch (a grid of whole pooling blocks) or of the
    processor's size, a clip of every frame; random values (the memory of a pass does not depend on them)."""
    shapes = [i.shape for i in session.get_inputs()]
    names = [i.name for i in session.get_inputs()]
    noise = np.random.default_rng(0)
    if mode == "audio":
        _, frames, bins = shapes[0]
        return dict(zip(names, (noise.standard_normal((1, frames, bins), np.float32),
                                np.ones((1, frames), bool))))
    if len(shapes[0]) == 4:   # pixels (Gemma 3n's): the processor's one size
        return {names[0]: noise.random(tuple(int(d) for d in shapes[0]), np.float32)}
    patches, size = int(shapes[0][1]), int(shapes[0][2])
    k = int(pre.get("pooling_kernel_size", 3))
    width = next(w for w in range(math.isqrt(patches), 0, -1)
                 if patches % w == 0 and w % k == 0 and (patches // w) % k == 0)
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(patches // width), indexing="xy"), -1).reshape(1, -1, 2)
    return dict(zip(names, (noise.random((1, patches, size), np.float32), grid.astype(np.int64))))


def mode_peaks(runner: Any) -> dict[str, int]:
    """Each encoder's mode as the loop meets it: the process as it is (the decoder loaded, its cache held), the
    encoder loaded, run once on its largest input and released; the peak resident bytes of each, by mode."""
    peaks: dict[str, int] = {}
    for mode, encoder in ((runner.io.get("soft") or {}).get("encoders") or {}).items():
        reset_peak()
        session = open_encoder(runner, encoder)
        session.run(None, largest_inputs(mode, encoder["pre"], session))
        del session
        gc.collect()
        peaks[mode] = peak_bytes()
    return peaks

