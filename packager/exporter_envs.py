"""Exporter environments: a virtual environment per exporter, made once from pinned requirements.

Exporters pin conflicting libraries: onnxruntime-genai's model builder needs transformers 5.x, while
optimum-onnx 0.1.0 (packager's own `hf` extra) caps transformers below 4.58. No single environment
holds both, and a user should never have to resolve that by hand. So an exporter that needs other
pins runs in its own environment, as a child process whose output lines come back as progress.

Layout, under $PACKAGER_CACHE_DIR/envs (default ~/.cache/packager/envs):

    <name>-<key>/env.json   what it was made from (name, requirements, Python), written last
    <name>-<key>/bin/python the environment's interpreter (a venv)
    <name>-<key>.lock       held while it is being made, so concurrent runs make it once

`key` hashes the name, the pinned requirements and the Python version: a change of pins makes a new
environment beside the old one, never a half-updated one. It is made with venv and pip (pip takes
torch's CPU build from the machine's own index; uv would fetch a multi-GB CUDA build) in a temporary
folder beside its place that is renamed into place once complete (emulate.cached_entry), so it is
whole or absent. The environment is only ever run as `python -m MODULE`: a venv's console scripts
hold its absolute path in their shebangs, which the rename breaks; `python -m` does not care.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packager.emulate import cache_dir, cached_entry
from packager.errors import ExitCode, PackagerError

MARKER = "env.json"
TAIL_LINES = 20


@dataclass(frozen=True)
class ExporterEnv:
    """One exporter's environment: its name (`packager env create NAME`) and exact requirements."""
    name: str
    requirements: tuple[str, ...]
    purpose: str = ""
    # modules of packager/data/envs/ put in its site-packages, each imported at start-up by a .pth line of its own
    startup: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        inputs = {"name": self.name, "requirements": sorted(self.requirements), "python": python,
                  **({"startup": {m: hashlib.sha256(startup_file(m).read_bytes()).hexdigest() for m in self.startup}}
                     if self.startup else {})}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def folder(self) -> Path:
        return envs_root() / f"{self.name}-{self.key}"

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    def create_command(self) -> str:
        return f"packager env create {self.name}"

    def pip_command(self, target: Path | None = None) -> list[str]:
        python = (target or self.folder) / "bin" / "python"
        return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *self.requirements]


# onnxruntime-genai's model builder (issue 19): transformers 5.x; torch pinned to the CPU build packager's
# `hf` extra pins; onnx-ir, which the builder imports without declaring it. transformers 5.24.0, not 5.25.0: 5.25
# needs kernels>=0.19.1, which the package index this was made against lacks.
# timm and torchvision for Gemma 3n's vision encoder (transformers builds it with timm, which imports torchvision).
# PyPI's torchvision is built for CUDA torch: packager_torchvision (packager/data/envs/) lets it import beside the CPU
# build, for every process of the environment (transformers imports torchvision wherever it is installed).
GENAI = ExporterEnv("genai", ("torch==2.13.0", "transformers==5.24.0", "onnxruntime-genai==0.18.0", "onnx-ir==1.1.0",
                              "torchvision==0.28.0", "timm==1.0.31"),
                    "onnxruntime-genai's model builder (transformers 5.x)", ("packager_torchvision",))
ENVS: dict[str, ExporterEnv] = {GENAI.name: GENAI}


def envs_root() -> Path:
    return cache_dir() / "envs"


def lookup(name: str) -> ExporterEnv:
    if name in ENVS:
        return ENVS[name]
    raise PackagerError(f"unknown exporter environment {name!r}; use one of: {', '.join(sorted(ENVS))}.",
                        ExitCode.USAGE)


def is_ready(env: ExporterEnv) -> bool:
    try:
        recorded = json.loads((env.folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("key") == env.key and env.python.exists()


def ensure(env: ExporterEnv, progress: Callable[[str], None] = lambda line: None) -> Path:
    """The environment's folder, made first if it is missing (exit 7, naming the command, if it cannot be)."""
    if is_ready(env):
        return env.folder
    root = envs_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackagerError(f"{root}: cannot create the cache folder ({e.strerror or e}); set PACKAGER_CACHE_DIR "
                            "to a writable folder.", ExitCode.OUTPUT) from None
    with _locked(root / f"{env.name}-{env.key}.lock"):
        if not is_ready(env):   # another run may have made it while this one waited
            progress(f"creating the exporter environment {env.name!r} in {env.folder} (once)")
            cached_entry(env.folder, MARKER, lambda tmp: _build(env, tmp, progress))
    return env.folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)   # released when the file closes, also when the process dies
        yield


def _build(env: ExporterEnv, tmp: Path, progress: Callable[[str], None]) -> None:
    """Make the venv in `tmp` and install the pins; any failure raises (cached_entry removes `tmp`)."""
    steps = [("python -m venv", [sys.executable, "-m", "venv", str(tmp)])]
    if env.requirements:
        steps.append(("pip install", env.pip_command(tmp)))
    for what, cmd in steps:
        code, tail = _stream(cmd, progress, child_environ())
        if code != 0:
            said = tail[-1].strip() if tail else f"exit {code}"
            raise PackagerError(f"the exporter environment {env.name!r} is missing and could not be created "
                                f"({what} failed: {said}); run `{env.create_command()}` where the "
                                "package index is reachable, or install the same pins yourself: "
                                f"{' '.join(env.requirements)}.", ExitCode.MISSING_DEPENDENCY)
    install_startup(env, tmp)
    record = {"name": env.name, "key": env.key, "requirements": list(env.requirements),
              "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def startup_file(module: str) -> Path:
    return Path(__file__).resolve().parent / "data" / "envs" / f"{module}.py"


def install_startup(env: ExporterEnv, folder: Path) -> None:
    """env.startup's modules into the venv at `folder`, each with the .pth line that imports it at start-up."""
    if not env.startup:
        return
    site = next((folder / "lib").glob("python*/site-packages"))
    for module in env.startup:
        shutil.copyfile(startup_file(module), site / f"{module}.py")
        (site / f"{module}.pth").write_text(f"import {module}\n", encoding="utf-8")


def run(env: ExporterEnv, module: str, args: Sequence[str], progress: Callable[[str], None] = lambda line: None,
        cwd: Path | None = None) -> list[str]:
    """Run `python -m MODULE ARGS` in the environment (made first if missing), each output line passed to
    `progress`. Returns the last lines; a failure is a TOOL_FAILED error quoting the last one."""
    ensure(env, progress)
    code, tail = _stream([str(env.python), "-m", module, *args], progress, child_environ(), cwd)
    if code != 0:
        said = next((line.strip() for line in reversed(tail) if line.strip()), f"exit {code}")
        # packager's own children refuse the user's checkpoint so (eclass_checkpoint.Refused), their sentence last
        if code == ExitCode.BAD_INPUT:
            raise PackagerError(said, ExitCode.BAD_INPUT)
        raise PackagerError(f"{module} failed in the exporter environment {env.name!r} (exit {code}): {said}",
                            ExitCode.TOOL_FAILED)
    return tail


def child_environ() -> dict[str, str]:
    """packager's own environment, less what would make the child import packager's packages."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**environ, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _stream(cmd: list[str], progress: Callable[[str], None], environ: dict[str, str],
            cwd: Path | None = None) -> tuple[int, list[str]]:
    """Run `cmd` with stdout and stderr merged, each line (tqdm's carriage returns too) to `progress`."""
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, encoding="utf-8", errors="replace", env=environ, cwd=cwd)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.strip():
                progress(line)
                tail = (tail + [line])[-TAIL_LINES:]
        return proc.wait(), tail
    finally:
        if proc.poll() is None:   # interrupted: the child goes too
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class EnvStatus:
    name: str
    purpose: str
    requirements: tuple[str, ...]
    folder: str
    ready: bool


def statuses() -> list[EnvStatus]:
    return [EnvStatus(e.name, e.purpose, e.requirements, str(e.folder), is_ready(e)) for e in ENVS.values()]
