"""Sample inputs for tensor models, made from the model's input signature.

Open dimensions and values the signature cannot tell (a chunk length, a sample rate) come
from --shape and --value (or a built-in sample's hints); the rest is filled deterministically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from packager.context import InputSpec
from packager.errors import ExitCode, PackagerError

OPEN_DIM_BATCH = 1     # the first open dimension: a batch of one, as a device runs
OPEN_DIM_OTHER = 16    # other open dimensions: a short sequence


def make_inputs(inputs: list[dict[str, Any]], spec: InputSpec, first_seed: int = 0) -> list[dict[str, np.ndarray]]:
    unknown = sorted((set(spec.shapes) | set(spec.values)) - {i["name"] for i in inputs})
    if unknown:
        names = ", ".join(i["name"] for i in inputs)
        raise PackagerError(f"--shape/--value name {unknown[0]!r}, which is not a model input; inputs are: {names}.",
                            ExitCode.BAD_INPUT)
    samples = []
    for index in range(spec.count):
        rng = np.random.default_rng(first_seed + index)
        samples.append({i["name"]: _tensor(i, spec, rng) for i in inputs})
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


def _tensor(inp: dict[str, Any], spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    if inp["dtype"] == "unknown":
        raise PackagerError(f"model input {inp['name']!r} is not a tensor; packager cannot make samples for it.",
                            ExitCode.BAD_INPUT)
    dtype = np.dtype(inp["dtype"])
    shape = _shape(inp, spec)
    if inp["name"] in spec.values:
        return np.full(shape, spec.values[inp["name"]], dtype=dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 0.5).astype(dtype)
