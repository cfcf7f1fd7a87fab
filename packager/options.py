"""The options of one `package` or `check` run, declared once.

The CLI builds a `PackageOptions` from its arguments, the Python API from its keywords (both through
`PackageOptions.build`, which turns the user's forms into typed values), and the pipeline and its
`Context` take it as it is. Each option is checked here, when the object is made: a bad value fails
before any target's work, and an object that exists holds valid options.

What depends on the target (the profile's recipe and budget, the output folder's layering with
PACKAGER_* and [tool.packager]) resolves later, in packager/config.py; `out`, `recipe` and `budget`
here are the command line's layer of that resolution. What needs the files themselves (a signing
key, the --eval cases, a calibration file) is read by the pipeline, before the export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from packager.cache import StageCache, open_cache
from packager.config import parse_context
from packager.errors import ExitCode, PackagerError
from packager.names import check_name

PathLike = str | os.PathLike[str]
FIT_MODES = ("auto",)
KV_BIT_SIZES = (4, 8, 16, 32)   # KV cache element sizes plan reckons with; a runtime runs some of them (--kv-bits)
SMOKE_MODES = ("host", "emulate")


@dataclass(frozen=True)
class InputSpec:
    """How to make sample inputs for a tensor model whose signature leaves them open."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)   # --shape NAME=D1,D2
    values: dict[str, float] = field(default_factory=dict)             # --value NAME=V (fills the tensor)
    count: int = 4                                                     # how many samples


@dataclass(frozen=True)
class PackageOptions:
    """What the user asked of one run of `package` (every field) or `check` (recipe, budget, context,
    measure, allow_pickle, input_spec, cache): the CLI's options, the API's keywords."""

    out: str | None = None             # --out, as given (settings resolve it: config.py)
    recipe: str | None = None          # --recipe (settings resolve it; the pipeline parses it)
    budget: str | int | None = None    # --budget (settings parse it, naming where it came from)
    context: int | None = None         # --context, in tokens
    calibration: Path | None = None    # --calibration: inputs for int8-static
    fit: str | None = None             # --fit: "auto" or None
    smoke: str | None = None           # --smoke: "host", "emulate" or None
    sign: Path | None = None           # --sign: Ed25519 private key that signs the bundle's manifest
    name: str | None = None            # --name: overrides the bundle name taken from the model
    allow_pickle: bool = False         # --allow-pickle: accept pickled weights, loaded weights-only
    input_spec: InputSpec = field(default_factory=InputSpec)   # --shape, --value
    cache: bool | PathLike | StageCache = True   # True: the user's stage cache; False: none; a folder: that one
    adapter: str | None = None         # --adapter: a PEFT LoRA folder, or sample:NAME
    eval_file: str | None = None       # --eval: a JSONL file, or sample:NAME (a built-in adapter's)
    measure: bool = True               # check --no-measure: estimate only (package always measures)
    kv_bits: int | None = None         # --kv-bits: a decoder's KV cache element size (its runtime's setting)

    def __post_init__(self) -> None:
        _check_modes(self.fit, self.recipe, self.smoke, self.name)
        if self.context is not None:
            parse_context(self.context)
        check_kv_bits(self.kv_bits)
        if any(d < 0 for dims in self.input_spec.shapes.values() for d in dims):
            raise _bad_spec(self.input_spec.shapes, self.input_spec.values)

    @property
    def fit_auto(self) -> bool:
        return self.fit == "auto"

    def stage_cache(self) -> StageCache | None:
        """The stage cache this run reads and writes (None: none), PACKAGER_NO_CACHE heeded now."""
        return self.cache if isinstance(self.cache, StageCache) else open_cache(self.cache)

    def settings_layer(self, target: str | None) -> dict[str, Any]:
        """The command line's layer of the settings resolution (config.resolve_package_settings)."""
        return {"target": target, "out": self.out, "recipe": self.recipe, "budget": self.budget}

    def given(self) -> list[str]:
        """The options set to other than their defaults, by field name."""
        default = PackageOptions()
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]

    @classmethod
    def build(cls, *, out: PathLike | None = None, recipe: str | None = None, budget: str | int | None = None,
              context: int | str | None = None, calibration: PathLike | None = None, fit: str | None = None,
              smoke: str | None = None, sign: PathLike | None = None, name: str | None = None,
              allow_pickle: bool = False, shapes: Mapping[str, Sequence[int]] | None = None,
              values: Mapping[str, float] | None = None, cache: bool | PathLike | StageCache = True,
              adapter: PathLike | None = None, eval_file: PathLike | None = None,
              measure: bool = True, kv_bits: int | None = None) -> PackageOptions:
        """From the user's forms (the API's keywords, the CLI's parsed arguments): `context` as 8192 or
        "8K", paths as str or Path, `shapes` and `values` as mappings."""
        _check_modes(fit, recipe, smoke, name)   # before the conversions: the order the API has always had
        return cls(out=None if out is None else str(out), recipe=recipe, budget=budget,
                   context=None if context is None else parse_context(context),
                   calibration=None if calibration is None else Path(calibration), fit=fit, smoke=smoke,
                   sign=None if sign is None else Path(sign), name=name, allow_pickle=allow_pickle,
                   input_spec=input_spec(shapes, values), cache=cache,
                   adapter=None if adapter is None else str(adapter),
                   eval_file=None if eval_file is None else str(eval_file), measure=measure, kv_bits=kv_bits)


def _check_modes(fit: str | None, recipe: str | None, smoke: str | None, name: str | None) -> None:
    if fit is not None and fit not in FIT_MODES:
        raise PackagerError(f"--fit {fit!r} is not a mode; the only one is --fit auto.", ExitCode.USAGE)
    if fit and recipe:
        raise PackagerError("--fit auto chooses the recipe itself; drop --recipe or --fit.", ExitCode.USAGE)
    if smoke is not None and smoke not in SMOKE_MODES:
        raise PackagerError(f"--smoke {smoke!r} is not a mode; use --smoke host or --smoke emulate.", ExitCode.USAGE)
    if name is not None:   # it names the archive and the staging folder (packager/names.py)
        check_name(name, "--name", ExitCode.USAGE, "choose a name of those characters")


def check_kv_bits(kv_bits: int | None) -> None:
    """--kv-bits, of package, check and plan: a size plan reckons with (which of them a runtime runs, it says)."""
    if kv_bits is not None and kv_bits not in KV_BIT_SIZES:
        raise PackagerError(f"--kv-bits {kv_bits} is not {', '.join(map(str, KV_BIT_SIZES[:-1]))} or "
                            f"{KV_BIT_SIZES[-1]}; choose one of those.", ExitCode.USAGE)


def input_spec(shapes: Mapping[str, Sequence[int]] | None, values: Mapping[str, float] | None) -> InputSpec:
    """--shape and --value as an InputSpec: sizes as non-negative integers, fills as numbers."""
    try:
        dims = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
        fills = {k: float(v) for k, v in (values or {}).items()}
    except (TypeError, ValueError):
        raise _bad_spec(shapes, values) from None
    if any(d < 0 for v in dims.values() for d in v):
        raise _bad_spec(shapes, values)
    return InputSpec(shapes=dims, values=fills)


def _bad_spec(shapes: Mapping[str, Any] | None, values: Mapping[str, Any] | None) -> PackagerError:
    return PackagerError(f"shapes {dict(shapes or {})!r} / values {dict(values or {})!r}: a shape is a list of "
                         "non-negative sizes and a value a number; fix them.", ExitCode.USAGE)
