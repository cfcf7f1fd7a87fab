"""Run a bundle's own smoke test in a fresh process, as the device would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.archive import extract_bundle
from packager.errors import ExitCode, PackagerError

SMOKE_TIMEOUT_S = 1800


@dataclass
class SmokeResult:
    bundle: str
    verdict: str               # "PASS" or "FAIL: <reason>"
    exit_code: int
    report: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.verdict == "PASS"


def run_smoke(bundle: Path, python: str | None = None) -> SmokeResult:
    """Unpack (if an archive) and run smoke_test.py with `python` (this interpreter by default)."""
    if not bundle.exists():
        raise PackagerError(f"{bundle}: no such bundle; pass a .tar.gz from `packager package` or its unpacked folder.",
                            ExitCode.BAD_INPUT)
    with tempfile.TemporaryDirectory(prefix="packager-smoke-") as tmp:
        folder = bundle if bundle.is_dir() else extract_bundle(bundle, Path(tmp))
        if not (folder / "smoke_test.py").is_file():
            raise PackagerError(f"{bundle}: no smoke_test.py inside; this is not a packager bundle.", ExitCode.BAD_INPUT)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.run([python or sys.executable, "smoke_test.py", "--json"], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
        except FileNotFoundError:
            raise PackagerError(f"{python}: no such Python interpreter; pass an existing one with --python.",
                                ExitCode.USAGE) from None
        except subprocess.TimeoutExpired:
            return SmokeResult(str(bundle), f"FAIL: timed out after {SMOKE_TIMEOUT_S} s", 124)
    lines = proc.stdout.strip().splitlines()
    verdict = lines[-1] if lines else f"FAIL: the smoke test printed nothing ({_last(proc.stderr)})"
    report: dict[str, Any] = {}
    if len(lines) >= 2:
        try:
            report = json.loads(lines[-2])
        except json.JSONDecodeError:
            pass
    return SmokeResult(str(bundle), verdict, proc.returncode, report, proc.stdout + proc.stderr)


def _last(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"
