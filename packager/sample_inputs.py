"""Sample inputs for tensor models, made from the model's input signature.

Open dimensions and values the signature cannot tell (a chunk length, a sample rate) come
from --shape and --value (or a built-in sample's hints); the rest is filled deterministically.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from packager.context import InputSpec
from packager.errors import ExitCode, PackagerError

OPEN_DIM_BATCH = 1     # the first open dimension: a batch of one, as a device runs
OPEN_DIM_OTHER = 16    # other open dimensions: a short sequence
# numpy kinds packager fills (bool, signed, unsigned, float): not strings (object arrays, which no
# .npz holds without pickle), complex, or ml_dtypes' bfloat16 / float8 / int4 (kind "V", which
# onnxruntime's Python API does not take).
SAMPLE_KINDS = "biuf"
# No sample tensor may be larger than the target's memory budget (the device could not hold it), or
# than this without a target: a model's declared shape of 10**12 is refused, not allocated.
MAX_SAMPLE_BYTES = 4 * 2**30


def make_inputs(inputs: list[dict[str, Any]], spec: InputSpec, first_seed: int = 0,
                budget_bytes: int | None = None) -> list[dict[str, np.ndarray]]:
    unknown = sorted((set(spec.shapes) | set(spec.values)) - {i["name"] for i in inputs})
    if unknown:
        names = ", ".join(i["name"] for i in inputs)
        raise PackagerError(f"--shape/--value name {unknown[0]!r}, which is not a model input; inputs are: {names}.",
                            ExitCode.BAD_INPUT)
    samples = []
    for index in range(spec.count):
        rng = np.random.default_rng(first_seed + index)
        samples.append({i["name"]: _tensor(i, spec, rng, budget_bytes) for i in inputs})
    return samples


def _shape(inp: dict[str, Any], spec: InputSpec) -> tuple[int, ...]:
    if inp["name"] in spec.shapes:
        shape = tuple(spec.shapes[inp["name"]])
        if len(shape) != len(inp["shape"]):
            raise PackagerError(
                f"--shape {inp['name']} has {len(shape)} dimensions but the model's input has {len(inp['shape'])}; "
                "give one size per dimension.", ExitCode.BAD_INPUT)
        return shape
    return tuple(d if isinstance(d, int) and d > 0 else (OPEN_DIM_BATCH if axis == 0 else OPEN_DIM_OTHER)
                 for axis, d in enumerate(inp["shape"]))


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


def _tensor(inp: dict[str, Any], spec: InputSpec, rng: np.random.Generator,
            budget_bytes: int | None = None) -> np.ndarray:
    if inp["dtype"] == "unknown":
        raise PackagerError(f"model input {inp['name']!r} is not a tensor; packager cannot make samples for it.",
                            ExitCode.BAD_INPUT)
    dtype = np.dtype(inp["dtype"])
    if dtype.kind not in SAMPLE_KINDS:
        kind = "string" if dtype.kind == "O" else dtype.name
        raise PackagerError(f"model input {inp['name']!r} takes {kind} tensors, which packager cannot make samples of "
                            "(it makes bool, integer, float16, float32 and float64 ones); re-export the model to take "
                            "one of those, e.g. with a Cast inside the graph.", ExitCode.BAD_INPUT)
    shape = _shape(inp, spec)
    _check_size(inp["name"], shape, dtype, inp["name"] in spec.shapes, budget_bytes)
    if inp["name"] in spec.values:
        return np.full(shape, spec.values[inp["name"]], dtype=dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 0.5).astype(dtype)
