"""qemu-user for the emulated smoke test (packager/emulate.py): which qemu CPU model stands in for which Arm core,
the ARM /proc/cpuinfo the guest reads, and the qemu binary found on the host."""

from __future__ import annotations

import resource
import shutil
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from packager.errors import ExitCode, PackagerError

QEMU_BINARIES = ("qemu-aarch64-static", "qemu-aarch64")   # the static build first: it needs no host libs
TOOL_TIMEOUT_S = 900      # apt-get, pip: a stalled mirror fails instead of hanging CI


ARM_IMPLEMENTER = 0x41    # MIDR_EL1 implementer code of Arm Ltd (Linux arch/arm64/include/asm/cputype.h)


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




def no_core_dumps() -> None:
    """preexec_fn: a guest that crashes (SIGILL on a missing instruction) must not leave a qemu core
    file in the bundle folder, its working directory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
