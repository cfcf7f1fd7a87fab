"""`packager smoke --emulate`: the qemu CPU mapping, the guest's cpuinfo, the cache, refusals, and
the real thing (an arm64 Debian userland under qemu-user) for the rpi5 bundle."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import reseal, run_cli, unpack
from packager import emulate, exporter_envs
from packager.emulate import DeviceSpec, choose_cpu, cpuinfo, pip_error, wheel_platforms
from packager.errors import ExitCode, PackagerError
from packager.profiles import builtin_profiles

QEMU_7_2 = ["a64fx", "cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "max", "neoverse-n1"]
QEMU_9 = [*QEMU_7_2, "cortex-a55", "cortex-a710", "neoverse-n2", "neoverse-v1"]
HAVE_QEMU = any(shutil.which(name) for name in emulate.QEMU_BINARIES)
needs_qemu = pytest.mark.skipif(not HAVE_QEMU,
                                reason="qemu-user-static is not installed (apt-get install qemu-user-static)")


def _profile_dict(name: str) -> dict:
    return {k: v for k, v in builtin_profiles()[name].to_dict().items() if k != "source"}


def _device(name: str) -> DeviceSpec:
    return DeviceSpec.from_manifest({"profile": _profile_dict(name)}, name)


def _fake_bundle(tmp_path: Path, profile: dict) -> Path:
    """Just enough of a bundle for the checks that come before any download."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "smoke_test.py").write_text("raise SystemExit('not reached')\n")
    (folder / "requirements.txt").write_text("onnxruntime==1.32.0\n")
    (folder / "manifest.json").write_text(json.dumps({"target": profile["name"], "profile": profile}))
    return folder


# ---------------------------------------------------------------- CPU mapping and cpuinfo


def test_pi_cores_run_on_their_own_qemu_model() -> None:
    for target, model in (("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")):
        d = _device(target)
        cpu = choose_cpu(d.cpu, d.isa, QEMU_7_2)
        assert (cpu.model, cpu.not_emulated, cpu.note) == (model, (), "")
        assert cpu.features == d.isa


def test_cores_qemu_lacks_use_the_nearest_model_never_max() -> None:
    jetson, phone = _device("jetson-orin-nano"), _device("phone")
    a78ae = choose_cpu(jetson.cpu, jetson.isa, QEMU_7_2)
    assert a78ae.model == "cortex-a76" and a78ae.not_emulated == () and "no cortex-a78ae model" in a78ae.note
    assert a78ae.part == 0xD42  # the core's own part number in the guest's cpuinfo, not the stand-in's

    x4_old = choose_cpu(phone.cpu, phone.isa, QEMU_7_2)
    assert x4_old.model == "cortex-a76"
    assert set(x4_old.not_emulated) == {"i8mm", "bf16"} and not {"i8mm", "bf16"} & set(x4_old.features)
    assert "not exercised: i8mm, bf16" in x4_old.note

    x4_new = choose_cpu(phone.cpu, phone.isa, QEMU_9)
    assert x4_new.model == "cortex-a710" and x4_new.not_emulated == ()

    for entry in emulate.QEMU_CPUS.values():
        assert all(m.name != "max" for m in entry.models)
    with pytest.raises(PackagerError) as e:
        choose_cpu("cortex-x4", phone.isa, ["max"])
    assert e.value.code == ExitCode.MISSING_DEPENDENCY and "cortex-a710, cortex-a76" in e.value.message


def test_unknown_core_names_the_table() -> None:
    with pytest.raises(PackagerError) as e:
        choose_cpu("cortex-a999", ("fp",), QEMU_9)
    assert (e.value.code == ExitCode.BAD_PROFILE and "'cortex-a999'" in e.value.message
            and "QEMU_CPUS" in e.value.message)


def test_cpuinfo_is_the_profiles_cpu_in_the_kernels_format() -> None:
    d = _device("rpi5")
    text = cpuinfo(choose_cpu(d.cpu, d.isa, QEMU_7_2), d.cores)
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert len(blocks) == d.cores == 4
    for i, block in enumerate(blocks):
        fields = dict(line.split(":", 1) for line in block.splitlines())
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        assert fields["processor"] == str(i)
        assert fields["Features"].split() == ["fp", "asimd", "crc32", "fphp", "asimdhp", "asimddp"]
        assert fields["CPU implementer"] == "0x41" and fields["CPU part"] == "0xd0b"
        assert fields["CPU architecture"] == "8"

    pi4 = _device("rpi4")
    text = cpuinfo(choose_cpu(pi4.cpu, pi4.isa, QEMU_7_2), pi4.cores)
    assert "CPU part\t: 0xd08" in text and "asimddp" not in text and "Features\t: fp asimd crc32\n" in text


# ---------------------------------------------------------------- which targets, which platforms


def test_pi_profiles_name_their_debian_release() -> None:
    profiles = builtin_profiles()
    assert (profiles["rpi4"].os.debian, profiles["rpi4"].os.python) == ("bookworm", "3.11")
    assert (profiles["rpi5"].os.debian, profiles["rpi5"].os.python) == ("trixie", "3.13")
    for name in ("jetson-orin-nano", "jetson-agx-orin", "phone"):
        assert profiles[name].os.debian == ""


@pytest.mark.parametrize("target, words", [
    ("jetson-orin-nano", ["Ubuntu 22.04", "Python 3.10", "jetson-ai-lab", "on the device itself"]),
    ("phone", ["Android", "on the device itself"]),
])
def test_targets_without_a_debian_userland_are_refused(target: str, words: list[str]) -> None:
    with pytest.raises(PackagerError) as e:
        _device(target).check_emulatable()
    assert e.value.code == ExitCode.BAD_PROFILE
    assert all(w in e.value.message for w in words), e.value.message


def test_old_bundle_and_other_arch_are_refused() -> None:
    old = _profile_dict("rpi5")
    del old["os"]["debian"]
    with pytest.raises(PackagerError, match="predates the profile key os.debian") as e:
        DeviceSpec.from_manifest({"profile": old}, "old").check_emulatable()
    assert e.value.code == ExitCode.BAD_INPUT
    x86 = _profile_dict("rpi5")
    x86["device"]["arch"] = "x86_64"
    with pytest.raises(PackagerError, match="runs arm64"):
        DeviceSpec.from_manifest({"profile": x86}, "x86").check_emulatable()
    with pytest.raises(PackagerError, match="lacks the resolved profile") as e:
        DeviceSpec.from_manifest({}, "empty")
    assert e.value.code == ExitCode.BAD_INPUT


def test_wheel_platforms_cover_every_manylinux_tag_up_to_the_glibc() -> None:
    tags = wheel_platforms("2.41")
    assert tags[0] == "manylinux_2_41_aarch64" and "manylinux_2_42_aarch64" not in tags
    assert {"manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"} <= set(tags)
    assert "manylinux_2_16_aarch64" not in tags
    assert wheel_platforms("2.36")[0] == "manylinux_2_36_aarch64"


PIP_NO_WHEEL = """Looking in indexes: https://pypi.org/simple
ERROR: Could not find a version that satisfies the requirement onnxruntime==1.16.0 (from versions: 1.20.0, 1.20.1, \
1.25.0.dev20260417008, 1.25.0, 1.31.1, 1.32.0)
ERROR: No matching distribution found for onnxruntime==1.16.0
"""
PIP_OFFLINE = """WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(': Failed to \
establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/onnxruntime/
ERROR: Could not find a version that satisfies the requirement onnxruntime==1.32.0 (from versions: none)
ERROR: No matching distribution found for onnxruntime==1.32.0
"""


def test_pip_failures_become_one_sentence() -> None:
    e = pip_error(PIP_NO_WHEEL, "3.13", "2.41")
    assert e.code == ExitCode.SMOKE_FAILED
    assert e.message.startswith("onnxruntime==1.16.0 has no wheel for the device (CPython 3.13, linux aarch64")
    assert "1.32.0" in e.message and ".dev2026" not in e.message
    offline = pip_error(PIP_OFFLINE, "3.13", "2.41")
    assert offline.code == ExitCode.TOOL_FAILED and "could not reach the package index" in offline.message


# ---------------------------------------------------------------- the cache


def test_cache_dir_follows_packager_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKAGER_CACHE_DIR", str(tmp_path / "c"))
    assert emulate.emulate_cache() == tmp_path / "c" / "emulate"
    assert emulate.userland_entry("trixie", "3.13").parent == tmp_path / "c" / "emulate"
    monkeypatch.delenv("PACKAGER_CACHE_DIR")
    assert emulate.cache_dir() == Path.home() / ".cache" / "packager"


def test_cache_entries_appear_whole_or_not_at_all(tmp_path: Path) -> None:
    entry = tmp_path / "emulate" / "thing"

    def interrupted(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        emulate.cached_entry(entry, "done.json", interrupted)
    assert not entry.exists() and list(entry.parent.iterdir()) == []

    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "data").write_text("ok")
        (tmp / "done.json").write_text("{}")

    assert emulate.cached_entry(entry, "done.json", build) is True
    assert (entry / "data").read_text() == "ok"
    assert emulate.cached_entry(entry, "done.json", build) is False and len(calls) == 1
    assert [p.name for p in entry.parent.iterdir()] == ["thing"]


def test_stale_partial_builds_are_swept(tmp_path: Path) -> None:
    dead = tmp_path / ".partial-999999999-userland-x"      # no such pid
    live = tmp_path / f".partial-{os.getpid()}-userland-y"  # this process: still building
    dead.mkdir()
    live.mkdir()
    for path in (dead, live):   # untouched for over a minute (leftovers.py)
        os.utime(path, (time.time() - 120, time.time() - 120))
    emulate.cached_entry(tmp_path / "userland", "done.json", lambda tmp: (tmp / "done.json").write_text("{}"))
    assert not dead.exists() and live.exists()


# ---------------------------------------------------------------- the command line, before any download


def test_missing_qemu_says_how_to_install_it(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, _profile_dict("rpi5"))
    empty = tmp_path / "no-tools"
    empty.mkdir()
    proc = run_cli("smoke", str(bundle), "--emulate", env={"PATH": str(empty)})
    assert proc.returncode == ExitCode.MISSING_DEPENDENCY, proc.stderr
    assert "qemu-aarch64-static" in proc.stderr and "apt-get install qemu-user-static" in proc.stderr
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "requirements.txt", "smoke_test.py"]


def test_jetson_bundle_is_refused_with_the_reason(tmp_path: Path) -> None:
    proc = run_cli("smoke", str(_fake_bundle(tmp_path, _profile_dict("jetson-orin-nano"))), "--emulate", "--json")
    assert proc.returncode == ExitCode.BAD_PROFILE
    error = json.loads(proc.stdout)["error"]
    assert "no Debian release matches" in error and "Ubuntu 22.04" in error


def test_emulate_and_python_exclude_each_other(tmp_path: Path) -> None:
    proc = run_cli("smoke", str(_fake_bundle(tmp_path, _profile_dict("rpi5"))), "--emulate", "--python", sys.executable)
    assert proc.returncode == ExitCode.USAGE and "drop --python" in proc.stderr


# ---------------------------------------------------------------- the real thing


@pytest.mark.integration
@needs_qemu
def test_rpi5_bundle_passes_on_an_emulated_cortex_a76(minilm_rpi5: dict) -> None:
    proc = run_cli("smoke", minilm_rpi5["archive"], "--emulate", "--json", timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["verdict"] == "PASS"
    report = result["report"]
    emu = report["emulation"]
    assert emu["emulated_cpu"] == "cortex-a76" and emu["device_cpu"] == "cortex-a76" and emu["debian"] == "trixie"
    assert emu["device_python"].startswith("3.13.")
    assert (emu["runtime"], emu["runtime_version"]) == ("onnxruntime", "1.32.0")
    assert emu["peak_is_upper_bound"] is True and "upper bound" in emu["note"]
    # It ran on the emulated ARM kernels: int8 outputs within the threshold of the fp32 reference's.
    assert report["files_checked"] > 0 and report["providers"] == ["CPUExecutionProvider"]
    assert 0.98 <= report["accuracy"]["min_cosine"] < 0.9999

    human = run_cli("smoke", minilm_rpi5["archive"], "--emulate", timeout=1200)
    assert human.returncode == 0 and human.stdout.strip().splitlines()[-1] == "PASS"
    assert ("emulated  cortex-a76" in human.stderr and "Python 3.13." in human.stderr
            and "onnxruntime 1.32.0" in human.stderr)
    assert "upper bound" in human.stderr


@pytest.mark.integration
@needs_qemu
def test_package_can_smoke_its_bundle_under_emulation(tmp_path: Path) -> None:
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi4", "--out", str(tmp_path), "--smoke", "emulate",
                   "--json", timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    smoke = json.loads(proc.stdout)["smoke"]
    assert smoke["mode"] == "emulate" and smoke["verdict"] == "PASS"
    assert smoke["report"]["emulation"]["emulated_cpu"] == "cortex-a72"


@pytest.mark.integration
def test_pin_without_a_wheel_for_the_device_names_package_and_platform(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKAGER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(PackagerError) as e:
        emulate.install_requirements("onnxruntime==1.16.0\n", "3.13", "2.41")
    assert e.value.code == ExitCode.SMOKE_FAILED
    assert "onnxruntime==1.16.0 has no wheel for the device" in e.value.message
    assert "CPython 3.13" in e.value.message and "aarch64" in e.value.message
    assert not any((tmp_path / "cache" / "emulate").iterdir())  # nothing half-installed left in the cache


@pytest.mark.integration
@needs_qemu
def test_edited_requirements_fail_before_the_smoke_test_runs(minilm_rpi5: dict, tmp_path: Path) -> None:
    folder = unpack(Path(minilm_rpi5["archive"]), tmp_path)
    req = folder / "requirements.txt"
    req.write_text(req.read_text().replace("onnxruntime==1.32.0", "onnxruntime==1.16.0"))
    # An edit the checksums do not cover is refused before anything is installed for the device.
    proc = run_cli("smoke", str(folder), "--emulate", "--json", timeout=1200)
    assert proc.returncode == ExitCode.SMOKE_FAILED
    assert json.loads(proc.stdout)["verdict"] == \
        "FAIL: checksum mismatch: requirements.txt was modified after packaging"
    reseal(folder)   # an unsigned bundle whose maker pinned a runtime the device has no wheel for
    proc = run_cli("smoke", str(folder), "--emulate", "--json", timeout=1200)
    assert proc.returncode == ExitCode.SMOKE_FAILED, proc.stdout + proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error.startswith("onnxruntime==1.16.0 has no wheel for the device (CPython 3.13, linux aarch64")


@pytest.mark.integration
@needs_qemu
@pytest.mark.skipif(not exporter_envs.is_ready(exporter_envs.GENAI), reason="needs `packager env create genai`")
@pytest.mark.parametrize("target, cpu, debian, python", [
    ("rpi5-genai", "cortex-a76", "trixie", "3.13."),
    ("rpi4", "cortex-a72", "bookworm", "3.11."),   # cp311's wheel; an A72 has no fp16 arithmetic for the 16-bit cache
])
def test_genai_llm_bundle_passes_on_an_emulated_pi(tmp_path: Path, target: str, cpu: str, debian: str,
                                                   python: str) -> None:
    """Issue 19: the userland gets onnxruntime-genai's manylinux_2_28 aarch64 wheel for the Pi's Python, and the
    bundle's smoke test passes on the emulated Pi (rpi5-genai: 42 s wall on the build host with the userland
    cached)."""
    proc = run_cli("package", "sample:tiny-llama", "--target", target, "--out", str(tmp_path), "--smoke",
                   "emulate", "--json", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    smoke = json.loads(proc.stdout)["smoke"]
    assert smoke["mode"] == "emulate" and smoke["verdict"] == "PASS"
    emu = smoke["report"]["emulation"]
    assert (emu["runtime"], emu["runtime_version"]) == ("onnxruntime-genai", "0.18.0")
    assert emu["emulated_cpu"] == cpu and emu["debian"] == debian
    assert emu["device_python"].startswith(python)
