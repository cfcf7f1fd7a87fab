"""Run settings, resolved in one order: CLI > environment (PACKAGER_*) > [tool.packager] in the
nearest pyproject.toml > the target profile > built-in defaults. Each value remembers where it
came from, for --verbose."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.profiles import Profile, resolve_target

KEYS = ("target", "out", "recipe", "budget")
DEFAULT_OUT = "dist"
MAX_SIZE = 2**63 - 1   # sizes are 64-bit signed integers everywhere they go (TOML, onnxruntime, psutil)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class Setting:
    value: Any
    origin: str        # "--budget", "PACKAGER_BUDGET", "pyproject.toml", "profile rpi5", "default"


@dataclass(frozen=True)
class PackageSettings:
    profile: Profile   # with the budget override applied
    out: Setting
    recipe: Setting
    budget: Setting
    target: Setting

    def describe(self, keys: tuple[str, ...] = KEYS) -> list[str]:
        """--verbose: each setting with where it came from."""
        return [f"{k:<7} = {getattr(self, k).value}  ({getattr(self, k).origin})" for k in keys]


def parse_size(text: str | int, what: str) -> int:
    """Bytes from `1500000000`, `1.5GB`, `1200MiB` ... (decimal GB, binary GiB)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise PackagerError(f"{what} {text!r} is not a size; write it like 1.5GB, 1200MiB or 1500000000.",
                                ExitCode.USAGE)
        if len(m.group(1)) > 40:  # past any real size, and Decimal would do arbitrary-precision work on it
            raise _too_large(text, what)
        # Decimal, not float: a float rounds sizes past 2**53 bytes and turns a long one into inf. At most
        # 40 digits times a 10-digit unit: 60 digits of precision keep the product exact.
        with localcontext() as exact:
            exact.prec = 60
            size = int(Decimal(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if size <= 0:
        raise PackagerError(f"{what} must be positive, got {text!r}.", ExitCode.USAGE)
    if size > MAX_SIZE:
        raise _too_large(text, what)
    return size


# Context lengths: tokens, or thousands of them in the binary sense (8K = 8192), as model cards write them.
_CONTEXT_UNITS = {"": 1, "k": 2**10, "m": 2**20}
MAX_CONTEXT = 2**31 - 1   # ONNX Runtime's tensor dimensions, and far past any model's positions


def parse_context(text: str | int, what: str = "--context") -> int:
    """Tokens from `8192`, `8K`, `4k`, `512`, `1M` (K = 1024): the one parser of every --context."""
    if isinstance(text, int) and not isinstance(text, bool):
        tokens = text
    else:
        m = re.fullmatch(r"\s*([0-9]{1,10})\s*([km]?)\s*", str(text), re.IGNORECASE)
        if not m:
            raise PackagerError(f"{what} {text!r} is not a number of tokens; write it like 8192, 8K or 512.",
                                ExitCode.USAGE)
        tokens = int(m.group(1)) * _CONTEXT_UNITS[m.group(2).lower()]
    if not 1 <= tokens <= MAX_CONTEXT:
        raise PackagerError(f"{what} {text!r} is not between 1 token and {MAX_CONTEXT} tokens; give a context in "
                            "that range, like 8K.", ExitCode.USAGE)
    return tokens


def _too_large(text: str | int, what: str) -> PackagerError:
    return PackagerError(f"{what} {text!r} is larger than any memory (at most {MAX_SIZE} bytes, 8 EiB); check the "
                         "number and its unit.", ExitCode.USAGE)


def find_pyproject(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder / "pyproject.toml"
    return None


def project_settings(start: Path) -> tuple[dict[str, Any], str]:
    """[tool.packager] of the nearest pyproject.toml, validated."""
    path = find_pyproject(start)
    if path is None:
        return {}, ""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("packager", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PackagerError(f"{path}: cannot read [tool.packager] ({e}); fix the file.", ExitCode.USAGE) from None
    except ValueError:  # Python's own limit: tomllib cannot convert an integer of more than 4300 digits
        raise PackagerError(f"{path}: holds an integer too long to read; fix the file.", ExitCode.USAGE) from None
    for key, value in table.items():
        if key not in KEYS:
            raise PackagerError(f"{path}: [tool.packager] key '{key}' is not a known setting"
                                f"{did_you_mean(key, list(KEYS))}; known: {', '.join(KEYS)}.", ExitCode.USAGE)
        if not isinstance(value, str) and not (key == "budget" and isinstance(value, int)):
            raise PackagerError(f"{path}: [tool.packager] key '{key}' must be a string.", ExitCode.USAGE)
    return table, str(path)


def _layered(key: str, cli: dict[str, Any], project: dict[str, Any], project_path: str) -> Setting | None:
    if cli.get(key) is not None:
        return Setting(cli[key], f"--{key}")
    env = f"PACKAGER_{key.upper()}"
    if os.environ.get(env):
        return Setting(os.environ[env], env)
    if key in project:
        return Setting(project[key], project_path)
    return None


def resolve_package_settings(cli: dict[str, Any], cwd: Path | None = None,
                             default_target: Setting | None = None) -> PackageSettings:
    """`default_target`: the target when none is set anywhere (a bundle's own, for `check BUNDLE`)."""
    project, project_path = project_settings(cwd or Path.cwd())
    target = _layered("target", cli, project, project_path) or default_target
    if target is None:
        raise PackagerError("no target given; pass --target NAME (see `packager targets`), or set PACKAGER_TARGET.",
                            ExitCode.USAGE)
    profile = resolve_target(str(target.value))
    out = _layered("out", cli, project, project_path) or Setting(DEFAULT_OUT, "default")
    recipe = _layered("recipe", cli, project, project_path) or Setting(profile.recipe, f"profile {profile.name}")
    budget = _layered("budget", cli, project, project_path)
    if budget is None:
        budget = Setting(profile.budget.memory_bytes, f"profile {profile.name}")
    else:
        budget = Setting(parse_size(budget.value, budget.origin), budget.origin)
        profile = dataclasses.replace(profile, budget=dataclasses.replace(profile.budget, memory_bytes=budget.value))
    return PackageSettings(profile, Setting(Path(out.value), out.origin), recipe, budget, target)
