"""Phone bundles: model.ort (what the app loads, and what the host smoke test runs), the reduced-build
configuration, the app runtimes' checks, the mobile usability verdict and the Android / iOS examples."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, unpack
from packager.config import resolve_package_settings
from packager.errors import ExitCode, PackagerError
from packager.mobile import check_apps, convert, gated_out, ort_facts, repack_int4
from packager.mobile_examples import class_name
from packager.options import InputSpec, PackageOptions
from packager.paths import profiles_dir
from packager.pipeline import package
from packager.profiles import Int4, load_profile
from packager.recipes.common import RecipeOptions
from packager.recipes.nbits import int4


@pytest.mark.integration
def test_phone_bundle_ships_the_ort_model_and_app_examples(silero_onnx: Path, tmp_path: Path) -> None:
    """Silero VAD (LSTM state, If subgraphs, a scalar input) for the phone: converted, checked, rated, exemplified,
    and smoke-tested on model.ort."""
    settings = resolve_package_settings({"target": "phone", "out": str(tmp_path / "dist"), "recipe": None,
                                         "budget": None})
    spec = InputSpec(shapes={"input": (1, 512), "state": (2, 1, 128)}, values={"sr": 16000})
    ctx = package(str(silero_onnx), settings, PackageOptions(input_spec=spec))
    bundle = unpack(ctx.archive, tmp_path / "unpacked")
    manifest = json.loads((bundle / "manifest.json").read_text())

    # The device loads model.ort, and so does everything that verified and measured it here.
    assert manifest["runtime"]["model"] == "model/model.ort"
    assert {"model/model.ort", "model/model.onnx", "model/required_operators_and_types.config",
            "android/SileroVadModel.kt", "android/README.md", "ios/SileroVadModel.swift", "ios/README.md"} <= \
        {f["path"] for f in manifest["files"]}
    config = (bundle / "model/required_operators_and_types.config").read_text()
    assert "# - model.ort\n" in config and "ai.onnx;" in config and "LSTM" in config
    assert str(tmp_path) not in config  # no build-host path in the bundle

    mobile = manifest["mobile"]
    assert mobile["ort_format_version"] == "6" and mobile["converted_with"] == f"onnxruntime {ort.__version__}"
    assert [a["runtime"] for a in mobile["app_runtimes"]] == ["onnxruntime-android==1.27.0", "onnxruntime-objc==1.27.0"]
    assert all(a["ok"] for a in mobile["app_runtimes"])
    rated = mobile["usability"]["providers"]
    assert set(rated) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    assert all(r["rating"] in ("YES", "MAYBE", "NO") and 0 <= r["supported_nodes"] <= r["nodes"]
               for r in rated.values())

    kotlin = (bundle / "android/SileroVadModel.kt").read_text()
    assert 'implementation("com.microsoft.onnxruntime:onnxruntime-android:1.27.0")' in kotlin
    assert "env.createSession(model.absolutePath, options)" in kotlin
    assert 'options.addXnnpack(mapOf("intra_op_num_threads" to "4"))' in kotlin
    assert 'options.addConfigEntry("mlas.enable_gemm_fastmath_arm64_bfloat16", "1")' in kotlin
    assert '"input" to OnnxTensor.createTensor(env, FloatBuffer.wrap(FloatArray(512)), longArrayOf(1, 512))' in kotlin
    assert '"sr" to OnnxTensor.createTensor(env, LongBuffer.wrap(longArrayOf(16000)), longArrayOf())' in kotlin
    swift = (bundle / "ios/SileroVadModel.swift").read_text()
    assert ("pod 'onnxruntime-objc', '1.27.0'" in swift
            and "try options.appendXnnpackExecutionProvider(with: xnnpack)" in swift)
    assert '"sr": try Self.tensor([16000] as [Int64], shape: [], type: .int64)' in swift
    coreml = "try options.appendCoreMLExecutionProvider(with: coreML)"
    gated = all(r["rating"] == "NO" and r.get("rating_with_fixed_shapes", "NO") == "NO"
                for n, r in rated.items() if n.startswith("CoreML"))
    assert coreml in swift and (f"// {coreml}" in swift) == gated
    assert "{{" not in kotlin + swift
    assert "model/model.ort" in (bundle / "README.md").read_text()

    # The host smoke test loads model.ort with the Python runtime.
    smoke = subprocess.run([sys.executable, str(bundle / "smoke_test.py")], capture_output=True, text=True, timeout=120)
    assert smoke.returncode == 0 and smoke.stdout.splitlines()[-1] == "PASS", smoke.stdout

    import jsonschema

    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(manifest))


def _lookup_model(folder: Path, vocab: int = 4096, width: int = 64) -> Path:
    """ids -> Gather(table) -> MatMul(head), the table alone in an external data file of its own at offset 0: what
    estimate.mapped_tables calls a memory-mapped lookup table (as the E-class exporter's model.ple.data)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("MatMul", ["rows", "head"], ["y"])]
    graph = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 8])],
                              [numpy_helper.from_array(table, "table"),
                               numpy_helper.from_array(rng.standard_normal((width, 8)).astype(np.float32), "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    folder.mkdir(parents=True)
    (folder / "model.table.data").write_bytes(table.tobytes())
    stored = model.graph.initializer[0]
    stored.ClearField("raw_data")
    stored.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "model.table.data"), ("offset", "0"), ("length", str(table.nbytes))):
        stored.external_data.add(key=key, value=value)
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def test_a_model_with_a_mapped_table_ships_its_onnx_to_the_phone(tmp_path: Path) -> None:
    """A model with a memory-mapped lookup table (an E-class model's per-layer embeddings) is not converted to the ORT
    format, whose flatbuffer would hold the table resident: the app, run.py and the estimate load model.onnx with
    its table's file beside it (packager/mobile.py loads_onnx)."""
    settings = resolve_package_settings({"target": "phone", "out": str(tmp_path / "dist"), "recipe": "fp32",
                                         "budget": None})
    ctx = package(str(_lookup_model(tmp_path / "src")), settings,
                  PackageOptions(input_spec=InputSpec(shapes={"ids": (1, 8)})))
    bundle = unpack(ctx.archive, tmp_path / "unpacked")
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {f["path"] for f in manifest["files"]}
    assert manifest["runtime"]["model"] == "model/model.onnx"
    assert {"model/model.onnx", "model/model.table.data"} <= files
    assert not any(f.endswith(".ort") or f.endswith(".config") for f in files)   # no conversion, no reduced build
    mobile = manifest["mobile"]
    assert (mobile["format"], mobile["model"]) == ("onnx", "model/model.onnx")
    assert mobile["mapped_files"] == mobile["external_data"] == ["model/model.table.data"]
    assert [a["runtime"] for a in mobile["app_runtimes"] if a["ok"]] == ["onnxruntime-android==1.27.0",
                                                                          "onnxruntime-objc==1.27.0"]
    estimate = manifest["memory"]["estimate"]
    assert "ort_format_buffer" not in estimate["breakdown"] and estimate["mapped_bytes"] == 4096 * 64 * 4

    size = (bundle / "model/model.table.data").stat().st_size
    kotlin = (bundle / "android/ModelModel.kt").read_text()
    assert f'listOf("model.onnx" to {(bundle / "model/model.onnx").stat().st_size}L, "model.table.data" to {size}L)' \
        in kotlin and "env.createSession(model.absolutePath, options)" in kotlin
    swift = (bundle / "ios/ModelModel.swift").read_text()
    assert 'Bundle.main.path(forResource: "model", ofType: "onnx")' in swift and "{{" not in kotlin + swift
    readmes = "".join((bundle / d / "README.md").read_text() for d in ("android", "ios"))
    assert "`model/model.table.data`" in readmes and "onnxruntime-mobile" in readmes and ".ort" not in kotlin + swift
    assert "model/model.onnx" in (bundle / "README.md").read_text()

    # run.py and the smoke test load model.onnx, which maps its table's file
    smoke = subprocess.run([sys.executable, str(bundle / "smoke_test.py")], capture_output=True, text=True, timeout=120)
    assert smoke.returncode == 0 and smoke.stdout.splitlines()[-1] == "PASS", smoke.stdout

    import jsonschema

    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(manifest))
    manifest["mobile"].pop("mapped_files")   # the schema asks an .onnx bundle for its mapped files
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(manifest))


def _untied_decoder(vocab: int = 64, hidden: int = 64) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(head) -> logits, the table and the head distinct: int4 makes a
    GatherBlockQuantized with an INT4 table and a MatMulNBits."""
    rng = np.random.default_rng(1)
    table, head = (rng.standard_normal(shape).astype(np.float32) for shape in ((vocab, hidden), (hidden, vocab)))
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], name="/model/embed_tokens/Gather"),
             helper.make_node("MatMul", ["h", "head"], ["logits"], name="/lm_head/MatMul")]
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, vocab])],
                              [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # as exported


def test_int4_decoder_ops_convert_to_an_ort_model_that_loads(tmp_path: Path) -> None:
    """MatMulNBits and GatherBlockQuantized in the ORT format. It has no 4-bit tensor type: an INT4 table becomes
    uint8, two values a byte, with the same values after dequantization."""
    src, dst = tmp_path / "fp32.onnx", tmp_path / "model.onnx"
    onnx.save(_untied_decoder(), src)
    int4(src, dst, RecipeOptions(int4=Int4(block_size=32, symmetric=True, accuracy_level=0)))
    ids = {"ids": np.array([[0, 5, 63, 7]], dtype=np.int64)}
    before = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, ids)[0]
    assert repack_int4(dst) == ["table_Q4"]
    table = next(i for i in onnx.load(dst).graph.initializer if i.name == "table_Q4")
    assert table.data_type == TensorProto.UINT8 and list(table.dims) == [64, 32]
    after = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, ids)[0]
    np.testing.assert_array_equal(before, after)
    assert repack_int4(dst) == []  # nothing left to repack

    converted = convert(dst, tmp_path / "ort", "aarch64")
    np.testing.assert_array_equal(
        ort.InferenceSession(str(converted.model), providers=["CPUExecutionProvider"]).run(None, ids)[0], before)
    facts, version = ort_facts(converted.model)
    assert version == "6" and {("com.microsoft", "GatherBlockQuantized"),
                               ("com.microsoft", "MatMulNBits")} <= set(facts.ops)
    assert set(facts.opsets) <= {"ai.onnx", "com.microsoft"}  # unused imported domains are not the model's

    # The app runtimes the phone profile pins run it; an older Android runtime is refused with one sentence.
    phone = load_profile(profiles_dir() / "phone.toml")
    assert [a["ok"] for a in check_apps(facts, version, phone)] == [True, True]
    old = dataclasses.replace(phone, mobile=dataclasses.replace(phone.mobile, android_version="1.19.0"))
    with pytest.raises(PackagerError) as e:
        check_apps(facts, version, old)
    assert e.value.code == ExitCode.RUNTIME_INCOMPATIBLE
    assert ("uses com.microsoft GatherBlockQuantized, which onnxruntime-android 1.19.0 on phone does not have "
            "(it needs 1.20.0 or newer); raise mobile.android_version in the profile") in e.value.message


def _phone_text() -> str:
    return (profiles_dir() / "phone.toml").read_text()


@pytest.mark.parametrize("change, key, problem", [
    (('android_version = "1.27.0"', 'android_version = "1.27"'), "mobile.android_version", "exact version"),
    (('android_providers = ["XnnpackExecutionProvider"]', 'android_providers = ["CoreMLExecutionProvider"]'),
     "mobile.android_providers[0]", "cannot add"),
    (("[mobile]\n", "[mobile]\nios_pods = 'x'\n"), "mobile.ios_pods", 'did you mean "ios_pod"'),
    (('"session.intra_op.allow_spinning" = "0"', '"session.intra_op.allow_spinning" = 0'),
     "session.config.session.intra_op.allow_spinning", "must be str"),
    (('"session.intra_op.allow_spinning" = "0"', '"Allow Spinning" = "0"'), "session.config.Allow Spinning",
     "not an onnxruntime session config key"),
    # [decoder_runtime.mobile]: genai's app packages, at the release verify runs
    (('android_package = "com.microsoft.onnxruntime:onnxruntime-genai-android"',
      'android_package = "com.microsoft.onnxruntime:onnxruntime-android"'), "mobile.android_package",
     "with the GenAI API"),
    (('ios_version = "0.18.0"', 'ios_version = "0.17.0"'), "mobile.ios_version", "the release of onnxruntime-genai"),
])
def test_invalid_mobile_settings_name_the_key(tmp_path: Path, change: tuple[str, str], key: str, problem: str) -> None:
    text = _phone_text()
    assert change[0] in text
    path = tmp_path / "custom.toml"
    path.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(PackagerError) as e:
        load_profile(path)
    assert e.value.code == ExitCode.BAD_PROFILE and f"'{key}'" in e.value.message and problem in e.value.message


def test_examples_leave_out_providers_the_usability_check_rates_no() -> None:
    rated = {"providers": {"NNAPI": {"rating": "NO", "rating_with_fixed_shapes": "MAYBE", "nodes": 10,
                                     "supported_nodes": 8, "partitions": 2},
                           "CoreML NeuralNetwork": {"rating": "NO", "nodes": 10, "supported_nodes": 1, "partitions": 1},
                           "CoreML MLProgram": {"rating": "NO", "nodes": 10, "supported_nodes": 2, "partitions": 2}}}
    assert gated_out("NnapiExecutionProvider", rated) == ""  # fixed shapes would make it worth a try
    assert ("rates this model NO for CoreML NeuralNetwork and CoreML MLProgram"
            in gated_out("CoreMLExecutionProvider", rated))
    assert gated_out("XnnpackExecutionProvider", rated) == ""
    assert gated_out("CoreMLExecutionProvider", {"error": "x"}) == ""  # no verdict: the profile decides
    assert class_name("silero_vad") == "SileroVadModel" and class_name("3d-net") == "M3dNetModel"
