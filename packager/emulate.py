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

import hashlib
import importlib.metadata
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from packager.errors import ExitCode, PackagerError
from packager.leftovers import CACHE_PARTIAL, cache_partial, sweep

QEMU_BINARIES = ("qemu-aarch64-static", "qemu-aarch64")   # the static build first: it needs no host libs
HOST_APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
CACHE_LAYOUT = 1          # part of every cache key: bump it when an entry's layout changes
TOOL_TIMEOUT_S = 900      # apt-get, pip: a stalled mirror fails instead of hanging CI
PROBE_TIMEOUT_S = 120
ARM_IMPLEMENTER = 0x41    # MIDR_EL1 implementer code of Arm Ltd (Linux arch/arm64/include/asm/cputype.h)


# ---------------------------------------------------------------- qemu CPU models


@dataclass(frozen=True)
class QemuModel:
    name: str                      # as `qemu-aarch64-static -cpu help` lists it
    lacks: tuple[str, ...] = ()    # /proc/cpuinfo features of the core that this model does not implement


@dataclass(frozen=True)
class CoreModels:
    part: int                      # the core's MIDR_EL1 part number (Linux arch/arm64/include/asm/cputype.h)
    models: tuple[QemuModel, ...]  # qemu CPU models, nearest first; the first one this qemu offers is used


# The one place that maps an Arm core (a profile's device.cpu) to a qemu CPU model. `max` is never
# used: it turns on every feature qemu implements (SVE, SME, MTE ...), which no device here has,
# so software would take code paths the device cannot.
QEMU_CPUS: dict[str, CoreModels] = {
    # Cores qemu models exactly (qemu 7.2 and later).
    "cortex-a53": CoreModels(0xD03, (QemuModel("cortex-a53"),)),
    "cortex-a57": CoreModels(0xD07, (QemuModel("cortex-a57"),)),
    "cortex-a72": CoreModels(0xD08, (QemuModel("cortex-a72"),)),
    "cortex-a76": CoreModels(0xD0B, (QemuModel("cortex-a76"),)),
    "neoverse-n1": CoreModels(0xD0C, (QemuModel("neoverse-n1"),)),
    # Cortex-A78AE (Jetson Orin): qemu has no A77/A78 model. The A78AE is Armv8.2-A with fp16 and
    # dotprod and without SVE, i8mm or bf16, which is the feature set of qemu's cortex-a76 model,
    # so the same kernels run.
    "cortex-a78ae": CoreModels(0xD42, (QemuModel("cortex-a76"),)),
    # Cortex-X4 (Snapdragon 8 Gen 3): qemu has no X4 model. cortex-a710 (newer qemu releases) is
    # Armv9.0-A with SVE2, i8mm and bf16, like the X4. qemu 7.2 (Debian bookworm's) has no model
    # with i8mm or bf16 short of `max`, so there cortex-a76 stands in: fp16 and dotprod run, the
    # i8mm and bf16 kernels are not exercised (and the guest's cpuinfo does not claim them).
    "cortex-x4": CoreModels(0xD82, (QemuModel("cortex-a710"), QemuModel("cortex-a76", lacks=("i8mm", "bf16")))),
}


@dataclass(frozen=True)
class CpuChoice:
    core: str                      # the profile's core, e.g. "cortex-a78ae"
    model: str                     # the qemu -cpu model that runs it, e.g. "cortex-a76"
    part: int                      # the core's MIDR part number, for the guest's /proc/cpuinfo
    features: tuple[str, ...]      # the guest's cpuinfo Features: the profile's isa less what the model lacks
    not_emulated: tuple[str, ...]  # the profile's isa features the model lacks

    @property
    def note(self) -> str:
        if self.model == self.core:
            return ""
        note = f"qemu has no {self.core} model; {self.model} is the nearest it offers"
        if self.not_emulated:
            note += f" (not exercised: {', '.join(self.not_emulated)})"
        return note


def choose_cpu(core: str, isa: Sequence[str], offered: Collection[str]) -> CpuChoice:
    """The qemu CPU model for `core`: the nearest in QEMU_CPUS that this qemu offers."""
    entry = QEMU_CPUS.get(core)
    if entry is None:
        raise PackagerError(
            f"the bundle's profile names CPU {core!r}, which packager/emulate.py's QEMU_CPUS table does not know; "
            f"add the core there (its MIDR part number and the nearest qemu CPU model) or emulate another target.",
            ExitCode.BAD_PROFILE)
    for model in entry.models:
        if model.name in offered and model.name != "max":
            return CpuChoice(core, model.name, entry.part,
                             features=tuple(f for f in isa if f not in model.lacks),
                             not_emulated=tuple(f for f in isa if f in model.lacks))
    names = ", ".join(m.name for m in entry.models)
    raise PackagerError(f"this qemu offers none of the CPU models that stand in for {core} ({names}); install a "
                        "newer qemu-user-static.", ExitCode.MISSING_DEPENDENCY)


def cpuinfo(cpu: CpuChoice, cores: int) -> str:
    """An arm64 /proc/cpuinfo (the kernel's format) for `cores` cores of the chosen CPU."""
    block = (f"Features\t: {' '.join(cpu.features)}\n"
             f"CPU implementer\t: 0x{ARM_IMPLEMENTER:02x}\n"
             "CPU architecture: 8\n"        # the kernel prints 8 for every AArch64 core, Armv9 too
             "CPU variant\t: 0x0\n"
             f"CPU part\t: 0x{cpu.part:03x}\n"
             "CPU revision\t: 0\n")
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(cores))


def find_qemu() -> Path:
    for name in QEMU_BINARIES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise PackagerError("--emulate runs the bundle under qemu-aarch64-static, which is not installed; install it "
                        "with `sudo apt-get install qemu-user-static` (Debian, Ubuntu) and rerun.",
                        ExitCode.MISSING_DEPENDENCY)


def qemu_models(qemu: Path) -> list[str]:
    """The CPU models this qemu offers (`-cpu help`, which exits 1 after listing them)."""
    proc = _tool([str(qemu), "-cpu", "help"], what=f"{qemu.name} -cpu help", check=False)
    lines = proc.stdout.splitlines()
    if not lines or "Available CPUs" not in lines[0]:
        raise PackagerError(f"{qemu} -cpu help lists no CPU models ({_last_line(proc.stderr or proc.stdout)}); "
                            "reinstall qemu-user-static.", ExitCode.MISSING_DEPENDENCY)
    return [line.split()[0] for line in lines[1:] if line.strip()]


def qemu_version(qemu: Path) -> str:
    out = _tool([str(qemu), "--version"], what=f"{qemu.name} --version").stdout
    return out.splitlines()[0].strip() if out.strip() else qemu.name


# ---------------------------------------------------------------- the device, from the manifest


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


# ---------------------------------------------------------------- cache


def cache_dir() -> Path:
    """packager's cache folder: $PACKAGER_CACHE_DIR, else ~/.cache/packager."""
    configured = os.environ.get("PACKAGER_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "packager"


def emulate_cache() -> Path:
    return cache_dir() / "emulate"


def cached_entry(entry: Path, marker: str, build: Callable[[Path], None]) -> bool:
    """Make sure `entry` exists and is complete (holds `marker`); False if it was there already.

    `build(tmp)` fills a fresh temporary folder beside the entry and writes `marker` last; the
    folder is then renamed to `entry` in one step, so an entry is complete or absent. A build that
    fails or is interrupted leaves nothing behind; a concurrent build of the same entry that
    finishes first wins, and this one's result is dropped.
    """
    if _complete(entry / marker):
        return False
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackagerError(f"{entry.parent}: cannot create the cache folder ({e.strerror or e}); set "
                            "PACKAGER_CACHE_DIR to a writable folder.", ExitCode.OUTPUT) from None
    sweep(entry.parent, CACHE_PARTIAL)
    tmp = cache_partial(entry.parent, f"{entry.name}-")
    try:
        build(tmp)
        if not _complete(tmp / marker):
            raise RuntimeError(f"cache build of {entry.name} did not write {marker}")
        tmp.chmod(0o755)            # mkdtemp's 0700 would lock out other users of a shared cache
        if entry.exists() and not _complete(entry / marker):
            shutil.rmtree(entry)    # damaged (its marker is unreadable): replace it
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _complete(entry / marker):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _complete(marker: Path) -> bool:
    """An entry is complete when its marker, written last, is readable JSON."""
    try:
        json.loads(marker.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- userland


@dataclass(frozen=True)
class Userland:
    path: Path                     # the cache entry; the file system is path/root
    debian: str
    python: str                    # the full version, "3.13.5"
    glibc: str                     # "2.41"
    packages: dict[str, str]       # Debian package -> version

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def python_bin(self) -> Path:
        return self.root / "usr" / "bin" / f"python{'.'.join(self.python.split('.')[:2])}"

    @classmethod
    def load(cls, path: Path) -> Userland:
        info = json.loads((path / USERLAND_INFO).read_text(encoding="utf-8"))
        return cls(path, info["debian"], info["python"], info["glibc"], info["packages"])


USERLAND_INFO = "userland.json"


def userland_entry(debian: str, python: str) -> Path:
    return emulate_cache() / f"userland-v{CACHE_LAYOUT}-{debian}-arm64-py{python}"


def ensure_userland(debian: str, python: str, qemu: Path) -> tuple[Userland, bool]:
    """The arm64 userland of Debian `debian` with its python`python`, built once; (userland, built now)."""
    entry = userland_entry(debian, python)
    built = cached_entry(entry, USERLAND_INFO, lambda tmp: build_userland(tmp, debian, python, qemu))
    return Userland.load(entry), built


def build_userland(dest: Path, debian: str, python: str, qemu: Path) -> None:
    """Download and unpack python`python` and its dependency closure from Debian `debian` (arm64)."""
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise PackagerError(f"--emulate builds the device's Debian userland once with {tool}, which this host "
                                f"lacks; run it once on a Debian or Ubuntu host (the `{package}` package), or restore "
                                f"the cache folder {emulate_cache()} from one.", ExitCode.MISSING_DEPENDENCY)
    if not DEBIAN_KEYRING.is_file():
        raise PackagerError(f"--emulate verifies Debian's packages with {DEBIAN_KEYRING}, which is missing; install it "
                            "with `sudo apt-get install debian-archive-keyring`.", ExitCode.MISSING_DEPENDENCY)
    apt = dest / "apt"
    env = {**os.environ, "APT_CONFIG": str(_apt_config(apt, debian)), "LC_ALL": "C",
           "DEBIAN_FRONTEND": "noninteractive"}
    update = _tool(["apt-get", "-q", "update"], what="apt-get update", env=env, check=False)
    if update.returncode != 0 or not any((apt / "state" / "lists").glob("*Packages*")):
        raise _apt_update_error(update.stdout + update.stderr, debian)
    # The roots; apt-get adds the closure (libc6, libgcc-s1, zlib1g, libffi, libssl ...). libstdc++6
    # is no dependency of Python's, but manylinux wheels (onnxruntime) link against the system's.
    roots = [f"python{python}-minimal", f"libpython{python}-stdlib", "libstdc++6"]
    fetch = _tool(["apt-get", "-q", "-y", "--download-only", "--no-install-recommends", "install", *roots],
                  what="apt-get install --download-only", env=env, check=False)
    if fetch.returncode != 0:
        raise _apt_install_error(fetch.stdout + fetch.stderr, debian, python)
    root = dest / "root"
    root.mkdir()
    packages = {}
    for deb in sorted((apt / "cache" / "archives").glob("*.deb")):
        _tool(["dpkg-deb", "-x", str(deb), str(root)], what=f"dpkg-deb -x {deb.name}")
        name, version, _ = unquote(deb.name).split("_", 2)
        packages[name] = version
    shutil.rmtree(apt)
    # Debian is merged-/usr since bookworm; trixie's packages ship their files under /usr only,
    # while binaries still ask for the loader at /lib/ld-linux-aarch64.so.1.
    for top in ("bin", "sbin", "lib"):
        if not (root / top).exists() and (root / "usr" / top).is_dir():
            (root / top).symlink_to(f"usr/{top}")
    userland = Userland(dest, debian, python, "", packages)
    if not userland.python_bin.is_file():
        raise PackagerError(f"Debian {debian}'s python{python}-minimal has no {userland.python_bin.name}; the "
                            "profile's os.python and os.debian disagree: fix the profile and rebuild the bundle.",
                            ExitCode.BAD_PROFILE)
    probe = _probe_python(qemu, userland)
    info = {"debian": debian, "arch": "arm64", "python": probe["python"], "glibc": probe["glibc"],
            "packages": packages, "mirror": debian_mirror(),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (dest / USERLAND_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def debian_mirror() -> str:
    """The Debian archive this machine's apt already uses (PACKAGER_DEBIAN_MIRROR overrides it): the
    userland comes from the same place as the host's own packages, through the same proxy."""
    if os.environ.get("PACKAGER_DEBIAN_MIRROR"):
        return os.environ["PACKAGER_DEBIAN_MIRROR"].rstrip("/")
    folder, legacy = HOST_APT_SOURCES
    texts = ([p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.sources"))]
             if folder.is_dir() else [])
    uris = [u for t in texts for line in t.splitlines() if line.startswith("URIs:") for u in line.split()[1:]]
    if legacy.is_file():
        uris += [line.split()[1] for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.startswith("deb ") and len(line.split()) > 2 and "[" not in line.split()[1]]
    for uri in uris:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise PackagerError("this machine's apt sources name no Debian archive to take the arm64 userland from; "
                        "set PACKAGER_DEBIAN_MIRROR to one (its URL ending in /debian).", ExitCode.MISSING_DEPENDENCY)


def _apt_config(folder: Path, debian: str) -> Path:
    """An apt configuration of its own under `folder`: only Debian `debian`, arm64 only; the host's
    /etc/apt and /var/lib/apt are neither read nor written."""
    etc, state, cache = folder / "etc", folder / "state", folder / "cache"
    for d in (etc / "apt.conf.d", etc / "preferences.d", etc / "sources.list.d", etc / "trusted.gpg.d",
              state / "lists" / "partial", cache / "archives" / "partial", folder / "log", folder / "dpkg"):
        d.mkdir(parents=True)
    (folder / "dpkg" / "status").touch()       # nothing installed: apt resolves the whole closure
    (etc / "sources.list").write_text(
        f"deb [arch=arm64 signed-by={DEBIAN_KEYRING}] {debian_mirror()} {debian} main\n", encoding="utf-8")
    settings = {
        "Dir::Etc": f"{etc}/", "Dir::Etc::main": "apt.conf", "Dir::Etc::parts": "apt.conf.d",
        "Dir::State": f"{state}/", "Dir::State::status": f"{folder}/dpkg/status",
        "Dir::Cache": f"{cache}/", "Dir::Log": f"{folder}/log/",
        "APT::Architecture": "arm64", "APT::Install-Recommends": "false", "APT::Install-Suggests": "false",
        "Acquire::Languages": "none",
    }
    if os.geteuid() == 0:
        # As root, apt downloads as the `_apt` user, who cannot write into this private folder.
        settings["APT::Sandbox::User"] = "root"
    lines = [f'{key} "{value}";' for key, value in settings.items()] + ['APT::Architectures { "arm64"; };']
    conf = folder / "apt.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return conf


def _apt_lines(output: str) -> list[str]:
    """apt's error lines, the most telling first: E: (what failed), W: (why a fetch failed), Err:."""
    lines = [line.strip() for line in output.splitlines()]
    return [line for prefix in ("E:", "W:", "Err:") for line in lines if line.startswith(prefix)]


def _apt_update_error(output: str, debian: str) -> PackagerError:
    lines = _apt_lines(output) or [output.strip().splitlines()[-1] if output.strip() else "no output"]
    first = lines[0]
    if any("does not have a Release file" in line or "404" in line for line in lines):
        return PackagerError(f"Debian's archive has no release {debian!r} for arm64 ({first}); the bundle's profile "
                             "must name one in os.debian, e.g. bookworm or trixie: fix it and rebuild the bundle.",
                             ExitCode.BAD_PROFILE)
    if any(re.search(r"NO_PUBKEY|EXPKEYSIG|signatures couldn't be verified|is not signed", line) for line in lines):
        return PackagerError(f"apt-get cannot verify Debian {debian}'s signature with {DEBIAN_KEYRING} ({first}); "
                             "update the debian-archive-keyring package.", ExitCode.MISSING_DEPENDENCY)
    return PackagerError(f"apt-get could not fetch Debian {debian}'s arm64 package list from {debian_mirror()} "
                         f"({first}); --emulate needs to reach Debian's archive once: check the network or the "
                         "http_proxy setting.",
                         ExitCode.TOOL_FAILED)


def _apt_install_error(output: str, debian: str, python: str) -> PackagerError:
    lines = _apt_lines(output) or [output.strip().splitlines()[-1] if output.strip() else "no output"]
    first = lines[0]
    if any(re.search(r"Unable to locate package|has no installation candidate|Couldn't find any package", line)
           for line in lines):
        return PackagerError(f"Debian {debian} has no python{python} for arm64 ({first}); the profile's os.python and "
                             "os.debian disagree: fix the profile and rebuild the bundle.", ExitCode.BAD_PROFILE)
    return PackagerError(f"apt-get could not download Python {python} from Debian {debian} ({first}); check the "
                         "network and rerun.", ExitCode.TOOL_FAILED)


_PROBE = ("import json, os, platform; print(json.dumps({'python': platform.python_version(), "
          "'machine': platform.machine(), 'glibc': os.confstr('CS_GNU_LIBC_VERSION').split()[-1]}))")


def _probe_python(qemu: Path, userland: Userland) -> dict[str, str]:
    """Start the userland's Python under qemu: it works, and says its version and glibc."""
    # Any CPU model starts Debian's Python (built for the Armv8.0 baseline); cortex-a53 is that baseline.
    proc = _tool([str(qemu), "-L", str(userland.root), "-cpu", "cortex-a53", str(userland.python_bin),
                  "-s", "-c", _PROBE],
                 what="the userland's Python under qemu", env=_guest_env(userland.root.parent, None), check=False,
                 timeout=PROBE_TIMEOUT_S)
    try:
        probe: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
        if probe["machine"] == "aarch64":
            return probe
    except (IndexError, ValueError, KeyError):
        pass
    raise PackagerError(f"the arm64 Python from Debian {userland.debian} does not start under {qemu.name} "
                        f"({_last_line(proc.stderr or proc.stdout)}); check that qemu-user-static works.",
                        ExitCode.TOOL_FAILED)


# ---------------------------------------------------------------- the bundle's requirements


@dataclass(frozen=True)
class SitePackages:
    path: Path                     # the cache entry; the packages are in path/site
    versions: dict[str, str]       # installed distribution (normalised name) -> version

    @property
    def site(self) -> Path:
        return self.path / "site"

    def version_of(self, package: str) -> str:
        return self.versions.get(_normalise(package), "")


SITE_INFO = "site.json"


def wheel_platforms(glibc: str) -> list[str]:
    """pip --platform tags the device accepts: manylinux aarch64 from its glibc down to 2.17.

    pip expands none of them itself, and wheels carry one tag or another (tokenizers and older
    numpy: manylinux_2_17 / manylinux2014 only; onnxruntime: manylinux_2_28), so list them all.
    """
    major, minor = (int(x) for x in glibc.split(".")[:2])
    if major != 2 or minor < 17:
        raise ValueError(f"glibc {glibc} is older than manylinux2014's 2.17")
    return [f"manylinux_2_{m}_aarch64" for m in range(minor, 16, -1)] + ["manylinux2014_aarch64"]


def install_requirements(requirements: str, python: str, glibc: str) -> tuple[SitePackages, bool]:
    """The requirements installed for CPython `python` on linux aarch64 with `glibc`, by the host's
    pip, cached by content; (packages, installed now)."""
    platforms = wheel_platforms(glibc)
    key = hashlib.sha256(json.dumps({"requirements": requirements, "python": python, "platforms": platforms,
                                     "layout": CACHE_LAYOUT}, sort_keys=True).encode()).hexdigest()[:16]
    entry = emulate_cache() / f"site-py{python}-{key}"
    built = cached_entry(entry, SITE_INFO, lambda tmp: _pip_install(tmp, requirements, python, glibc, platforms))
    info = json.loads((entry / SITE_INFO).read_text(encoding="utf-8"))
    return SitePackages(entry, info["versions"]), built


def _pip_install(dest: Path, requirements: str, python: str, glibc: str, platforms: list[str]) -> None:
    req = dest / "requirements.txt"
    req.write_text(requirements, encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-warn-conflicts",
           "--progress-bar", "off", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
           *(f"--platform={p}" for p in platforms), "--target", str(dest / "site"), "-r", str(req)]
    if python != "{}.{}".format(*sys.version_info[:2]):
        cmd.append("--no-compile")    # the host's bytecode would be for its own Python, useless to the guest
    # Settings that contradict --target would make pip refuse it.
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_USER", "PIP_PREFIX", "PIP_TARGET", "PIP_ROOT")}
    proc = _tool(cmd, what="pip install", env=env, check=False)
    if proc.returncode != 0:
        raise pip_error(proc.stdout + proc.stderr, python, glibc)
    installed = importlib.metadata.distributions(path=[str(dest / "site")])
    versions = {_normalise(d.metadata["Name"]): d.version for d in installed}
    (dest / SITE_INFO).write_text(json.dumps({"python": python, "glibc": glibc, "platforms": platforms,
                                              "versions": versions}, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_FROM_VERSIONS = re.compile(r"Could not find a version that satisfies the requirement (\S+) \(from versions: ([^)]*)\)")
# pip's words for an index it cannot reach, the most telling first.
_NETWORK = [re.compile(p) for p in (
    r"Failed to establish a new connection: [^\"')]*", r"Temporary failure in name resolution",
    r"Name or service not known", r"Network is unreachable", r"ProxyError", r"ConnectTimeout", r"ReadTimeout",
    r"SSLError", r"NewConnectionError")]


def pip_error(output: str, python: str, glibc: str) -> PackagerError:
    """One sentence for a failed `pip install` of a bundle's requirements for the device.

    A pin with no wheel for the device is SMOKE_FAILED, like a FAIL from smoke_test.py: the bundle
    is well formed, and the device's first step (`pip install -r requirements.txt`) would fail on
    it, so it would not pass there; CI that gates on the smoke verdict must stop on it too.
    """
    platform_words = f"CPython {python}, linux aarch64, manylinux up to glibc {glibc}"
    missing = _NO_MATCH.search(output)
    versions = _FROM_VERSIONS.search(output)
    listed = [v.strip() for v in versions.group(2).split(",")] if versions else []
    listed = [v for v in listed if v and v != "none"]
    network = next((m.group(0).strip() for m in (p.search(output) for p in _NETWORK) if m), None)
    if missing and not listed and network:
        return PackagerError(f"pip could not reach the package index to install the bundle's requirements for the "
                             f"device ({_shorten(network)}); --emulate needs PyPI: check the network or proxy "
                             "settings.",
                             ExitCode.TOOL_FAILED)
    if missing:
        requirement = missing.group(1)
        if listed:
            releases = [v for v in listed if not re.search(r"(dev|a|b|rc)\d*$", v)] or listed
            shown = ", ".join(releases[-6:])
            return PackagerError(f"{requirement} has no wheel for the device ({platform_words}); releases that have "
                                 f"one end with {shown}: pin one of those (the profile's [runtime] or the model "
                                 "family's requirements) and rebuild the bundle.",
                                 ExitCode.SMOKE_FAILED)
        return PackagerError(f"{requirement} has no wheel for the device ({platform_words}) in any version pip could "
                             "find; if the package exists, check that PyPI is reachable, else drop or replace that "
                             "requirement and rebuild the bundle.", ExitCode.SMOKE_FAILED)
    conflict = next((line for line in output.splitlines() if "conflicting dependencies" in line
                     or line.startswith("ERROR: Cannot install")), None)
    if conflict:
        return PackagerError(f"the bundle's requirements conflict for the device ({_shorten(conflict.strip())}); "
                             "fix the pins and rebuild the bundle.", ExitCode.SMOKE_FAILED)
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    return PackagerError(f"pip failed to install the bundle's requirements for the device "
                         f"({_shorten(errors[-1] if errors else _last_line(output))}); rerun once the cause is fixed.",
                         ExitCode.TOOL_FAILED)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- the run


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


def _guest_env(home: Path, site: Path | None) -> dict[str, str]:
    """The guest's whole environment: nothing of the host's leaks in (LD_LIBRARY_PATH would point
    its loader at x86 libraries, PYTHONPATH at the host's packages)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        # The guest writes no bytecode: the cache stays exactly as built (safe to share between
        # concurrent runs) and the bundle folder untouched. Compiling ahead in the guest would cost
        # about a minute once to save about 1.5 s of a 20 s run (measured with minilm on rpi4).
        "PYTHONDONTWRITEBYTECODE": "1",
        # Python 3.11+: the script's folder (the bundle) is not put on sys.path (SECURITY.md).
        "PYTHONSAFEPATH": "1",
    }
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


def no_core_dumps() -> None:
    """preexec_fn: a guest that crashes (SIGILL on a missing instruction) must not leave a qemu core
    file in the bundle folder, its working directory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# ---------------------------------------------------------------- helpers


def _tool(cmd: list[str], *, what: str, env: dict[str, str] | None = None, check: bool = True,
          timeout: int = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=no_core_dumps)
    except FileNotFoundError:
        raise PackagerError(f"{cmd[0]} is not installed; --emulate needs it ({what}).",
                            ExitCode.MISSING_DEPENDENCY) from None
    except subprocess.TimeoutExpired:
        raise PackagerError(f"{what} did not finish in {timeout} s; check the network and rerun.",
                            ExitCode.TOOL_FAILED) from None
    if check and proc.returncode != 0:
        raise PackagerError(f"{what} failed ({_last_line(proc.stderr or proc.stdout)}); "
                            "rerun with --debug and report it.", ExitCode.TOOL_FAILED)
    return proc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return _shorten(lines[-1]) if lines else "no output"


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
