"""`packager bench BUNDLE`: how fast a bundle runs and how much memory it holds, by its own device code.

The bundle is checked as `packager smoke` checks it (every file listed with its sha256) and then run, as smoke
runs it, in a fresh child process: on this host with the interpreter its runtime runs on here
(Runtime.host_python: onnxruntime-genai's bundles in the genai environment), or with --emulate on the device's
Python under qemu (packager/emulate.py; speeds there are qemu's, not the device's). The child is
packager/bench_child.py. Decoder LLMs get the memory-bandwidth bound beside their decode speed
(packager/bandwidth.py): the device's, from its profile, and on the host the host's, measured, with the share
of it the bundle reached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.archive import extract_bundle
from packager.bandwidth import Bound, host_bandwidth_gbs, kv_bytes_of, model_reads
from packager.bench_child import CHILD
from packager.emulate import preflight, prepare
from packager.emulate_qemu import no_core_dumps
from packager.errors import ExitCode, PackagerError
from packager.leftovers import temp_folder
from packager.profile_types import Profile, profile_from_record
from packager.profiles import builtin_profiles
from packager.runtimes import runtime_for
from packager.smoke import check_before_running

BENCH_TIMEOUT_S = 3600


@dataclass(frozen=True)
class BenchSettings:
    prompt_tokens: int = 128
    new_tokens: int = 32
    runs: int = 10
    emulate: bool = False
    python: str | None = None

    def check(self) -> None:
        for flag, value in (("--prompt-tokens", self.prompt_tokens), ("--new-tokens", self.new_tokens),
                            ("--runs", self.runs)):
            if value < 1:
                raise PackagerError(f"{flag} must be a positive number, got {value}; pass 1 or more.", ExitCode.USAGE)
        if self.emulate and self.python:
            raise PackagerError("--emulate runs the device's own Python (from the bundle's profile); drop --python.",
                                ExitCode.USAGE)


@dataclass
class BenchResult:
    bundle: str
    target: str
    runtime: str
    where: str                          # "host" or "emulated"
    measured: dict[str, Any]            # the child's figures (bench_child.py)
    bounds: dict[str, Bound] = field(default_factory=dict)   # "device", "host": decoder LLMs only
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)
    emulation: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK)

    @property
    def host_ratio(self) -> float | None:
        """The share of the host's bandwidth bound the measured decode speed reached."""
        host = self.bounds.get("host")
        rate = self.measured.get("decode_tokens_per_s")
        return rate / host.tokens_per_s if host and rate else None

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "target": self.target, "runtime": self.runtime, "where": self.where,
                **self.measured, "bounds": {k: b.to_dict() for k, b in self.bounds.items()},
                "host_bound_ratio": self.host_ratio, "loadavg": list(self.loadavg), "notes": self.notes,
                "emulation": self.emulation}


def run_bench(bundle: Path, settings: BenchSettings) -> BenchResult:
    """Unpack (if an archive), check and run the bundle's device code under the bench child."""
    settings.check()
    if not bundle.exists():
        raise PackagerError(f"{bundle}: no such bundle; pass a .tar.gz from `packager package` or its unpacked folder.",
                            ExitCode.BAD_INPUT)
    with temp_folder("bench") as tmp:
        folder = bundle if bundle.is_dir() else extract_bundle(bundle, Path(tmp))
        manifest = _manifest(bundle, folder)
        profile = profile_from_record(manifest["profile"], f"{bundle}: manifest.json profile")
        runtime = manifest["runtime"]
        _check_length(bundle, runtime, settings)
        cmd, env, preexec, emulation = _command(folder, profile, settings, Path(tmp))
        measured = _run_child(bundle, folder, cmd, env, preexec)
        decoder = measured["mode"] == "decoder" and "kv" in runtime["io"]
        weights, kv_element = model_reads(folder / runtime["model"]) if decoder else (0, None)
    result = BenchResult(str(bundle), profile.name, profile.runtime.package, "emulated" if settings.emulate else "host",
                         measured, loadavg=os.getloadavg(), emulation=emulation)
    if decoder:
        kv = kv_bytes_of(runtime["io"]["kv"], kv_element) * (measured["prompt_tokens"] + measured["new_tokens"] // 2)
        _add_bounds(result, weights, kv, profile, settings)
    if settings.emulate:
        result.notes.append("emulated: the speeds are qemu's on this host, not the device's, and the peak includes "
                            "qemu's own memory (an upper bound)")
    return result


def _manifest(bundle: Path, folder: Path) -> dict[str, Any]:
    """The manifest of a bundle whose files are all as listed (smoke's own check), or why it cannot run."""
    if not (folder / "run.py").is_file() or not (folder / "manifest.json").is_file():
        raise PackagerError(f"{bundle}: no run.py and manifest.json inside; this is not a packager bundle.",
                            ExitCode.BAD_INPUT)
    failure, _ = check_before_running(folder, None)
    if failure:
        raise PackagerError(f"{bundle}: {failure}", ExitCode.BAD_INPUT)
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def _check_length(bundle: Path, runtime: dict[str, Any], settings: BenchSettings) -> None:
    context = int(runtime.get("context") or 0)
    asked = settings.prompt_tokens + settings.new_tokens
    if "kv" in runtime["io"] and context and asked > context:
        raise PackagerError(f"{bundle}: --prompt-tokens plus --new-tokens ({asked}) exceed the {context} tokens "
                            "of context the bundle was built for; ask for fewer, or "
                            "package with a larger --context.", ExitCode.USAGE)


def _command(folder: Path, profile: Profile, settings: BenchSettings,
             tmp: Path) -> tuple[list[str], dict[str, str], Any, dict[str, Any] | None]:
    """The child's command line, environment and preexec, and the emulation's record."""
    args = ("-c", CHILD, str(folder.resolve()), str(settings.prompt_tokens), str(settings.new_tokens),
            str(settings.runs))
    if settings.emulate:
        preflight(folder)
        emu = prepare(folder, Path(tempfile.mkdtemp(prefix="emulate-", dir=tmp)))
        return emu.command(*args), emu.env(), no_core_dumps, emu.report()
    python = settings.python or runtime_for(profile).host_python(profile)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PACKAGER_PUBLIC_KEY")}
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONSAFEPATH": "1"}
    return [python, *args], env, None, None


def _run_child(bundle: Path, folder: Path, cmd: list[str], env: dict[str, str], preexec: Any) -> dict[str, Any]:
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S,
                              preexec_fn=preexec)
    except FileNotFoundError:
        raise PackagerError(f"{cmd[0]}: no such Python interpreter; pass an existing one with --python.",
                            ExitCode.USAGE) from None
    except subprocess.TimeoutExpired:
        raise PackagerError(f"{bundle}: the bench ran past {BENCH_TIMEOUT_S} s; ask for fewer tokens or runs.",
                            ExitCode.TOOL_FAILED) from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise PackagerError(f"{bundle}: the bundle's model failed to load or run ({tail}); run its smoke test "
                            "(`packager smoke`) to see why.", ExitCode.TOOL_FAILED)
    measured: dict[str, Any] = json.loads(lines[-1])
    return measured


def _add_bounds(result: BenchResult, weights: int, kv: int, profile: Profile, settings: BenchSettings) -> None:
    """The device's bound and, on the host, the host's: `weights` and `kv` read per token."""
    bandwidth = device_bandwidth(profile)
    if bandwidth:
        result.bounds["device"] = Bound(bandwidth, weights, kv, f"{profile.name} device.memory_bandwidth_gbs")
    else:
        result.notes.append(f"{profile.name} names no device.memory_bandwidth_gbs: no device bound")
    if not settings.emulate:
        start = time.perf_counter()
        result.bounds["host"] = Bound(host_bandwidth_gbs(), weights, kv, "this host: best copy of a 512 MiB array "
                                      f"(read + written, in CPU time), measured in {time.perf_counter() - start:.1f} s")


def device_bandwidth(profile: Profile) -> float:
    """The profile's memory bandwidth (GB/s, 0: unknown). A bundle's record of its profile has none
    (Profile.to_dict): the built-in profile of its name has it, where its device is the same."""
    if profile.device.memory_bandwidth_gbs:
        return profile.device.memory_bandwidth_gbs
    builtin = builtin_profiles().get(profile.name)
    if builtin is None or dataclasses.replace(builtin.device, memory_bandwidth_gbs=0.0) != profile.device:
        return 0.0
    return builtin.device.memory_bandwidth_gbs
