"""The guest of the emulated smoke test (packager/emulate.py), built once and cached: an arm64 Debian userland with
the device's Python (apt-get with a configuration of its own, `dpkg-deb -x`; no chroot, no root), and the bundle's
requirements installed by the host's pip for the device's platform. Each cache entry is built beside its place and
renamed into it, so an entry is complete or absent."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from packager.emulate_qemu import _last_line, _shorten, _tool
from packager.errors import ExitCode, PackagerError
from packager.leftovers import CACHE_PARTIAL, cache_partial, sweep
from packager.paths import cache_dir

HOST_APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


CACHE_LAYOUT = 1          # part of every cache key: bump it when an entry's layout changes


PROBE_TIMEOUT_S = 120


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


