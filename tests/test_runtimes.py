"""The Runtime seam: a profile names its runtime, and the stages, the estimate, inspect and the bundle ask it
(packager/runtimes/), so a second runtime plugs in without a stage changing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import run_cli
from packager import bundle_files
from packager.compat import Compatibility, ModelFacts, read_model
from packager.errors import ExitCode, PackagerError
from packager.estimate import estimate
from packager.inspection import inspect
from packager.paths import profiles_dir
from packager.profiles import Profile, builtin_profiles, load_profile
from packager.records import Io, Memory
from packager.runtime_files import copy_runtime
from packager.runtimes import RUNTIMES, MemoryShare, runtime_for
from packager.runtimes.onnxruntime import OnnxRuntime
from packager.stages import compat as compat_stage
from packager.stages import mobile as mobile_stage

TENSOR_IO = Io(kind="tensor", inputs=[{"name": "x", "dtype": "float32", "shape": [1, 4]}], outputs=[],
               checked_outputs=[], primary_outputs=[])


def _profile_text(runtime_name: str | None) -> str:
    text = (profiles_dir() / "rpi5.toml").read_text(encoding="utf-8")
    start = text.index("[runtime]\n")
    end = text.index("\n", start + len("[runtime]\n"))
    header = text[start:end]   # `[runtime]` and the name line of the built-in profile
    assert header.startswith("[runtime]\nname = ")
    replacement = "[runtime]" + (f"\nname = \"{runtime_name}\"" if runtime_name is not None else "")
    return text.replace(header, replacement, 1).replace('name = "rpi5"', 'name = "my-board"', 1)


def _write(tmp_path: Path, runtime_name: str | None) -> Path:
    path = tmp_path / "board.toml"
    path.write_text(_profile_text(runtime_name), encoding="utf-8")
    return path


def test_builtin_profiles_name_their_runtime() -> None:
    """Every built-in target runs on ONNX Runtime but rpi5-genai, the opt-in onnxruntime-genai one (issue 19)."""
    for p in builtin_profiles().values():
        assert p.runtime.name == ("onnxruntime-genai" if p.name == "rpi5-genai" else "onnxruntime")
        assert isinstance(runtime_for(p), OnnxRuntime)   # genai's runtime extends ONNX Runtime's


def test_a_profile_that_names_no_runtime_loads_as_onnxruntime(tmp_path: Path) -> None:
    """User profiles written before [runtime] name existed keep loading, and their bundles' manifests keep
    their shape: the default name is not recorded."""
    p = load_profile(_write(tmp_path, None))
    assert p.runtime.name == "onnxruntime"
    assert "name" not in p.to_dict()["runtime"]


def test_an_unknown_runtime_is_exit_6_naming_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "onnxruntim")
    with pytest.raises(PackagerError) as e:
        load_profile(path)
    assert e.value.code == ExitCode.BAD_PROFILE
    assert str(path) in e.value.message and "'runtime.name'" in e.value.message
    assert 'did you mean "onnxruntime"' in e.value.message and e.value.message.endswith("fix the profile.")
    proc = run_cli("package", "sample:silero-vad", "--target", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == ExitCode.BAD_PROFILE and "runtime.name" in proc.stderr


# ---------------------------------------------------------------------------------------------
# A second runtime, registered by this test only


class FakeRuntime:
    """Records what the stages ask of it; answers with figures no ONNX Runtime path would give."""

    name = "fake"

    def __init__(self, device_file: Path) -> None:
        self.calls: list[str] = []
        self.device_file = device_file

    def check_profile(self, profile: Profile, where: str) -> None:
        self.calls.append("check_profile")

    def requirements(self, profile: Profile) -> list[str]:
        self.calls.append("requirements")
        return ["fake-runtime==9.9"]

    def check_model(self, path: Path, profile: Profile, what: str) -> tuple[Compatibility, dict[str, Any]]:
        self.calls.append("check_model")
        result = self.check_facts(read_model(path, what), profile)
        return result, {"runtime": "fake-runtime==9.9", "status": result.status}

    def check_facts(self, facts: ModelFacts, profile: Profile) -> Compatibility:
        self.calls.append("check_facts")
        return Compatibility(profile.name, "fake-runtime", "9.9", "ok", facts=facts)

    def memory(self, profile: Profile, kind: str) -> MemoryShare:
        self.calls.append("memory")
        return MemoryShare(base_bytes=123_000_000, shared_bytes=100_000_000, converted_buffer=(1.0, 1.0),
                           converted_buffer_name="fake_buffer")

    def unmeasured_bytes(self, profile: Profile, measured: dict[str, Any] | None) -> int:
        return 0

    def convert(self, ctx: Any) -> None:
        self.calls.append("convert")
        converted = ctx.stage_dir / "model" / "model.fake"
        converted.write_bytes(b"converted")
        ctx.model_file = "model/model.fake"

    def session_spec(self, profile: Profile, memory: Memory | None) -> dict[str, Any]:
        return {"package": "fake-runtime", "version": "9.9"}

    def device_files(self, profile: Profile) -> dict[str, Path]:
        self.calls.append("device_files")
        return {self.device_file.name: self.device_file}

    def write_bundle_files(self, ctx: Any, stage: Path) -> None:
        self.calls.append("write_bundle_files")

    def readme(self, ctx: Any) -> str:
        return ""


def _tiny_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.5] * 16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_second_runtime_routes_the_stages_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device_file = tmp_path / "fake_run.py"
    device_file.write_text("print('fake')\n", encoding="utf-8")
    fake = FakeRuntime(device_file)
    monkeypatch.setitem(RUNTIMES, "fake", fake)
    profile = load_profile(_write(tmp_path, "fake"))
    assert profile.runtime.name == "fake" and runtime_for(profile) is fake and "check_profile" in fake.calls
    assert profile.to_dict()["runtime"]["name"] == "fake"   # the manifest records a runtime other than the default

    stage = tmp_path / "stage"
    (stage / "model").mkdir(parents=True)
    model = _tiny_model(stage / "model" / "model.onnx")
    ctx = SimpleNamespace(profile=profile, io=TENSOR_IO, sign_key=None, packaged_model=model, components=[],
                          recipe_name="fp32", compatibility={}, stage_dir=stage, model_file="model/model.onnx")

    # requirements: the runtime's pins, then the family's
    assert bundle_files.requirements(ctx).splitlines()[1] == "fake-runtime==9.9"   # type: ignore[arg-type]
    # compatibility: the stage takes the runtime's verdict and record
    compat_stage.run(ctx)   # type: ignore[arg-type]
    assert ctx.compatibility == {"runtime": "fake-runtime==9.9", "status": "ok"}
    # conversion: the stage that converts for phones asks the runtime, which may convert for any target
    mobile_stage.run(ctx)   # type: ignore[arg-type]
    assert ctx.model_file == "model/model.fake"
    # memory: the runtime's base and its converted file's buffer, under its own name
    est = estimate(model, profile, "tensor", {"x": (1, 4)}, converted_bytes=9)
    assert est.breakdown["runtime_base"] == 123_000_000 and est.breakdown["fake_buffer"] == 9
    # inspect: each target's verdict from its runtime
    assert inspect(model, [profile]).compatibility[0].package == "fake-runtime"
    # the device-side code
    dest = tmp_path / "bundle"
    dest.mkdir()
    copy_runtime(dest, profile)
    assert [p.name for p in dest.iterdir()] == ["fake_run.py"]
    assert {"requirements", "check_model", "convert", "memory", "check_facts", "device_files"} <= set(fake.calls)


def test_the_manifest_runtime_section_comes_from_the_runtime() -> None:
    """manifest.json's runtime section: the runtime's session spec, the model and io packager adds."""
    from packager.manifest import runtime_spec

    profile = builtin_profiles()["jetson-orin-nano"]
    ctx = SimpleNamespace(profile=profile, memory=None, model_file="model/model.onnx", io=TENSOR_IO,
                          components=[], context=None, packaged_model=None)
    spec = runtime_spec(ctx)   # type: ignore[arg-type]
    assert spec["package"] == "onnxruntime-gpu" and spec["providers"][0] == "TensorrtExecutionProvider"
    assert json.dumps(spec)   # plain data


def test_decoders_take_the_profiles_decoder_runtime_where_it_builds_them() -> None:
    from packager.runtimes import profile_for_model

    profiles = builtin_profiles()
    for name in ("rpi5", "rpi4", "phone"):
        cpu = profiles[name]
        llama, note = profile_for_model(cpu, "decoder", "LlamaForCausalLM")
        # the phone's app packages follow the decoder's runtime: genai's for Llama, onnxruntime's for GPT-2
        assert llama.mobile == (cpu.decoder_runtime.mobile if cpu.mobile else None)   # type: ignore[union-attr]
        assert (llama.runtime.name, llama.recipe_for(True), note) == ("onnxruntime-genai", "int4-mixed", "")
        # the arena where the decoders' MatMulNBits run at level 4 (its buffers a call: docs/memory.md)
        assert llama.session.cpu_mem_arena is (llama.int4.compute == "int8")
        assert "decoder_runtime" not in llama.to_dict()
        gpt2, note = profile_for_model(cpu, "decoder", "GPT2LMHeadModel")
        # [runtime], with the decoders' int4 settings ([decoder_int4]) as on [decoder_runtime]
        assert gpt2 == cpu.with_decoder_int4() and gpt2.int4 == llama.int4
        assert gpt2.runtime == cpu.runtime and "GPT2LMHeadModel" in note and cpu.runtime.package in note
        assert profile_for_model(cpu, "text", "BertModel") == (cpu, "")
    assert profiles["phone"].mobile.android_package.endswith("onnxruntime-android")   # type: ignore[union-attr]
    for name in ("jetson-orin-nano", "rpi5-genai"):   # no [decoder_runtime]: as they were, but for [decoder_int4]
        assert profile_for_model(profiles[name], "decoder", "LlamaForCausalLM") == \
            (profiles[name].with_decoder_int4(), "")
    phone = profiles["phone"]   # its decoders on onnxruntime-genai at block 128; its other int4 at block 32
    llama = profile_for_model(phone, "decoder", "LlamaForCausalLM")[0]
    assert (llama.runtime.name, llama.int4.compute, phone.int4.compute) == ("onnxruntime-genai", "int8", "int8")
    assert (llama.int4.block_size, phone.int4.block_size) == (128, 32)


def test_a_bad_decoder_runtime_is_refused_naming_the_section(tmp_path: Path) -> None:
    text = (profiles_dir() / "rpi5.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('name = "onnxruntime-genai"', 'name = "onnxruntime-gena"'))
    with pytest.raises(PackagerError) as e:
        load_profile(bad)
    assert e.value.code == ExitCode.BAD_PROFILE and "[decoder_runtime]" in e.value.message
    assert "onnxruntime-genai" in e.value.message   # did you mean
