"""Small ONNX models with the traits of other exporters' graphs (issue 21): Ultralytics metadata, paddle2onnx's
open dimension names and weights kept as Constant nodes, tf2onnx's channels-last images, weights behind an
Identity or a Cast. Built with onnx.helper; nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDE = 32
OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None,
          producer: str = "") -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def stride_model(path: Path, dims: list[int | str], metadata: dict[str, str] | None = None,
                 producer: str = "") -> Path:
    """An image model with a stride of 32, [N,3,H,W]: pooled by 32, upsampled by 32 and added to its input,
    which only lines up when H and W are multiples of 32 (at 16 the pooled map is empty)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["n", "c", "h", "w"])
    scales = numpy_helper.from_array(np.array([1, 1, STRIDE, STRIDE], np.float32), "scales")
    nodes = [
        helper.make_node("MaxPool", ["images"], ["pooled"], kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE]),
        helper.make_node("Resize", ["pooled", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Add", ["images", "up"], ["output0"]),
    ]
    return _save(helper.make_graph(nodes, "stride32", [x], [y], [scales]), path, metadata, producer)


def fixed_height_model(path: Path, height: int = 48) -> Path:
    """A text-line recognizer's trait: open height and width, but it only runs at one height (its input is
    added to a [1,3,height,1] bias), which no size packager guesses."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3, "?",
                                                                "p2o.DynamicDimension.1"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    bias = numpy_helper.from_array(np.zeros((1, 3, height, 1), np.float32), "bias")
    return _save(helper.make_graph([helper.make_node("Add", ["x", "bias"], ["y"])], "fixed_h", [x], [y], [bias]),
                 path)


def conv_behind(path: Path, via: str, channels: int = 16) -> Path:
    """A small convolution network, paddle2onnx-style: open dims named p2o.DynamicDimension.N, and each Conv's
    weight reached through `via`: "Identity" (of an initializer), "Cast" (of an fp16 initializer) or
    "Constant" (the weight and bias in Constant nodes, no initializer at all)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3,
                                                                "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    nodes, inits, previous, width = [], [], "x", 3
    for i in range(3):
        weight = rng.standard_normal((channels, width, 3, 3)).astype(np.float32) * 0.2
        name = f"conv2d_{i}.w_0"
        if via == "Constant":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(weight, f"{name}_c")))
        elif via == "Cast":
            inits.append(numpy_helper.from_array(weight.astype(np.float16), f"{name}_fp16"))
            nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
        else:
            inits.append(numpy_helper.from_array(weight, f"{name}_raw"))
            nodes.append(helper.make_node("Identity", [f"{name}_raw"], [name]))
        # A bias, as paddle2onnx writes one: onnxruntime's dynamic Conv quantizer refuses a computed weight with it.
        bias = numpy_helper.from_array(np.zeros(channels, np.float32), f"conv2d_{i}.b_0")
        if via == "Constant":
            nodes.append(helper.make_node("Constant", [], [bias.name], value=bias))
        else:
            inits.append(bias)
        out = "y" if i == 2 else f"relu_{i}"
        nodes += [helper.make_node("Conv", [previous, name, bias.name], [f"conv_{i}"], pads=[1, 1, 1, 1],
                                   strides=[2, 2]),
                  helper.make_node("Relu", [f"conv_{i}"], [out])]
        previous, width = out, channels
    return _save(helper.make_graph(nodes, "paddle_like", [x], [y], inits), path, producer="PaddlePaddle")
