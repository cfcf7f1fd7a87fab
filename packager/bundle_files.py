"""The bundle's files as one model's bundle and a bundle of several (packager/suite.py) both write them: the pinned
requirements, the device's install and run lines, the manifest's file list, the seal (manifest, signature,
SHA256SUMS) and the archive, written whole or not at all."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.archive import write_archive
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.families import family_for
from packager.leftovers import bundle_partial
from packager.records import Io
from packager.runtime_files import encoder_requirements, family_requirements, signing_requirements
from packager.runtimes import runtime_for
from packager.signing import sign_manifest

if TYPE_CHECKING:
    from packager.context import Context

SUMS = runner().SUMS


def requirements(ctx: Context) -> str:
    p = ctx.profile
    lines = [f"# Pinned for {p.name}: {p.os.name}, Python {p.os.python}, {p.device.arch}.",
             *runtime_for(p).requirements(p), *family_requirements(ctx.io.kind), *encoder_requirements(ctx.io.soft)]
    if ctx.sign_key:  # the device checks the signature with `cryptography`
        lines += signing_requirements()
    return "\n".join(lines) + "\n"



def venv_command(bundle_name: str) -> str:
    """The device's install line. The virtual environment lives outside the bundle folder: the smoke test
    refuses any file in that folder that the bundle does not list (SECURITY.md)."""
    venv = f"~/venvs/{bundle_name}"
    return f"python3 -m venv {venv} && . {venv}/bin/activate && pip install -r requirements.txt"



def run_arguments(io: Io, samples: str = "samples") -> str:
    """run.py's arguments for a first run of a model with this io (manifest runtime.io)."""
    return family_for(io.kind).run_arguments(io, samples)



def file_entries(folder: Path, known: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every file under `folder` as the manifest lists it (path, sha256, size), sorted by path; an entry in
    `known` (by path: a file hashed before, unchanged since) is taken as it is, not hashed again."""
    known = known or {}
    return [known.get(path) or {"path": path, "sha256": runner().sha256_file(p), "size": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() for path in [p.relative_to(folder).as_posix()]]



def seal(stage: Path, files: list[dict[str, Any]], manifest: dict[str, Any], sign_key: Path | None) -> None:
    """Write manifest.json, its signature with `sign_key` (if any), and SHA256SUMS over `files` and those."""
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    extra = ["manifest.json"]
    if sign_key:
        # Signed once manifest.json is final, and before SHA256SUMS, which lists the signature too.

        extra.append(sign_manifest(sign_key, stage).name)
    sums = [*files, *({"path": name, "sha256": runner().sha256_file(stage / name)} for name in extra)]
    (stage / SUMS).write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(sums, key=lambda f: f["path"])),
                              encoding="utf-8")



def check_output_dir(out: Path, option: str = "--out", what: str = "the bundle") -> None:
    """Fail before any work when `what` could not be written to `out` (given by `option`): a file
    in the way, or a folder that cannot be created. Leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise PackagerError(f"{out}: the {option} path is a file; pass a folder with {option}.", ExitCode.OUTPUT)
    missing = [p for p in [out, *out.parents] if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
        probe = out / f".packager-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise PackagerError(f"{out}: cannot write {what} there ({e.strerror or e}); pick another folder with {option}.",
                            ExitCode.OUTPUT) from None
    finally:
        for folder in missing:
            if folder.is_dir():
                folder.rmdir()



def publish(stage: Path, out: Path, name: str) -> Path:
    """The archive of the finished folder `stage` as OUT/<name>.tar.gz, written whole or not at all."""
    check_output_dir(out)
    created = not out.exists()
    final = out / f"{name}.tar.gz"
    partial = bundle_partial(final)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_archive(stage, partial)
        os.replace(partial, final)
    except OSError as e:
        raise PackagerError(f"{out}: cannot write the bundle there ({e.strerror or e}); pick another folder with "
                            "--out or free some space.", ExitCode.OUTPUT) from None
    finally:
        partial.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return final

