"""Target profiles: TOML files in profiles/, loaded into frozen, validated dataclasses.

A profile is data about a device and how to deploy to it. Code reads device facts from here
and never hard-codes them. Validation is strict: an unknown key or a wrong type is an error
that names the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.names import check_name
from packager.paths import profiles_dir

# The profile's types: their home is profile_types.py (below the runtimes and recipes, which read profiles); their
# users import them from here, where profiles are loaded.
from packager.profile_types import (
    DEFAULT_RUNTIME,
    OS,
    Accuracy,
    Budget,
    DecoderRuntime,
    Device,
    Int4,
    Mobile,
    Profile,
    Runtime,
    Session,
    _build,
    key_error,
)
from packager.recipes import RECIPES
from packager.runtimes import RUNTIMES

__all__ = ["DEFAULT_RUNTIME", "OS", "Accuracy", "Budget", "DecoderRuntime", "Device", "Int4", "Mobile", "Profile",
           "Runtime", "Session", "builtin_profiles", "key_error", "load_profile", "resolve_target"]


def _check_values(p: Profile, where: str) -> None:
    # The name becomes a file name (<model>-<name>.tar.gz, the staging folder): a plain one, or a
    # profile could write, or delete, outside the output folder.
    check_name(p.name, f"{where}: key 'name'", ExitCode.BAD_PROFILE, "fix the profile")
    positive = {
        "device.cores": p.device.cores,
        "device.ram_bytes": p.device.ram_bytes,
        "budget.memory_bytes": p.budget.memory_bytes,
        "session.intra_op_threads": p.session.intra_op_threads,
        "runtime.max_opset": p.runtime.max_opset,
        "budget.context": p.budget.context,
    }
    for key, value in positive.items():
        if value <= 0:
            raise key_error(where, key, f"must be positive, got {value}")
    if p.device.memory_bandwidth_gbs < 0:
        raise key_error(where, "device.memory_bandwidth_gbs", f"must be positive, or 0 for unknown, got "
                        f"{p.device.memory_bandwidth_gbs}")
    if p.budget.memory_bytes > p.device.ram_bytes:
        raise key_error(where, "budget.memory_bytes", "is larger than device.ram_bytes")
    for key in ("min_cosine", "min_token_agreement", "min_logits_cosine"):
        if not 0.0 < getattr(p.accuracy, key) <= 1.0:
            raise key_error(where, f"accuracy.{key}", "must be in (0, 1]")
    if not 0.0 <= p.accuracy.eval_tolerance < 1.0:
        raise key_error(where, "accuracy.eval_tolerance", f"must be in [0, 1), got {p.accuracy.eval_tolerance}")
    if p.int4.block_size < 16 or p.int4.block_size & (p.int4.block_size - 1):
        raise key_error(where, "int4.block_size", f"must be a power of two of at least 16, got {p.int4.block_size}")
    if p.int4.accuracy_level not in range(5):
        raise key_error(where, "int4.accuracy_level", f"must be 0 to 4, got {p.int4.accuracy_level}")
    named = [("recipe", p.recipe), *((f"fit_recipes[{i}]", r) for i, r in enumerate(p.fit_recipes)),
             *([("decoder_recipe", p.decoder_recipe)] if p.decoder_recipe else []),
             *((f"decoder_fit_recipes[{i}]", r) for i, r in enumerate(p.decoder_fit_recipes))]
    for key, name in named:
        if name not in RECIPES:
            raise key_error(where, key, f"names an unknown recipe {name!r}{did_you_mean(name, list(RECIPES))}")
    if not p.runtime.providers:
        raise key_error(where, "runtime.providers", "must name at least one execution provider")
    if p.os.debian and not re.fullmatch(r"[a-z]+", p.os.debian):
        raise key_error(where, "os.debian",
                        f"must be a Debian release codename such as \"trixie\", got {p.os.debian!r}")
    if p.os.container and not re.fullmatch(r"[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9._-]+)?", p.os.container):
        raise key_error(where, "os.container", f"must be an image reference such as \"registry/name:tag\", got "
                       f"{p.os.container!r}")
    if p.runtime.gpu_context_bytes < 0:
        raise key_error(where, "runtime.gpu_context_bytes", f"must not be negative, got {p.runtime.gpu_context_bytes}")
    if p.runtime.name not in RUNTIMES:
        raise key_error(where, "runtime.name", f"names an unknown runtime {p.runtime.name!r}"
                        f"{did_you_mean(p.runtime.name, list(RUNTIMES))}; known: {', '.join(RUNTIMES)}")
    RUNTIMES[p.runtime.name].check_profile(p, where)
    if p.decoder_int4 is not None:   # checked as the profile a decoder gets
        _check_values(p.with_decoder_int4(), f"{where} [decoder_int4]")
    if p.decoder_runtime is not None:   # checked as the profile a decoder on it gets
        decoder = p.with_decoder_runtime()
        if not decoder.decoder_recipe:
            raise key_error(where, "decoder_runtime.recipe", "must name a recipe")
        _check_values(decoder, f"{where} [decoder_runtime]")


def load_profile(path: Path) -> Profile:
    """Load and validate one profile file."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackagerError(f"{where}: profile file not found; check the path.", ExitCode.BAD_PROFILE) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PackagerError(f"{where}: cannot read the profile ({e}); check its permissions and encoding.",
                            ExitCode.BAD_PROFILE) from None
    except tomllib.TOMLDecodeError as e:
        raise PackagerError(f"{where}: invalid TOML ({e}); fix the syntax.", ExitCode.BAD_PROFILE) from None
    except ValueError:  # Python's own limit: tomllib cannot convert an integer of more than 4300 digits
        raise PackagerError(f"{where}: holds an integer too long to read; fix the profile.",
                            ExitCode.BAD_PROFILE) from None
    profile: Profile = _build(Profile, data, where)
    _check_values(profile, where)
    return dataclasses.replace(profile, source=where)


def builtin_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """All profiles in `directory` (the built-in profiles/ by default), by name."""
    profiles = {}
    for path in sorted((directory or profiles_dir()).glob("*.toml")):
        p = load_profile(path)
        if p.name != path.stem:
            raise key_error(str(path), "name", f"must match the file name {path.stem!r}")
        profiles[p.name] = p
    return profiles


def resolve_target(name: str) -> Profile:
    """A profile by name or alias, or from a path to a .toml file."""
    if name.endswith(".toml"):
        return load_profile(Path(name))
    profiles = builtin_profiles()
    by_alias = {alias: p for p in profiles.values() for alias in (p.name, *p.aliases)}
    if name in by_alias:
        return by_alias[name]
    hint = did_you_mean(name, list(by_alias))
    raise PackagerError(
        f"unknown target {name!r}{hint}; run `packager targets` to list them, or pass a profile .toml file.",
        ExitCode.BAD_PROFILE,
    )
