"""Runtime compatibility: the runtime table, the check against a profile's pinned runtime, the
`compat` stage and `packager inspect`. Tiny hand-built models: no export, a few seconds in all."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from packager.compat import check, facts_of, load_table, minor, read_model, require, version_key
from packager.errors import ExitCode, PackagerError
from packager.paths import profiles_dir
from packager.profiles import builtin_profiles, load_profile


def _relu(opset: int = 17, ir_version: int = 8, domain_ops: list[onnx.NodeProto] | None = None,
          extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes + (domain_ops or []), "g", [x], [y], [w])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items())]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _gather_block_quantized() -> onnx.ModelProto:
    """A block-quantized embedding table (int4, com.microsoft GatherBlockQuantized since onnxruntime 1.20)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])
    out = helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 3, 32])
    data = helper.make_tensor("table", TensorProto.UINT4, [8, 32], np.zeros(8 * 32, np.uint8).tolist())
    scales = numpy_helper.from_array(np.ones((8, 1), np.float32), "scales")
    node = helper.make_node("GatherBlockQuantized", ["table", "ids", "scales"], ["emb"], domain="com.microsoft",
                            gather_axis=0, quantize_axis=1, block_size=32, bits=4)
    graph = helper.make_graph([node], "g", [ids], [out], [data, scales])
    return helper.make_model(graph,
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)


def _profile(version: str, name: str = "my-board", package: str = "onnxruntime"):
    rpi5 = builtin_profiles()["rpi5"]
    return dataclasses.replace(rpi5, name=name,
                               runtime=dataclasses.replace(rpi5.runtime, version=version, package=package))


def _profile_file(tmp_path: Path, version: str) -> Path:
    text = (profiles_dir() / "rpi5.toml").read_text()
    path = tmp_path / "my-board.toml"
    path.write_text(text.replace('name = "rpi5"', 'name = "my-board"')
                    .replace('version = "1.32.0"', f'version = "{version}"'))
    assert load_profile(path).runtime.version == version
    return path


# --- the data ------------------------------------------------------------------------------------

def test_the_table_is_valid_and_never_goes_backwards() -> None:
    table = load_table()
    releases = list(table.releases.values())
    assert [r.version for r in releases] == sorted((r.version for r in releases), key=version_key)
    assert {"1.16", "1.20", "1.21", "1.32"} <= set(table.releases)
    for older, newer in zip(releases, releases[1:]):
        for figure in ("ir_version", "opset", "ml_opset"):
            assert getattr(newer, figure) >= getattr(older, figure), (older, newer, figure)
    assert {"onnxruntime", "onnxruntime-gpu"} <= set(table.packages)
    # Every figure says where it comes from.
    text = (profiles_dir() / "runtimes" / "onnxruntime.toml").read_text()
    for line in text.splitlines():
        if line.split("=")[0].strip() in ("ir_version", "opset", "ml_opset"):
            assert "#" in line, f"figure without a source comment: {line}"
    for op in table.contrib.values():
        assert op.source and minor(op.since) in table.releases


def test_the_table_matches_the_installed_runtime() -> None:
    """The contrib operators listed all exist in this onnxruntime's CPU provider, and where the table holds
    this very release its figures are what it loads."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    table = load_table()
    cpu = {("ai.onnx" if k.domain == "" else k.domain, k.op_name) for k in C.get_all_opkernel_def()
           if k.provider == "CPUExecutionProvider"}
    assert set(table.contrib) <= cpu, set(table.contrib) - cpu
    release = table.release(onnxruntime.__version__)
    if release is None or version_key(onnxruntime.__version__) != version_key(release.version):
        pytest.skip(f"onnxruntime {onnxruntime.__version__} is not in the table")
    onnxruntime.InferenceSession(_relu(release.opset, release.ir_version).SerializeToString(),
                                 providers=["CPUExecutionProvider"])


def test_every_profile_pins_a_runtime_in_the_table() -> None:
    table = load_table()
    for p in builtin_profiles().values():
        if p.runtime.name != "onnxruntime":   # onnxruntime-genai: its onnxruntime pin, in test_genai_runtime.py
            continue
        release = table.release(p.runtime.version)
        assert p.runtime.package in table.packages, p.name
        assert release is not None, f"{p.name} pins {p.runtime.version}, which the runtime table lacks"
        assert p.runtime.max_opset <= release.opset, \
            f"{p.name}: runtime.max_opset above what {release.version} implements"


# --- the check -----------------------------------------------------------------------------------

def test_opset_22_runs_on_1_32_and_not_on_1_20() -> None:
    facts = facts_of(_relu(opset=22, ir_version=10), "model.onnx")
    assert check(facts, builtin_profiles()["rpi5"]).ok
    result = check(facts, _profile("1.20.0"))
    assert result.status == "incompatible" and result.needs == "1.21.0"
    (problem,) = result.problems
    assert problem.sentence("model.onnx") == (
        "model.onnx imports ai.onnx opset 22, which onnxruntime 1.20.0 on my-board does not implement (it implements "
        "up to 21; opset 22 needs 1.21.0 or newer); raise runtime.version in the profile or convert the model to "
        "opset 21 with onnx.version_converter (none of its operators changed after opset 14).")
    with pytest.raises(PackagerError) as e:
        require(result)
    assert e.value.code == ExitCode.RUNTIME_INCOMPATIBLE == 11


def test_ir_version_and_custom_operators() -> None:
    custom = helper.make_node("Frobnicate", ["y"], ["z"], domain="my.ops")
    facts = facts_of(_relu(opset=17, ir_version=11, domain_ops=[custom], extra_opsets={"my.ops": 1}), "m.onnx")
    result = check(facts, builtin_profiles()["jetson-orin-nano"])
    kinds = [p.kind for p in result.problems]
    assert kinds == ["ir", "operator"] and result.needs is None   # no release runs the custom operator
    assert "IR version 11" in result.message() and "IR 11 needs 1.23.0 or newer" in result.message()
    assert "(and 1 more problem: `packager inspect` lists them)" in result.message()
    assert "custom operator my.ops Frobnicate" in result.problems[1].sentence("m.onnx")
    early = facts_of(_relu(opset=17, domain_ops=[helper.make_node("Gelu", ["y"], ["g"])]), "m.onnx")  # Gelu: opset 20
    (problem,) = check(early, builtin_profiles()["rpi5"]).problems
    assert "which ai.onnx opset 17 does not define (it arrived in opset 20)" in problem.clause
    # onnxruntime defines LayerNormalization below opset 17 itself (what its LayerNorm fusion writes in a .ort):
    # the contrib table, not the ONNX opset, says which runtimes have it.
    fused = facts_of(_relu(opset=12, domain_ops=[helper.make_node("LayerNormalization", ["y", "y"], ["n"])]), "m.ort")
    assert check(fused, builtin_profiles()["phone"]).ok


def test_operator_variants_need_their_own_release() -> None:
    matmul = helper.make_node("MatMulNBits", ["y", "b", "s"], ["z"], domain="com.microsoft", K=4, N=4, bits=8,
                              block_size=16)
    facts = facts_of(_relu(opset=21, ir_version=10, domain_ops=[matmul], extra_opsets={"com.microsoft": 1}), "m.onnx")
    assert facts.contrib_ops() == ["com.microsoft.MatMulNBits"]
    assert check(facts, _profile("1.23.0")).ok
    result = check(facts, _profile("1.22.0"))
    (problem,) = result.problems
    assert problem.subject == "com.microsoft MatMulNBits with bits=8" and problem.needs == "1.23.0"
    assert "does not run on aarch64" in problem.clause
    old = check(facts, _profile("1.16.0"))   # IR 10, opset 21 and the operator itself are all newer than 1.16
    assert [p.subject for p in old.problems] == ["IR version 10", "ai.onnx opset 21",
                                              "com.microsoft MatMulNBits with bits=8"]
    assert old.needs == "1.23.0"                  # the lowest release that runs all of it


def test_unknown_runtime_version_or_package() -> None:
    facts = facts_of(_relu(), "m.onnx")
    for profile in (_profile("1.15.0"), _profile("1.32.0", package="onnxruntime-directml")):
        result = check(facts, profile)
        assert result.status == "unknown" and "not in packager's runtime table" in result.message()
        with pytest.raises(PackagerError) as e:
            require(result)
        assert e.value.code == ExitCode.BAD_PROFILE


def test_subgraphs_and_functions_are_read() -> None:
    inner = helper.make_graph([helper.make_node("Gelu", ["a"], ["b"], domain="com.microsoft")], "then", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    cond = helper.make_node("If", ["c"], ["b"], then_branch=inner, else_branch=inner)
    fn = helper.make_function("local", "MyOp", ["p"], ["q"], [helper.make_node("Relu", ["p"], ["q"])],
                              [helper.make_opsetid("", 17)])
    call = helper.make_node("MyOp", ["x"], ["y2"], domain="local")
    graph = helper.make_graph([cond, call], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid("local", 1)], functions=[fn], ir_version=8)
    facts = facts_of(model, "m.onnx")
    assert facts.ops[("com.microsoft", "Gelu")] == 2 and facts.ops[("ai.onnx", "Relu")] == 1
    assert check(facts, builtin_profiles()["rpi4"]).ok   # the local function is no unknown operator


# --- the CLI and the pipeline ---------------------------------------------------------------------

def test_inspect_json_of_a_compatible_model(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(_relu(), path)
    proc = run_cli("inspect", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert {"model", "path", "inputs", "outputs", "parameters", "size_bytes", "ir_version", "opsets", "operators",
            "contrib_ops", "compatibility"} <= set(r)
    assert r["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 4]}]
    assert r["parameters"] == 16 and r["size_bytes"] == path.stat().st_size and r["opsets"] == {"ai.onnx": 17}
    assert {(o["op_type"], o["count"]) for o in r["operators"]} == {("MatMul", 1), ("Relu", 1)}
    assert {c["target"] for c in r["compatibility"]} == set(builtin_profiles())
    assert all(c["status"] == "ok" and c["problems"] == [] for c in r["compatibility"])


def test_inspect_a_contrib_op_newer_than_the_pinned_runtime(tmp_path: Path) -> None:
    path = tmp_path / "embed.onnx"
    onnx.save(_gather_block_quantized(), path)
    profile = _profile_file(tmp_path, "1.18.0")
    proc = run_cli("inspect", str(path), "--target", str(profile), "--target", "rpi5", "--json")
    assert proc.returncode == ExitCode.RUNTIME_INCOMPATIBLE, proc.stderr
    r = json.loads(proc.stdout)
    mine, rpi5 = r["compatibility"]
    assert (mine["status"], mine["needs"], rpi5["status"]) == ("incompatible", "1.20.0", "ok")
    assert mine["contrib_ops"] == ["com.microsoft.GatherBlockQuantized"]
    assert ("error: embed.onnx uses com.microsoft GatherBlockQuantized, which onnxruntime 1.18.0 on my-board does not "
            "have (it needs 1.20.0 or newer); raise runtime.version in the profile or choose another recipe.") \
        in proc.stderr.replace("\n", " ")


def test_package_stops_before_the_bundle(tmp_path: Path) -> None:
    path = tmp_path / "embed.onnx"
    onnx.save(_gather_block_quantized(), path)
    out = tmp_path / "dist"
    proc = run_cli("package", str(path), "--target", str(_profile_file(tmp_path, "1.18.0")), "--recipe", "fp32",
                   "--out", str(out))
    assert proc.returncode == ExitCode.RUNTIME_INCOMPATIBLE, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "the fp32 model.onnx uses com.microsoft GatherBlockQuantized" in proc.stderr
    assert "needs 1.20.0 or newer" in proc.stderr.replace("\n", " ")
    assert not out.exists() or not any(out.iterdir())


def test_inspect_reads_bundles_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    bundle = tmp_path / "tiny-rpi5"
    (bundle / "model").mkdir(parents=True)
    onnx.save(_relu(), bundle / "model" / "model.onnx")
    # a whole manifest (inspect reads it through the device's typed reader, which refuses a partial one)
    manifest = json.loads((Path(__file__).parent / "data" / "manifest_decoder.json").read_text(encoding="utf-8"))
    manifest |= {"name": "tiny", "target": "rpi5"}
    manifest["recipe"]["name"] = "fp32"
    manifest["runtime"] |= {"package": "onnxruntime", "version": "1.32.0"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    archive = tmp_path / "tiny-rpi5.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    from packager.cli_bundle import _inspect_path

    for given in (bundle, archive):
        path, _, summary = _inspect_path(str(given), tmp_path / f"x-{given.name}", None)
        assert read_model(path).ops == {("ai.onnx", "MatMul"): 1, ("ai.onnx", "Relu"): 1}
        assert summary == {"name": "tiny", "target": "rpi5", "recipe": "fp32", "runtime": "onnxruntime==1.32.0"}
    (tmp_path / "two").mkdir()
    for name in ("a.onnx", "b.onnx"):
        onnx.save(_relu(), tmp_path / "two" / name)
    with pytest.raises(PackagerError, match="2 .onnx files and no model.onnx") as e:
        _inspect_path(str(tmp_path / "two"), tmp_path, None)
    assert e.value.code == ExitCode.BAD_INPUT


@pytest.mark.integration
def test_inspect_exports_a_sample_first(tmp_path: Path) -> None:
    """Every sample inspects: a Hugging Face folder goes through packager's own export."""
    proc = run_cli("inspect", "sample:tiny-llama", "--target", "phone", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["path"] == "sample:tiny-llama (exported by packager, fp32)"
    assert {i["name"] for i in r["inputs"]} >= {"input_ids", "past_key_values.0.key"}
    assert r["compatibility"][0]["ok"] is True


def test_a_new_ir_stamp_is_lowered_to_what_the_runtime_reads(tmp_path: Path) -> None:
    """onnx 1.20+ stamps IR 14 on every file; an opset-17 graph needs IR 8, which ORT 1.21 reads."""
    from onnx import TensorProto, helper

    from packager.compat import lower_ir_version
    from packager.profiles import resolve_target

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "model.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 14
    onnx.save(model, path)
    jetson = resolve_target("jetson-orin-nano")   # onnxruntime-gpu 1.21: IR 10
    assert lower_ir_version(path, jetson) == {"from": 14, "to": 10}
    assert onnx.load(path).ir_version == 10
    assert lower_ir_version(path, jetson) is None   # already readable: untouched
    newer = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])   # opset 23 needs IR 11
    onnx.save(newer, path)
    assert lower_ir_version(path, jetson) is None and onnx.load(path).ir_version == newer.ir_version
