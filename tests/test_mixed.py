"""int4-mixed's pieces on a small synthetic decoder-shaped graph (packager/recipes/layers.py, recipes.int4_mixed):
layers named as optimum names them, a tied or untied embedding, no export needed. The measured search
on a real fine-tune runs in tests/test_lora.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager.profiles import Int4
from packager.recipes import RECIPES
from packager.recipes.common import RecipeOptions
from packager.recipes.layers import layer_of

VOCAB, HIDDEN = 64, 128


def decoder_like(path: Path, tied: bool = True, seed: int = 0) -> Path:
    """ids -> embedding Gather -> two blocks of one MatMul each -> lm_head MatMul -> logits, named as optimum's
    Llama export names them; with `tied`, the lm_head's weight is the embedding table transposed."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 0.5, (VOCAB, HIDDEN)).astype(np.float32)
    w0, w1 = (rng.normal(0, 0.1, (HIDDEN, HIDDEN)).astype(np.float32) for _ in range(2))
    head = table.T.copy() if tied else rng.normal(0, 0.5, (HIDDEN, VOCAB)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embed.weight", "input_ids"], ["/model/embed_tokens/Gather_output_0"],
                         name="/model/embed_tokens/Gather"),
        helper.make_node("MatMul", ["/model/embed_tokens/Gather_output_0", "w0"],
                         ["/model/layers.0/mlp/down_proj/MatMul_output_0"],
                         name="/model/layers.0/mlp/down_proj/MatMul"),
        helper.make_node("MatMul", ["/model/layers.0/mlp/down_proj/MatMul_output_0", "w1"],
                         ["/model/layers.1/mlp/down_proj/MatMul_output_0"],
                         name="/model/layers.1/mlp/down_proj/MatMul"),
        helper.make_node("MatMul", ["/model/layers.1/mlp/down_proj/MatMul_output_0", "head"], ["logits"],
                         name="/lm_head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "decoder_like", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", VOCAB])],
        [numpy_helper.from_array(a, n) for a, n in ((table, "embed.weight"), (w0, "w0"), (w1, "w1"), (head, "head"))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    return path


def logits(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": np.arange(0, VOCAB, 3, dtype=np.int64)[None, :]})[0]


def quantized(src: Path, dst: Path, keep: tuple[str, ...] = (), settings: Int4 = Int4()) -> dict:
    return RECIPES["int4-mixed"](src, dst, RecipeOptions(int4=settings, keep_8bit=keep)).params


def bits(path: Path) -> dict[str, int]:
    model = onnx.load(path)
    return {layer_of(n): next((a.i for a in n.attribute if a.name == "bits"), 4)   # 4: the ops' default
            for n in model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}


def test_with_no_layer_kept_int4_mixed_is_int4_byte_for_byte(tmp_path: Path) -> None:
    src = decoder_like(tmp_path / "fp32.onnx")
    (tmp_path / "int4").mkdir()
    (tmp_path / "mixed").mkdir()
    RECIPES["int4"](src, tmp_path / "int4" / "model.onnx", RecipeOptions())
    params = quantized(src, tmp_path / "mixed" / "model.onnx")
    files = sorted(p.name for p in (tmp_path / "int4").iterdir())   # the model and its tied lookup's mapped copy
    assert files == sorted(p.name for p in (tmp_path / "mixed").iterdir()) and len(files) == 2
    assert all((tmp_path / "mixed" / f).read_bytes() == (tmp_path / "int4" / f).read_bytes() for f in files)
    assert "mixed" not in params


@pytest.mark.parametrize("tied", [True, False])
def test_kept_layers_are_8_bit_and_cost_what_the_params_say(tmp_path: Path, tied: bool) -> None:
    src = decoder_like(tmp_path / "fp32.onnx", tied=tied)
    reference = logits(src)
    quantized(src, tmp_path / "int4.onnx")
    layers = ("layers.0", "layers.1", "lm_head") + (() if tied else ("embed_tokens",))
    assert set(bits(tmp_path / "int4.onnx")) >= set(layers) and set(bits(tmp_path / "int4.onnx").values()) == {4}

    params = quantized(src, tmp_path / "one.onnx", keep=("layers.1",))["mixed"]
    assert bits(tmp_path / "one.onnx") == bits(tmp_path / "int4.onnx") | {"layers.1": 8}
    assert params["layers_8bit"] == ["layers.1"] and params["layers"] == len(layers)
    assert params["cost_bytes"] == params["layer_bytes"]["layers.1"]["int8"] - params["layer_bytes"]["layers.1"]["int4"]
    grown = (tmp_path / "one.onnx").stat().st_size - (tmp_path / "int4.onnx").stat().st_size
    assert abs(grown - params["cost_bytes"]) < 1024     # the file grows by what the params say, give or take names

    every = quantized(src, tmp_path / "all.onnx", keep=layers)["mixed"]
    # A tied embedding follows the lm_head to 8 bits; an untied one is raised on its own (_embedding_8bit).
    assert set(bits(tmp_path / "all.onnx").values()) == {8}
    assert every["cost_bytes"] > params["cost_bytes"] > 0
    error4 = np.abs(logits(tmp_path / "int4.onnx") - reference).max()
    error8 = np.abs(logits(tmp_path / "all.onnx") - reference).max()
    assert error8 < error4 / 8, (error8, error4)   # 4 more bits: about 16x finer steps


def test_an_unknown_layer_is_refused(tmp_path: Path) -> None:
    src = decoder_like(tmp_path / "fp32.onnx")
    with pytest.raises(ValueError, match="no quantized layer named 'layers.7'"):
        quantized(src, tmp_path / "x.onnx", keep=("layers.7",))


def test_layer_names_come_from_the_node_path() -> None:
    def node(name: str, output: str) -> onnx.NodeProto:
        return helper.make_node("MatMulNBits", ["a", "b"], [output], name=name)

    assert layer_of(node("/model/layers.12/self_attn/q_proj/MatMul_Q4", "x")) == "layers.12"
    assert layer_of(node("/transformer/h.3/attn/c_attn/MatMul_Q4", "y")) == "h.3"
    assert layer_of(node("/lm_head/MatMul_Q4", "logits")) == "lm_head"
    assert layer_of(node("", "/model/layers.2/mlp/MatMul_output_0")) == "layers.2"


def test_check_says_int4_mixed_figures_are_int4s(tmp_path: Path) -> None:
    """check runs no verify, so no search: it measures int4 and says so."""
    import packager
    from conftest import onnxruntime_profile
    from tiny_decoders import make_decoder

    result = packager.check(make_decoder(tmp_path / "llama", "llama"), str(onnxruntime_profile(tmp_path)),
                            recipe="int4-mixed", measure=False, cache=False)
    assert result.recipe == "int4-mixed"
    assert any(n.startswith("int4-mixed chooses its 8-bit layers in verify") for n in result.estimate["notes"])


def test_int4_mixed_is_refused_for_models_that_do_not_generate(tiny_bert: Path) -> None:
    import packager
    from packager.errors import ExitCode, PackagerError

    with pytest.raises(PackagerError) as e:
        packager.check(tiny_bert, "rpi5", recipe="int4-mixed", measure=False, cache=False)
    assert e.value.code == ExitCode.USAGE
    assert e.value.message == ("recipe int4-mixed finds the layers of a decoder LLM that need 8 bits by what it "
                               "generates; this is a text model: use int4 or int8-dynamic instead.")


def test_a_weight_two_layers_share_goes_to_8_bits_with_both_readers(tmp_path: Path) -> None:
    """Gemma 3n's AltUp router: one weight read by MatMuls of two names (its predict and its correct). Keeping one
    of them at 8 bits takes the other along (one weight has one quantization): before, the 4-bit copy was dropped
    while the other still read it, and onnxruntime refused the model."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.1, (HIDDEN, HIDDEN)).astype(np.float32)
    table = rng.normal(0, 0.5, (VOCAB, HIDDEN)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["embed.weight", "input_ids"], ["x"], name="/embed_tokens/Gather"),
             helper.make_node("MatMul", ["x", "router"], ["a"], name="/modality_router/MatMul"),
             helper.make_node("MatMul", ["a", "router"], ["b"], name="/modality_router_1/MatMul"),
             helper.make_node("MatMul", ["b", "head"], ["logits"], name="/lm_head/MatMul")]
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", VOCAB])],
        [numpy_helper.from_array(table, "embed.weight"), numpy_helper.from_array(shared, "router"),
         numpy_helper.from_array(rng.normal(0, 0.5, (HIDDEN, VOCAB)).astype(np.float32), "head")])
    src = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), src)
    quantized(src, tmp_path / "mixed.onnx", keep=("modality_router",))
    assert bits(tmp_path / "mixed.onnx")["modality_router"] == bits(tmp_path / "mixed.onnx")["modality_router_1"] == 8
    out = logits(tmp_path / "mixed.onnx")   # onnxruntime takes the model (it refused the dropped 4-bit weight)
    assert out.shape == logits(src).shape and np.isfinite(out).all()
