"""Settings resolve CLI > PACKAGER_* > [tool.packager] > profile > default, and say where from."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.config import parse_size, resolve_package_settings
from packager.errors import ExitCode, PackagerError

NONE = {"target": None, "out": None, "recipe": None, "budget": None}


@pytest.mark.parametrize("text, size", [("1500000000", 1_500_000_000), ("1.5GB", 1_500_000_000),
                                        ("900MiB", 900 * 2**20), ("2 gib", 2 * 2**30), (1024, 1024)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text, "--budget") == size


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "1.5TB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(PackagerError) as e:
        parse_size(text, "--budget")
    assert e.value.code == ExitCode.USAGE and "--budget" in e.value.message


def test_layers_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACKAGER_RECIPE", raising=False)
    monkeypatch.delenv("PACKAGER_TARGET", raising=False)
    monkeypatch.delenv("PACKAGER_OUT", raising=False)
    monkeypatch.delenv("PACKAGER_BUDGET", raising=False)
    (tmp_path / "pyproject.toml").write_text('[tool.packager]\ntarget = "rpi4"\nrecipe = "fp32"\nout = "bundles"\n')
    sub = tmp_path / "src"
    sub.mkdir()

    s = resolve_package_settings(NONE, cwd=sub)  # the nearest pyproject.toml, found from a subfolder
    assert (s.target.value, s.recipe.value, str(s.out.value)) == ("rpi4", "fp32", "bundles")
    assert s.recipe.origin.endswith("pyproject.toml") and s.budget.origin == "profile rpi4"

    monkeypatch.setenv("PACKAGER_RECIPE", "int8-dynamic")
    monkeypatch.setenv("PACKAGER_BUDGET", "1GB")
    s = resolve_package_settings(NONE, cwd=sub)
    assert (s.recipe.value, s.recipe.origin) == ("int8-dynamic", "PACKAGER_RECIPE")
    assert s.profile.budget.memory_bytes == 10**9 and s.budget.origin == "PACKAGER_BUDGET"

    s = resolve_package_settings({**NONE, "target": "rpi5", "recipe": "fp16", "budget": "700MiB"}, cwd=sub)
    assert (s.profile.name, s.recipe.value, s.profile.budget.memory_bytes) == ("rpi5", "fp16", 700 * 2**20)
    assert any("(--budget)" in line for line in s.describe())


def test_no_target_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACKAGER_TARGET", raising=False)
    with pytest.raises(PackagerError, match="no target given"):
        resolve_package_settings(NONE, cwd=tmp_path)


def test_unknown_project_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.packager]\ntarbet = "rpi5"\n')
    with pytest.raises(PackagerError, match="'tarbet' is not a known setting.*did you mean \"target\""):
        resolve_package_settings(NONE, cwd=tmp_path)
