"""Profiles: the built-in ones load, and every kind of mistake names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from packager.errors import ExitCode, PackagerError
from packager.paths import profiles_dir
from packager.profiles import builtin_profiles, load_profile, resolve_target

REQUIRED = {"phone", "rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin"}


def test_builtin_profiles_load_and_cover_the_targets() -> None:
    profiles = builtin_profiles()
    assert REQUIRED <= set(profiles)
    assert profiles["rpi5"].budget.memory_bytes == 1_500_000_000
    assert "asimddp" in profiles["rpi5"].device.isa and "asimddp" not in profiles["rpi4"].device.isa
    assert "i8mm" in profiles["phone"].device.isa
    assert profiles["jetson-orin-nano"].budget.memory_bytes == 3_000_000_000
    assert profiles["jetson-orin-nano"].runtime.providers[0] == "TensorrtExecutionProvider"
    assert profiles["jetson-orin-nano"].runtime.index_url.startswith("https://")


def test_every_device_fact_cites_a_source() -> None:
    for path in profiles_dir().glob("*.toml"):
        text = path.read_text()
        device = text[text.index("[device]"):text.index("[os]")]
        assert device.count("#") >= 2, f"{path.name}: device facts need source comments"


def test_alias_and_did_you_mean() -> None:
    assert resolve_target("rpi").name == "rpi5"
    assert resolve_target("jetson").name == "jetson-orin-nano"
    with pytest.raises(PackagerError) as e:
        resolve_target("rpi6")
    assert e.value.code == ExitCode.BAD_PROFILE
    assert 'did you mean "rpi' in e.value.message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return path


def _rpi5_text() -> str:
    return (profiles_dir() / "rpi5.toml").read_text()


@pytest.mark.parametrize("change, key, problem", [
    (("[runtime]\n", "[runtime]\nverison = '1'\n"), "runtime.verison", 'did you mean "version"'),
    (("cores = 4", 'cores = "four"'), "device.cores", "must be int"),
    (("cores = 4", "cores = true"), "device.cores", "must be int"),
    (("memory_bytes = 1500000000", "memory_bytes = -1"), "budget.memory_bytes", "must be positive"),
    (("memory_bytes = 1500000000", "memory_bytes = 0"), "budget.memory_bytes", "must be positive"),
    (("memory_bytes = 1500000000", "memory_bytes = 99999999999"), "budget.memory_bytes",
     "larger than device.ram_bytes"),
    (('recipe = "int8-dynamic"', 'recipe = "int8-dynamc"'), "recipe", 'did you mean "int8-dynamic"'),
    (('graph_optimization = "all"', 'graph_optimization = "max"'), "session.graph_optimization", "must be one of"),
    (('isa = ["fp"', 'isa = [1'), "device.isa[0]", "must be str"),
    (("[budget]\n", "[budgets]\n"), "budgets", "not a known key"),
    # [decoder_int4] (decoders' MatMulNBits compute, on any runtime) is checked as the profile a decoder gets
    (("[decoder_int4]\nblock_size = 128\nsymmetric = true\naccuracy_level = 4",
      "[decoder_int4]\nblock_size = 128\nsymmetric = true\naccuracy_level = 5"),
     "int4.accuracy_level", "must be 0 to 4"),
    (("[decoder_int4]\nblock_size = 128", "[decoder_int4]\nblock_size = 96"), "int4.block_size", "power of two"),
    (("[decoder_int4]\nblock_size = 128", "[decoder_int4]\nblock_sise = 128"),
     "decoder_int4.block_sise", 'did you mean "block_size"'),
    # a copy of an older profile: the section's new name
    (("[decoder_int4]\n", "[decoder_runtime.int4]\n"), "decoder_runtime.int4", 'it is now "[decoder_int4]"'),
])
def test_invalid_profiles_name_file_and_key(tmp_path: Path, change: tuple[str, str], key: str, problem: str) -> None:
    _assert_refused(tmp_path, _rpi5_text(), change, key, problem)


def _assert_refused(tmp_path: Path, text: str, change: tuple[str, str], key: str, problem: str) -> None:
    """The profile `text` with one change is refused with exit 6, naming its file, the key and the problem."""
    assert change[0] in text
    path = _write(tmp_path, text.replace(change[0], change[1], 1))
    with pytest.raises(PackagerError) as e:
        load_profile(path)
    assert e.value.code == ExitCode.BAD_PROFILE
    assert str(path) in e.value.message and f"'{key}'" in e.value.message and problem in e.value.message


@pytest.mark.parametrize("change, key, problem", [
    (('"genai.prefill_chunk" = "256"', '"genai.prefil_chunk" = "256"'), "session.config.genai.prefil_chunk",
     "not an onnxruntime-genai setting"),
    (('"genai.prefill_chunk" = "256"', '"genai.prefill_chunk" = "0"'), "session.config.genai.prefill_chunk",
     "positive whole number"),
    # the MatMulNBits compute the builder gets (fp32 at 0-2, int8 at 4): runtimes/genai.py WEIGHT_FACTORS
    (("accuracy_level = 1", "accuracy_level = 5"), "int4.accuracy_level", "must be 0 to 4"),
])
def test_invalid_genai_settings_name_file_and_key(tmp_path: Path, change: tuple[str, str], key: str,
                                                  problem: str) -> None:
    _assert_refused(tmp_path, (profiles_dir() / "rpi5-genai.toml").read_text(), change, key, problem)


def test_missing_key_and_bad_syntax(tmp_path: Path) -> None:
    with pytest.raises(PackagerError, match="'budget' is required"):
        load_profile(_write(tmp_path, _rpi5_text().split("[budget]")[0] + "[accuracy]\nmin_cosine = 0.9\n"))
    with pytest.raises(PackagerError, match="invalid TOML"):
        load_profile(_write(tmp_path, "name = \n"))


def test_custom_profile_file_is_a_target(tmp_path: Path) -> None:
    path = _write(tmp_path, _rpi5_text().replace('name = "rpi5"', 'name = "my-board"'))
    assert resolve_target(str(path)).name == "my-board"


def test_targets_json_is_the_ci_matrix() -> None:
    proc = run_cli("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["name"] for r in rows} >= REQUIRED
    for r in rows:
        assert {"name", "aliases", "arch", "ram_bytes", "budget_bytes", "providers"} <= set(r)
        assert r["budget_bytes"] <= r["ram_bytes"]


def test_targets_table() -> None:
    proc = run_cli("targets")
    assert proc.returncode == 0 and "rpi5" in proc.stdout and "jetson-orin-nano" in proc.stdout
    # where decoder LLMs go: rpi5's [decoder_runtime], named in the table and the JSON
    rpi5 = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["rpi5"])
    assert "int4-mixed (onnxruntime-genai)" in rpi5
    rows = {r["name"]: r for r in json.loads(run_cli("targets", "--json").stdout)}
    assert rows["rpi5"]["decoder_runtime"] == rows["phone"]["decoder_runtime"] == "onnxruntime-genai==0.18.0"
    assert rows["jetson-orin-nano"]["decoder_runtime"] is None


def test_each_profile_names_the_kernels_its_cpu_packs_4bit_weights_for() -> None:
    """MatMulNBits' packed copy is its CPU's layout (estimate_prepack.NBITS_PACKED): KleidiAI's where the core has
    dotprod (the A76, the A78AE, the X4), NEON's where it has not (the A72), x86's on a build host."""
    from packager.profile_types import kernel_family

    kernels = {name: resolve_target(name).device.kernels for name in ("rpi4", "rpi5", "phone", "jetson-orin-nano")}
    assert kernels == {"rpi4": "arm64", "rpi5": "arm64-dotprod", "phone": "arm64-dotprod",
                       "jetson-orin-nano": "arm64-dotprod"}
    assert kernel_family("x86_64", ()) == "x86-64" and kernel_family("aarch64", ("asimd",)) == "arm64"
