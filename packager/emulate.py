"""Emulated smoke test: a bundle's own smoke_test.py on an arm64 Debian userland under qemu-user.

`packager smoke BUNDLE --emulate` answers "does it start and answer right with the device's CPU
features, the device's Python and the wheels pip picks for the device?" without the device:

1. userland: the device's Python from Debian's arm64 packages, for the Debian release the
   profile names (`[os] debian`). apt-get resolves the dependency closure and downloads it with a
   configuration of its own (its own sources.list, state, cache and log folders, arm64 only;
   the host's apt configuration is neither read nor changed); `dpkg-deb -x` unpacks it. No
   chroot, no root, no binfmt registration. Built once, into a temporary folder beside its cache
   entry, and renamed into place: an interrupted build never leaves a half-built entry.
2. site-packages: the bundle's requirements.txt, installed by the host's pip for the device's
   platform (CPython X.Y, manylinux aarch64 up to the userland's glibc). Cached by content.
3. run: `qemu-aarch64-static -L <userland> -cpu <model> python smoke_test.py --json`, with an
   ARM /proc/cpuinfo for the profile's core (onnxruntime crashes on import when the guest sees
   the host's x86 one, which is what qemu-user 7.2 shows it).

What it is not: a timing (qemu's TCG runs floating point hundreds of times slower than the
core) nor a memory measurement (the peak it reports includes qemu's own memory: an upper bound).

Targets whose profile names no Debian release are refused: Jetson (JetPack 6 is Ubuntu 22.04
with Python 3.10, which no Debian release ships, and its runtime comes from the Jetson AI Lab
index; only the CPU fallback path could run under qemu anyway) and the phone (Android is no
Debian userland, and the app runs onnxruntime-android rather than a Python wheel).

Device facts come from the bundle's manifest (the resolved profile it was built for). The only
table here is about qemu and Arm cores: which qemu CPU model stands in for which core.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.emulate_qemu import QEMU_BINARIES as QEMU_BINARIES  # their home is emulate_qemu.py
from packager.emulate_qemu import QEMU_CPUS as QEMU_CPUS
from packager.emulate_qemu import CpuChoice, choose_cpu, cpuinfo, find_qemu, qemu_models, qemu_version
from packager.emulate_userland import (
    SitePackages,
    Userland,
    _guest_env,
    emulate_cache,
    ensure_userland,
    install_requirements,
)
from packager.emulate_userland import cached_entry as cached_entry  # their home is emulate_userland.py
from packager.emulate_userland import pip_error as pip_error
from packager.emulate_userland import userland_entry as userland_entry
from packager.emulate_userland import wheel_platforms as wheel_platforms
from packager.errors import ExitCode, PackagerError
from packager.paths import cache_dir as cache_dir  # its home is paths.py


@dataclass(frozen=True)
class DeviceSpec:
    """What emulation needs to know about the device: the resolved profile the bundle carries."""
    target: str
    arch: str
    cpu: str
    cores: int
    isa: tuple[str, ...]
    os_name: str
    python: str                    # "3.13"
    debian: str | None             # None: the bundle predates the os.debian key
    runtime_package: str
    index_url: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str) -> DeviceSpec:
        try:
            p = manifest["profile"]
            return cls(target=str(p["name"]), arch=str(p["device"]["arch"]), cpu=str(p["device"]["cpu"]),
                       cores=int(p["device"]["cores"]), isa=tuple(p["device"]["isa"]), os_name=str(p["os"]["name"]),
                       python=str(p["os"]["python"]), debian=p["os"].get("debian"),
                       runtime_package=str(p["runtime"]["package"]), index_url=str(p["runtime"].get("index_url", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise PackagerError(f"{where}: manifest.json lacks the resolved profile ({e}); rebuild the bundle with "
                                "`packager package`.", ExitCode.BAD_INPUT) from None

    def check_emulatable(self) -> None:
        if self.arch != "aarch64":
            raise PackagerError(f"{self.target}: --emulate runs arm64 (aarch64) bundles, and this target is "
                                f"{self.arch}; run `packager smoke` without --emulate.", ExitCode.BAD_PROFILE)
        if self.debian is None:
            raise PackagerError(f"{self.target}: this bundle's manifest predates the profile key os.debian that "
                                "--emulate needs; rebuild the bundle with this packager.", ExitCode.BAD_INPUT)
        if not self.debian:
            extra = f", and its runtime comes from {self.index_url}" if self.index_url else ""
            raise PackagerError(
                f"{self.target}: --emulate needs a Debian userland like the device's, and no Debian release matches "
                f"{self.os_name} with Python {self.python} (the profile's os.debian is empty{extra}); run "
                "`packager smoke` without --emulate, or `python smoke_test.py` from the bundle on the device itself.",
                ExitCode.BAD_PROFILE)
        if not re.fullmatch(r"3\.\d+", self.python):
            raise PackagerError(f"{self.target}: the profile's os.python {self.python!r} is not a Python version "
                                "like 3.13; fix the profile and rebuild the bundle.", ExitCode.BAD_PROFILE)


@dataclass
class Emulation:
    """A prepared emulated run: what to execute, and what to report about it."""
    device: DeviceSpec
    qemu: Path
    qemu_version: str
    cpu: CpuChoice
    userland: Userland
    packages: SitePackages
    root: Path                     # this run's -L prefix: the userland plus its own /proc/cpuinfo
    home: Path                     # the guest's HOME (onnxruntime writes under ~/.cache on import)
    setup: dict[str, Any] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [str(self.qemu), "-L", str(self.root), "-cpu", self.cpu.model, str(self.userland.python_bin), "-s",
                *args]

    def env(self) -> dict[str, str]:
        return _guest_env(self.home, self.packages.site)

    def report(self) -> dict[str, Any]:
        return {
            "emulated_cpu": self.cpu.model,
            "device_cpu": self.cpu.core,
            "cpu_note": self.cpu.note,
            "not_emulated": list(self.cpu.not_emulated),
            "device_python": self.userland.python,
            "debian": self.userland.debian,
            "glibc": self.userland.glibc,
            "runtime": self.device.runtime_package,
            "runtime_version": self.packages.version_of(self.device.runtime_package),
            "qemu": self.qemu_version,
            "peak_is_upper_bound": True,
            "note": "emulated: the peak memory includes qemu's own and is an upper bound, not the device's figure; "
                    "the run checks that the bundle starts and answers right, never its speed",
            "cache": str(emulate_cache()),
            "setup": self.setup,
        }


def preflight(folder: Path) -> tuple[DeviceSpec, Path]:
    """The bundle's device, and the qemu that emulates it: what must hold on this host before anything
    of the bundle's is judged or installed (an environment or target problem is said first)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise PackagerError(f"{folder}: cannot read manifest.json ({type(e).__name__}); rebuild the bundle with "
                            "`packager package`.", ExitCode.BAD_INPUT) from None
    device = DeviceSpec.from_manifest(manifest, str(folder))
    device.check_emulatable()
    assert device.debian
    return device, find_qemu()


def prepare(folder: Path, work: Path) -> Emulation:
    """Everything the emulated run of the unpacked bundle `folder` needs; `work` is a scratch folder
    outside the bundle (this run's -L prefix and the guest's HOME go there)."""
    device, qemu = preflight(folder)
    cpu = choose_cpu(device.cpu, device.isa, qemu_models(qemu))
    try:
        requirements = (folder / "requirements.txt").read_text(encoding="utf-8")
    except OSError as e:
        raise PackagerError(f"{folder}: cannot read requirements.txt ({e.strerror or e}); rebuild the bundle.",
                            ExitCode.BAD_INPUT) from None

    start = time.perf_counter()
    assert device.debian is not None  # preflight checked it
    userland, built = ensure_userland(device.debian, device.python, qemu)
    setup: dict[str, Any] = {"userland": "built" if built else "cached",
                             "userland_s": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    packages, installed = install_requirements(requirements, device.python, userland.glibc)
    setup |= {"packages": "installed" if installed else "cached", "packages_s": round(time.perf_counter() - start, 1)}

    root = work / "qemu-root"
    root.mkdir()
    for entry in userland.root.resolve().iterdir():
        if entry.name != "proc":
            (root / entry.name).symlink_to(entry)
    (root / "proc").mkdir()
    (root / "proc" / "cpuinfo").write_text(cpuinfo(cpu, device.cores), encoding="ascii")
    home = work / "home"
    home.mkdir()
    return Emulation(device, qemu, qemu_version(qemu), cpu, userland, packages, root, home, setup)


