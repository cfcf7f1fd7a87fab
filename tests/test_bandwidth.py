"""The memory-bandwidth bound (packager/bandwidth.py): the bytes a generated token reads, each profile's
bandwidth, and `plan`'s column from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager.bandwidth import (
    GB,
    Bound,
    decode_bound,
    host_bandwidth_gbs,
    kv_bytes_of,
    model_reads,
    weights_read_per_token,
)
from packager.errors import ExitCode, PackagerError
from packager.profiles import builtin_profiles, load_profile, profiles_dir


def _model(path: Path, tied: bool) -> tuple[int, int]:
    """An embedding lookup and a matmul; `tied`: the matmul reads the lookup's table too. Returns the table's
    and the matmul weight's bytes."""
    table = numpy_helper.from_array(np.ones((64, 8), np.float32), "table")
    weight = numpy_helper.from_array(np.ones((8, 16), np.float32), "weight")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"]),
             helper.make_node("MatMul", ["x", "weight"], ["h"])]
    if tied:
        nodes.append(helper.make_node("MatMul", ["h2", "table"], ["logits"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
                              [table, weight])
    onnx.save(helper.make_model(graph), str(path))
    return 64 * 8 * 4, 8 * 16 * 4


def test_a_looked_up_table_is_not_read_whole_unless_tied(tmp_path: Path) -> None:
    table, weight = _model(tmp_path / "untied.onnx", tied=False)
    assert weights_read_per_token(tmp_path / "untied.onnx") == weight
    _model(tmp_path / "tied.onnx", tied=True)
    assert weights_read_per_token(tmp_path / "tied.onnx") == weight + table


def test_the_kv_element_size_is_the_packaged_graphs(tmp_path: Path) -> None:
    _, weight = _model(tmp_path / "m.onnx", tied=False)
    assert model_reads(tmp_path / "m.onnx") == (weight, None)   # no cache
    model = onnx.load(str(tmp_path / "m.onnx"))
    model.graph.input.append(helper.make_tensor_value_info("past_key_values.0.key", TensorProto.INT8, [1, 2, "p", 4]))
    onnx.save(model, str(tmp_path / "kv8.onnx"))
    assert model_reads(tmp_path / "kv8.onnx") == (weight, 1)
    record = {"layers": 2, "heads": 2, "head_dim": 4, "dtype": "float32"}
    assert kv_bytes_of(record, 1) * 4 == kv_bytes_of(record) == 2 * 2 * 2 * 4 * 4


def test_external_data_is_counted_without_loading_it(tmp_path: Path) -> None:
    _, weight = _model(tmp_path / "m.onnx", tied=False)
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert weights_read_per_token(tmp_path / "ext.onnx") == weight


def test_the_bound_is_bandwidth_over_bytes_a_token_reads() -> None:
    kv = kv_bytes_of({"layers": 16, "heads": 8, "head_dim": 64, "dtype": "float32"})
    assert kv == 2 * 16 * 8 * 64 * 4
    assert kv_bytes_of({"layers": 16, "heads": 8, "head_dim": 64, "dtype": "float16"}) == kv // 2
    bound = Bound(17.1, 800 * 2**20, kv * 4096, "test")
    assert bound.tokens_per_s == decode_bound(17.1, 800 * 2**20, kv * 4096) == 17.1 * GB / (800 * 2**20 + kv * 4096)
    assert Bound(34.2, 800 * 2**20, 0, "x").tokens_per_s == pytest.approx(2 * Bound(17.1, 800 * 2**20, 0, "x")
                                                                          .tokens_per_s)


def test_host_bandwidth_is_measured() -> None:
    assert host_bandwidth_gbs(size=8 * 2**20, repeats=2) > 0


def test_every_built_in_profile_names_its_bandwidth_and_bundles_do_not_record_it() -> None:
    for profile in builtin_profiles().values():
        assert profile.device.memory_bandwidth_gbs > 0, profile.name
        assert "memory_bandwidth_gbs" not in profile.to_dict()["device"]   # bundles reproduce byte for byte
    assert builtin_profiles()["rpi5"].device.memory_bandwidth_gbs == 17.1


def test_a_negative_bandwidth_is_refused(tmp_path: Path) -> None:
    text = (profiles_dir() / "rpi5.toml").read_text().replace("memory_bandwidth_gbs = 17.1",
                                                               "memory_bandwidth_gbs = -1.0")
    (tmp_path / "rpi5.toml").write_text(text)
    with pytest.raises(PackagerError) as e:
        load_profile(tmp_path / "rpi5.toml")
    assert e.value.code == ExitCode.BAD_PROFILE and "memory_bandwidth_gbs" in e.value.message


def test_plan_gives_the_decode_bound_from_the_profile() -> None:
    from packager.plan import plan

    profile = builtin_profiles()["rpi5"]
    result = plan("sample:tiny-llama", profile, precisions=["fp32", "int4"], contexts=[256])
    fp32, int4 = result.rows
    a = result.architecture
    for row, bytes_per in ((fp32, 4.0), (int4, 0.5 + 4 / 32)):
        lookup = 0 if a.tied_embeddings else int(a.embedding_parameters * bytes_per)
        assert row.decode_bound_tokens_per_s == pytest.approx(
            decode_bound(profile.device.memory_bandwidth_gbs, row.weights_bytes - lookup, row.kv_cache_bytes))
    assert int4.decode_bound_tokens_per_s > fp32.decode_bound_tokens_per_s > 0
