"""The recipes by name, each declaring what it needs; the one place a recipe name is defined.

A stage asks a recipe what it needs (calibration inputs, a merged decoder's own form, a search for the
layers it keeps at 8 bits, a model kind) instead of looking its name up in side sets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import ExitCode, PackagerError, did_you_mean

if TYPE_CHECKING:
    from packager.recipes.records import RecipeOptions, RecipeResult

Apply = Callable[[Path, Path, "RecipeOptions"], "RecipeResult"]
ApplyMerged = Callable[[tuple[Path, ...], Path, "RecipeOptions"], "RecipeResult"]


@dataclass(frozen=True)
class Recipe:
    """A recipe's name, what it needs, and where its code is: "module:function" in packager/recipes/, imported
    when the recipe runs (the CLI, the profiles and the help read the registry without loading onnx)."""

    name: str
    entry: str                                # "dense:int8_dynamic": (src, dst, RecipeOptions) -> RecipeResult
    summary: str                              # one line for the CLI's help and docs
    # A merged decoder (If branches) gets the recipe through this entry: each unmerged graph converted, then
    # merged again. None: the recipe applies to the merged graph as it is.
    merged_entry: str | None = None
    # Calibration inputs (RecipeOptions.calibration): the activations' ranges are measured on them.
    needs_calibration: bool = False
    # The layers kept at 8 bits are chosen by verifying what the model generates (packager/mixed_search.py),
    # which only a decoder LLM's verify can judge.
    searches_layers: bool = False
    kinds: frozenset[str] | None = None       # model kinds (io kind) it applies to; None: every kind

    @property
    def apply(self) -> Apply:
        return _resolve(self.entry)

    @property
    def merged(self) -> ApplyMerged | None:
        return _resolve(self.merged_entry) if self.merged_entry else None

    def __call__(self, src: Path, dst: Path, options: RecipeOptions) -> RecipeResult:
        return self.apply(src, dst, options)

    def refuses(self, kind: str, what: str) -> PackagerError | None:
        """Why this recipe cannot package `what` (a model of io `kind`), or None."""
        if self.kinds is None or kind in self.kinds:
            return None
        return PackagerError(f"recipe {self.name} finds the layers of a decoder LLM that need 8 bits by what it "
                             f"generates; this is {what}: use int4 or int8-dynamic instead.", ExitCode.USAGE)


def _resolve(entry: str) -> Callable[..., RecipeResult]:
    module, _, function = entry.partition(":")
    found: Callable[..., RecipeResult] = getattr(importlib.import_module(f"packager.recipes.{module}"), function)
    return found


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp32", "dense:fp32", "the exported model as it is"),
    Recipe("int8-dynamic", "dense:int8_dynamic",
           "int8 weights, activations quantized at run time (outlier channels smoothed)",
           merged_entry="dense:int8_dynamic_merged"),
    Recipe("int8-static", "dense:int8_static", "int8 weights and activations, ranges calibrated on sample inputs",
           needs_calibration=True),
    Recipe("fp16", "dense:fp16", "16-bit float weights and compute (GPUs)", merged_entry="dense:fp16_merged"),
    Recipe("int4", "nbits:int4", "4-bit block-quantized matmul weights (MatMulNBits), 8-bit tied embedding"),
    Recipe("int4-mixed", "nbits:int4_mixed",
           "int4, with the fewest most sensitive layers at 8 bits that keep the answers",
           searches_layers=True, kinds=frozenset({"decoder"})),
)}


def recipe(name: str) -> Recipe:
    """The recipe `name`; PackagerError (usage) naming an unknown one, with did-you-mean."""
    found = RECIPES.get(name)
    if found is None:
        raise PackagerError(f"unknown recipe {name!r}{did_you_mean(name, list(RECIPES))}; "
                            f"recipes: {', '.join(RECIPES)}.", ExitCode.USAGE)
    return found


def help_text() -> str:
    """The recipes for --recipe's help: each name and what it does."""
    return "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())


def calibrated(recipes: dict[str, str]) -> list[str]:
    """The recipes among a --recipe choice (component -> name) that need calibration inputs."""
    return sorted({n for n in recipes.values() if RECIPES[n].needs_calibration})


def searched(name: str) -> bool:
    """Whether the recipe (one for the whole model) chooses its 8-bit layers by searching."""
    found = RECIPES.get(name)
    return found is not None and found.searches_layers


def parse_recipe(spec: str) -> dict[str, str]:
    """--recipe R (one recipe for every component: {"": R}) or per component, NAME=R[,NAME=R...]
    ({"encoder": R1, "decoder": R2}); PackagerError (usage) naming an unknown recipe."""
    parts = [p.strip() for p in spec.split(",")] if "=" in spec else [spec]
    chosen: dict[str, str] = {}
    for part in parts:
        name, _, value = part.rpartition("=")
        name, value = name.strip(), value.strip()
        if "=" in spec and not name:
            raise PackagerError(f"--recipe {spec!r}: {part!r} names no component; write COMPONENT=RECIPE pairs "
                                "separated by commas, e.g. encoder=int8-dynamic,decoder=int4.", ExitCode.USAGE)
        recipe(value)
        if name in chosen:
            raise PackagerError(f"--recipe {spec!r} names {name} twice; give each component one recipe.",
                                ExitCode.USAGE)
        chosen[name] = value
    return chosen


def recipe_label(recipes: dict[str, str]) -> str:
    """The per-component recipes as --recipe writes them (one name when every component shares it)."""
    if len(set(recipes.values())) == 1:
        return next(iter(recipes.values()))
    return ",".join(f"{k}={v}" for k, v in recipes.items())


def remedy(name: str, components: bool = False) -> str:
    """What to try when recipe `name` changes the answers too much (verify's refusals end with it)."""
    mixed = [r.name for r in RECIPES.values() if r.searches_layers]
    keep = f"--recipe {mixed[0]} (keeps the most sensitive layers at 8 bits), or " if name == "int4" and mixed else ""
    per_component = ", for the component that drifts: --recipe NAME=R" if components else ""
    more = PRECISE[PRECISE.index(name) + 1:] if name in PRECISE else PRECISE   # never the recipe that drifted
    if not more:
        return "another target or runtime: fp32 is the most precise recipe"
    listed = more[0] if len(more) == 1 else f"{', '.join(more[:-1])} or {more[-1]}"
    return f"{keep}a more precise recipe ({listed}{per_component})"


# The recipes a drift falls back to, least precise first
PRECISE = ("int8-dynamic", "fp16", "fp32")
