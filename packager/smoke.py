"""Run a bundle's own smoke test in a fresh process, as the device would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.archive import extract_bundle
from packager.device_code import runner
from packager.emulate import preflight, prepare
from packager.emulate_qemu import no_core_dumps
from packager.errors import ExitCode, PackagerError
from packager.leftovers import temp_folder

SMOKE_TIMEOUT_S = 1800


@dataclass
class SmokeResult:
    bundle: str
    verdict: str               # "PASS" or "FAIL: <reason>"
    exit_code: int
    report: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    # --emulate: the emulated CPU, the device's Python, the installed runtime version, and that the
    # peak memory is an upper bound (qemu's own memory included); also in report["emulation"].
    emulation: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.verdict == "PASS"


def run_smoke(bundle: Path, python: str | None = None, emulate: bool = False,
              public_key: Path | None = None) -> SmokeResult:
    """Unpack (if an archive) and run smoke_test.py with `python` (this interpreter by default), or,
    with `emulate`, with the device's Python on its arm64 userland under qemu (packager/emulate.py).

    With `public_key`, the bundle's signature is checked first, by packager's own copy of the check
    (nothing from an unverified bundle runs), and then again by the bundle's smoke test, as on the device."""
    if emulate and python:
        raise PackagerError("--emulate runs the device's own Python (from the bundle's profile); drop --python.",
                            ExitCode.USAGE)
    if not bundle.exists():
        raise PackagerError(f"{bundle}: no such bundle; pass a .tar.gz from `packager package` or its unpacked folder.",
                            ExitCode.BAD_INPUT)
    if public_key is not None:
        from packager.signing import check_public_key

        check_public_key(public_key)
    emulation = None
    with temp_folder("smoke") as tmp:
        folder = bundle if bundle.is_dir() else extract_bundle(bundle, Path(tmp))
        if not (folder / "smoke_test.py").is_file():
            raise PackagerError(f"{bundle}: no smoke_test.py inside; this is not a packager bundle.",
                                ExitCode.BAD_INPUT)
        if emulate:
            preflight(folder)  # no qemu, or a target that cannot be emulated: said before the bundle is judged
        # Nothing of the bundle's runs (nor its requirements installed) before packager's own copy of the
        # device's check has seen every file in the folder: listed, with its recorded sha256 (signed: in the
        # signed manifest).
        failure, report = check_before_running(folder, public_key)
        if failure:
            return SmokeResult(str(bundle), f"FAIL: {failure}", 1, report)
        key_args = ("--public-key", str(public_key.resolve())) if public_key is not None else ()
        preexec = None
        if emulate:
            # Scratch space (the guest's HOME, its -L prefix) outside the bundle folder: smoke_test.py
            # rejects files it does not list, and a user's unpacked bundle stays as it was.
            work = Path(tempfile.mkdtemp(prefix="emulate-", dir=tmp))
            emu = prepare(folder, work)
            if public_key is not None:  # the guest reads the key from the run's own scratch folder
                key_args = ("--public-key", str(shutil.copyfile(public_key, work / "public_key.pem")))
            cmd, env, preexec = emu.command("smoke_test.py", "--json", *key_args), emu.env(), no_core_dumps
            emulation = emu.report()
        else:
            cmd = [python or sys.executable, "smoke_test.py", "--json", *key_args]
            # The key is the caller's choice, passed above, as in the emulated guest, which sees none of
            # the host's environment.
            env = {k: v for k, v in os.environ.items() if k != "PACKAGER_PUBLIC_KEY"}
            # PYTHONSAFEPATH (Python 3.11+): the bundle's folder is not put on sys.path; smoke_test.py takes
            # it off itself on older Pythons.
            env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONSAFEPATH": "1"}
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S,
                                  preexec_fn=preexec)
        except FileNotFoundError:
            if emulate:
                raise PackagerError(f"{cmd[0]} disappeared while preparing the run; reinstall qemu-user-static.",
                                    ExitCode.MISSING_DEPENDENCY) from None
            raise PackagerError(f"{python}: no such Python interpreter; pass an existing one with --python.",
                                ExitCode.USAGE) from None
        except subprocess.TimeoutExpired:
            return SmokeResult(str(bundle), f"FAIL: timed out after {SMOKE_TIMEOUT_S} s", 124,
                               {"emulation": emulation} if emulation else {}, emulation=emulation)
        if emulation is not None:
            emulation["run_s"] = round(time.perf_counter() - start, 1)
    lines = proc.stdout.strip().splitlines()
    verdict = lines[-1] if lines else f"FAIL: the smoke test printed nothing ({_last(proc.stderr)})"
    report = {}
    if len(lines) >= 2:
        try:
            report = json.loads(lines[-2])
        except json.JSONDecodeError:
            pass
    if emulation is not None:
        report["emulation"] = emulation
    return SmokeResult(str(bundle), verdict, proc.returncode, report, proc.stdout + proc.stderr, emulation)


def check_before_running(folder: Path, public_key: Path | None) -> tuple[str, dict[str, Any]]:
    """Why the unpacked bundle must not run (and the report saying so), or "" when every file in it
    is listed with its sha256: by the signed manifest with a key, by SHA256SUMS and the manifest without."""
    if public_key is not None:
        from packager.signing import signature_failure

        failure = signature_failure(folder, public_key)
        return failure, {"signature": {"checked": True, "error": failure}} if failure else {}
    rt = runner()
    try:
        manifest = rt.read_manifest(folder)
        rt.check_files(folder, manifest)
        rt.manifest_record(manifest)   # of the shape packager writes, as the device reads it
    except ValueError as e:  # IntegrityError, ManifestError, or a manifest that is not a JSON object
        failure = str(e)
    except (KeyError, TypeError, AttributeError) as e:  # a manifest of another shape is a refusal too
        failure = f"{rt.MANIFEST} does not have the shape packager writes ({type(e).__name__}: {e}); rebuild the bundle"
    else:
        return "", {}
    return failure, {"files": {"error": failure}}


def _last(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"
