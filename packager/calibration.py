"""Calibration inputs for the int8 static recipe: the activations' ranges are measured on them.

`--calibration FILE` gives them: text lines for text models, an `.npz` of inputs (one array per
model input, or several sets as `<index>/<name>` keys, run.py's samples layout) for tensor
models. Without it: 32 built-in sentences (packager/data/calibration.txt, none of them a smoke
test sample) for text models, and 16 inputs made from the signature (other seeds than the
samples') for tensor models, which only calibrate well where the signature's value range is the
real one: give real inputs for those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.context import Context, InputSpec
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.recipes import RECIPES
from packager.sample_inputs import model_inputs

DEFAULT_TEXTS = Path(__file__).resolve().parent / "data" / "calibration.txt"
DEFAULT_TENSOR_SETS = 16
_SEED = 1000   # the samples use seeds 0..count-1


def calibration_inputs(ctx: Context, tokenizer_bundle: Path) -> tuple[list[dict[str, np.ndarray]], str]:
    """The feeds to calibrate on, and where they came from (for the manifest)."""
    family = family_for(ctx.io.kind)
    if not family.calibrates:
        raise PackagerError("int8-static calibrates encoders and tensor models, not decoders (their KV cache "
                            "inputs have no fixed range); use --recipe int4 or int8-dynamic.", ExitCode.USAGE)
    path = ctx.calibration
    if family.calibrates_on_text:
        rt = runner()
        tokenizer = rt.load_tokenizer(tokenizer_bundle, ctx.io.to_dict())
        names = [i["name"] for i in ctx.io.inputs]
        texts = _read_lines(path or DEFAULT_TEXTS)
        what = f"{path} ({len(texts)} lines)" if path else f"built-in ({len(texts)} sentences)"
        return [rt.encode(tokenizer, t, names) for t in texts], what
    if path is None:
        assert ctx.reference_model is not None
        spec = InputSpec(ctx.input_spec.shapes, ctx.input_spec.values, DEFAULT_TENSOR_SETS)
        # At the sizes the samples stage will pick: the first guess that runs (PP-OCRv4 rec runs at no 224x224:
        # calibrating there failed with exit 10 where the samples, at the next guess, ran).
        return model_inputs(ctx.reference_model, ctx.io.inputs, spec, budget_bytes=ctx.profile.budget.memory_bytes,
                            first_seed=_SEED), \
            f"built-in ({DEFAULT_TENSOR_SETS} inputs made from the signature)"
    feeds = _read_npz(path, [i["name"] for i in ctx.io.inputs])
    return feeds, f"{path} ({len(feeds)} input sets)"


def unused_calibration(recipe_name: str) -> PackagerError:
    """--calibration given for a recipe that does not calibrate."""
    calibrated = sorted(r.name for r in RECIPES.values() if r.needs_calibration)
    return PackagerError(f"--calibration is for the calibrated recipes ({', '.join(calibrated)}); recipe "
                         f"{recipe_name} does not use it: drop it or use --recipe int8-static.", ExitCode.USAGE)


def _read_lines(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PackagerError(f"cannot read the calibration file {path} ({e}); give a UTF-8 text file, one "
                            "sentence per line.", ExitCode.BAD_INPUT) from None
    if not lines:
        raise PackagerError(f"the calibration file {path} has no text lines; give one sentence per line.",
                            ExitCode.BAD_INPUT)
    return lines


def _read_npz(path: Path, names: list[str]) -> list[dict[str, np.ndarray]]:
    if path.suffix != ".npz":
        raise PackagerError(f"the calibration file {path} must be an .npz of input tensors for this model (it takes "
                            f"{', '.join(names)}, not text).", ExitCode.BAD_INPUT)
    try:
        inputs: list[dict[str, np.ndarray]] = runner().read_inputs(path, names)
        return inputs
    except (OSError, ValueError) as e:  # a missing or damaged file, or the wrong arrays in it
        raise PackagerError(f"cannot use the calibration file {path}: {e}.", ExitCode.BAD_INPUT) from None
