"""A recipe's options and result: plain records, light to import (no onnx), so that the registry, the runtimes
and the Context name them without loading a recipe's code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.profile_types import Int4

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RecipeResult:
    name: str
    params: dict[str, Any]
    quantized_nodes: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # The weight bytes at each precision (packager/coverage.py), set by the quantize stage.
    coverage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeOptions:
    """What a recipe may need beyond the model: the target's kernel settings."""

    int4: Int4 = field(default_factory=Int4)
    # int8-static: the inputs the activations' ranges are measured on (packager/calibration.py)
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    calibration_source: str = ""
    # int4-mixed: the layers (packager/mixed.py's names, "layers.3", "lm_head") kept at 8 bits
    keep_8bit: tuple[str, ...] = ()
    # int4-mixed: where this run keeps the model's 4- and 8-bit quantizations (quantized_nbits), so that each
    # layer set the search tries is only a mix of the two; None: quantize afresh
    nbits_dir: Path | None = None
    # Called with a short line as the recipe goes (int4: each weight quantized), for the human watching.
    progress: Callable[[str], None] | None = None
