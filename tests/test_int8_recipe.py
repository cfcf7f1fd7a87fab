"""int8-dynamic on tiny synthetic models: outlier channels are smoothed into the weights, every
MatMul is quantized, and the recipe's params say what was done. A second each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager import smoothing
from packager.recipes.common import RecipeOptions
from packager.recipes.dense import int8_dynamic

HIDDEN, FFN, VOCAB, OUTLIER = 16, 32, 64, 3


def tiny_encoder(folder: Path, *, tokenizer: bool = True, shared_weight: bool = False) -> Path:
    """input_ids -> embedding -> a fixed gain (channel OUTLIER x40, like an encoder's outlier
    channel) -> MatMul -> Relu -> MatMul; with a word-level tokenizer.json beside it."""
    rng = np.random.default_rng(0)
    gain = np.ones(HIDDEN, np.float32)
    gain[OUTLIER] = 40.0
    w1 = rng.standard_normal((HIDDEN, FFN)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((FFN, HIDDEN)).astype(np.float32) * 0.3
    embedding = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    inits = [numpy_helper.from_array(a, name) for a, name in ((embedding, "embedding"), (gain, "gain"), (w1, "w1"),
                                                              (w2, "w2"))]
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["e"], name="embed"),
             helper.make_node("Mul", ["e", "gain"], ["x"], name="gain"),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="ffn1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="ffn2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, HIDDEN])]
    if shared_weight:  # w1 also multiplies another input: scaling its rows for x would change that product
        nodes.append(helper.make_node("MatMul", ["e", "w1"], ["z"], name="shares_w1"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, None, FFN]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers

        words = "the a of to and in is for on with that it was by at from as be this are".split()
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(folder / "tokenizer.json"))
    return folder / "model.onnx"


def run(path: Path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"input_ids": ids})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_outlier_channel_is_smoothed_and_every_matmul_quantized(tmp_path: Path) -> None:
    src = tiny_encoder(tmp_path / "text")
    result = int8_dynamic(src, tmp_path / "int8.onnx", RecipeOptions())

    done = result.params["smoothing"]
    assert done["applied"] and done["channels"]["x"] == [OUTLIER]  # the outlier, and no ordinary channel
    assert done["inputs_smoothed"] == len(done["channels"])
    assert done["channels_smoothed"] == sum(len(c) for c in done["channels"].values())
    assert result.params["per_channel"] and result.params["weight_type"] == "QInt8"
    assert result.params["fusion"] == {"applied": False, "why": "no attention (no Softmax) in the graph"}
    shipped = onnx.load(tmp_path / "int8.onnx")
    ops = [n.op_type for n in shipped.graph.node]
    assert "MatMul" not in ops and ops.count("MatMulInteger") == 2  # nothing kept in float
    assert result.quantized_nodes >= 2
    assert any(n.op_type == "Mul" and n.input[0] == "x" for n in shipped.graph.node)  # x * (1/s) before ffn1

    # What packager guarantees is its own recipe's agreement with fp32, on any CPU. Plain dynamic int8 is no
    # fixed baseline: on AVX2 without VNNI its u8 x s8 kernel saturates 16-bit pair sums on this outlier
    # (cosine under 0.95), while AVX512-VNNI hosts accumulate in 32 bits and keep it (0.9997), so the test
    # does not assert how plain int8 fares.
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, 24)).astype(np.int64)
    ours = cosine(run(tmp_path / "int8.onnx", ids), run(src, ids))
    assert ours > 0.995, ours


def test_smoothing_computes_the_same_function_in_float(tmp_path: Path) -> None:
    src = tiny_encoder(tmp_path / "m", tokenizer=False)
    model = onnx.load(src)
    groups = smoothing.smoothable(model)
    assert set(groups) == {"x", "r"}
    divisors = {"x": np.linspace(1.0, 5.0, HIDDEN, dtype=np.float32), "r": np.ones(FFN, np.float32)}
    assert smoothing.apply(model, groups, divisors) == {"x": list(range(1, HIDDEN))}  # r: all ones, left alone
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "smoothed.onnx")
    ids = np.arange(12, dtype=np.int64)[None]
    np.testing.assert_allclose(run(tmp_path / "smoothed.onnx", ids), run(src, ids), rtol=1e-4, atol=1e-5)


def test_scales_touch_only_channels_above_the_threshold() -> None:
    ranges = np.array([1.0, 1.0, 1.0, 2.0, 1.0, 40.0], np.float32)  # median 1
    s = smoothing.scales(ranges)
    assert s[:5].tolist() == [1.0] * 5
    assert s[5] == pytest.approx((40.0 / smoothing.THRESHOLD) ** smoothing.ALPHA)
    assert (smoothing.scales(np.zeros(4, np.float32)) == 1.0).all()


def test_tensor_models_and_shared_weights_are_quantized_plain(tmp_path: Path) -> None:
    result = int8_dynamic(tiny_encoder(tmp_path / "tensor", tokenizer=False), tmp_path / "t.onnx", RecipeOptions())
    for step in ("fusion", "smoothing"):
        assert result.params[step]["applied"] is False and "tokenizer" in result.params[step]["why"]
    assert result.quantized_nodes >= 2

    shared = onnx.load(tiny_encoder(tmp_path / "shared", shared_weight=True))
    assert set(smoothing.smoothable(shared)) == {"r"}  # x's weight w1 also multiplies e: neither is touched
