"""Sample inputs for tensor models, made from the model's input signature.

Open dimensions and values the signature cannot tell (a chunk length, a sample rate) come
from --shape and --value (or a built-in sample's hints); open dimensions they leave are sized from what
the model records or looks like (packager/open_shapes.py); the rest is filled deterministically: 3-channel
image inputs with pictures (packager/sample_images.py), other floats with noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from packager.context import InputSpec
from packager.errors import ExitCode, PackagerError
from packager.open_shapes import SizeRecord, candidates, is_open, pick, size_record
from packager.sample_images import image_samples, is_image

# numpy kinds packager fills (bool, signed, unsigned, float): not strings (object arrays, which no
# .npz holds without pickle), complex, or ml_dtypes' bfloat16 / float8 / int4 (kind "V", which
# onnxruntime's Python API does not take).
SAMPLE_KINDS = "biuf"
# No sample tensor may be larger than the target's memory budget (the device could not hold it), or
# than this without a target: a model's declared shape of 10**12 is refused, not allocated.
MAX_SAMPLE_BYTES = 4 * 2**30


def make_inputs(inputs: list[dict[str, Any]], spec: InputSpec, first_seed: int = 0,
                budget_bytes: int | None = None, record: SizeRecord | None = None) -> list[dict[str, np.ndarray]]:
    """spec.count sets of inputs; open dimensions --shape leaves are sized from the exporter's `record`
    (packager/open_shapes.py), else from the graph."""
    unknown = sorted((set(spec.shapes) | set(spec.values)) - {i["name"] for i in inputs})
    if unknown:
        names = ", ".join(i["name"] for i in inputs)
        raise PackagerError(f"--shape/--value name {unknown[0]!r}, which is not a model input; inputs are: {names}.",
                            ExitCode.BAD_INPUT)
    record = record or SizeRecord()
    picked = {p.name: p.shape for p in pick(inputs, record, set(spec.shapes))}
    samples = []
    for index in range(spec.count):
        rng = np.random.default_rng(first_seed + index)
        samples.append({i["name"]: _tensor(i, spec, rng, budget_bytes, picked.get(i["name"]), record.unit_pixels)
                        for i in inputs})
    return samples


def model_inputs(model: Path, inputs: list[dict[str, Any]], spec: InputSpec, budget_bytes: int | None = None,
                 session_options: Any = None, first_seed: int = 0) -> list[dict[str, np.ndarray]]:
    """make_inputs() sized by what the model records (packager/open_shapes.py). Where a dimension is open, the
    model runs once on the first set, so that sizes it cannot take are a bad input (exit 5) naming --shape,
    here, rather than a runtime failure in a later stage; a guessed image size that fails makes way for the
    next guess. `session_options`: the onnxruntime SessionOptions of the trial run (the profile's, as the device
    sets them; the runtime's defaults where None). `first_seed`: the first set's (calibration uses others)."""
    import onnx

    record = size_record(onnx.load(model, load_external_data=False))
    open_inputs = [i for i in inputs if any(is_open(d) for d in i["shape"])]
    tried: list[str] = []
    for candidate in candidates(record, inputs, spec.shapes):
        samples = make_inputs(inputs, spec, first_seed, budget_bytes=budget_bytes, record=candidate)
        failure = _run_failure(model, samples[0], session_options) if open_inputs else None
        if failure is None:
            return samples
        sizes = " and ".join(f"{i['name']} {','.join(map(str, samples[0][i['name']].shape))}" for i in open_inputs)
        tried.append(f"{sizes} ({failure})")
    raise _shapes_refused(open_inputs, spec, tried)


def _run_failure(model: Path, feeds: dict[str, np.ndarray], options: Any = None) -> str | None:
    """The runtime's complaint when the model runs on `feeds` (its last line), or None: it ran, or it does
    not even load (which is no question of sizes: the stages after say what is wrong)."""
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception:
        return None
    try:
        session.run(None, feeds)
    except Exception as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return lines[-1].split("Status Message:")[-1].strip()[:300]
    return None


def _shapes_refused(open_inputs: list[dict[str, Any]], spec: InputSpec, tried: list[str]) -> PackagerError:
    declared = ", ".join(f"{i['name']} [{', '.join(_dim_text(d) for d in i['shape'])}]" for i in open_inputs)
    option = " ".join(f"--shape {i['name']}={','.join(_dim_text(d, axis) for axis, d in enumerate(i['shape']))}"
                      for i in open_inputs)
    at = "the sizes given with --shape" if all(i["name"] in spec.shapes for i in open_inputs) else \
        "the sizes packager chose"
    return PackagerError(f"the model does not run at {at} for its open dimensions ({declared}; tried "
                         f"{', then '.join(tried)}); give the sizes it was exported for, as in {option} with each "
                         "D a size (and --value for an input whose values matter).", ExitCode.BAD_INPUT)


def _dim_text(dim: Any, axis: int | None = None) -> str:
    """A dimension as the error shows it: its size; open, its name (or ?), or in a --shape line D<n>."""
    if not is_open(dim):
        return str(dim)
    if axis is None:
        return dim if isinstance(dim, str) else "?"
    return "1" if axis == 0 else f"D{axis + 1}"


def _shape(inp: dict[str, Any], spec: InputSpec, picked: tuple[int, ...] | None) -> tuple[int, ...]:
    if inp["name"] in spec.shapes:
        shape = tuple(spec.shapes[inp["name"]])
        if len(shape) != len(inp["shape"]):
            raise PackagerError(
                f"--shape {inp['name']} has {len(shape)} dimensions but the model's input has {len(inp['shape'])}; "
                "give one size per dimension.", ExitCode.BAD_INPUT)
        return shape
    return picked or tuple(inp["shape"])   # no open dimension: the model's own


def _check_size(name: str, shape: tuple[int, ...], dtype: np.dtype, given: bool, budget_bytes: int | None) -> None:
    """Refuse a sample that could never run on the target, before numpy tries to allocate it."""
    limit = budget_bytes or MAX_SAMPLE_BYTES
    size = math.prod(shape) * dtype.itemsize   # Python ints: no overflow at 2**62
    if size <= limit:
        return
    what = "the target's memory budget" if budget_bytes else "the largest sample packager makes"
    option = f"--shape {name}={','.join(f'D{i + 1}' for i in range(len(shape)))}"
    # The runtime refuses any other size for a dimension the model fixes: only a new export changes it.
    fix = (f"give a smaller {option}" if given else
           f"the model fixes that shape, so re-export it with those dimensions open and choose them with {option}")
    raise PackagerError(f"model input {name!r} has shape {list(shape)}, so one sample of it is {_human(size)}, more "
                        f"than {what} ({_human(limit)}); {fix}.", ExitCode.BAD_INPUT)


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _tensor(inp: dict[str, Any], spec: InputSpec, rng: np.random.Generator, budget_bytes: int | None = None,
            picked: tuple[int, ...] | None = None, unit_range: bool = False) -> np.ndarray:
    if inp["dtype"] == "unknown":
        raise PackagerError(f"model input {inp['name']!r} is not a tensor; packager cannot make samples for it.",
                            ExitCode.BAD_INPUT)
    dtype = np.dtype(inp["dtype"])
    if dtype.kind not in SAMPLE_KINDS:
        kind = "string" if dtype.kind == "O" else dtype.name
        raise PackagerError(f"model input {inp['name']!r} takes {kind} tensors, which packager cannot make samples of "
                            "(it makes bool, integer, float16, float32 and float64 ones); re-export the model to take "
                            "one of those, e.g. with a Cast inside the graph.", ExitCode.BAD_INPUT)
    shape = _shape(inp, spec, picked)
    _check_size(inp["name"], shape, dtype, inp["name"] in spec.shapes, budget_bytes)
    if inp["name"] in spec.values:
        return np.full(shape, spec.values[inp["name"]], dtype=dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if is_image(shape, dtype):   # pictures, not noise: packager/sample_images.py
        return image_samples(shape, dtype, rng, unit_range)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 0.5).astype(dtype)
