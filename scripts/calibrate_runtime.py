#!/usr/bin/env python3
"""Measure the runtime's own resident cost, the `runtime_base` of packager's memory estimate.

Each figure is the kernel's high-water mark (VmHWM) of a fresh process that imports numpy and
onnxruntime and creates a session over a one-node model, with 1 and with 4 intra-op threads,
and again with `tokenizers` imported (text models load it on the device). Prints a table and,
with --write, stores the figures in profiles/calibration/runtime_base.toml under this
onnxruntime version.

    python scripts/calibrate_runtime.py [--write]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = REPO / "profiles" / "calibration" / "runtime_base.toml"
REPEATS = 3

CHILD = r"""
import sys, numpy, onnxruntime as ort
if sys.argv[3] == "1":
    import tokenizers
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[2])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
s.run(None, {"x": numpy.zeros((1, 4, 16), numpy.float32)})
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def tiny_model(folder: Path) -> Path:
    """One Relu: the runtime and an empty session."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def mixed_model(folder: Path) -> Path:
    """The kernels real models use (MatMul, int8 MatMul, Conv, LSTM, LayerNorm, Softmax, If) with
    weights of a few KB: what a real session costs beyond its weights and activations."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)  # noqa: E731
    i8 = numpy_helper.from_array(rng.integers(-8, 8, (16, 16)).astype(np.int8), "w8")
    branch = lambda name: helper.make_graph([helper.make_node("Identity", ["s"], [f"{name}_o"])], name, [],  # noqa: E731
                                            [helper.make_tensor_value_info(f"{name}_o", TensorProto.FLOAT, [1, 4, 16])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("LayerNormalization", ["m", "g", "b"], ["n"], axis=-1),
        helper.make_node("Softmax", ["n"], ["s"], axis=-1),
        helper.make_node("DynamicQuantizeLinear", ["s"], ["q", "qs", "qz"]),
        helper.make_node("MatMulInteger", ["q", "w8", "qz"], ["qi"]),
        helper.make_node("Cast", ["qi"], ["qf"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["qf", "cw"], ["c"], pads=[1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["t", "lw", "lr"], ["ly"], hidden_size=16),
        helper.make_node("ReduceSum", ["ly"], ["r"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Greater", ["r", "zero"], ["cond0"]),
        helper.make_node("ReduceMin", ["cond0f"], ["condr"], keepdims=0),
        helper.make_node("Cast", ["cond0"], ["cond0f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["condr"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else")),
    ]
    nodes = nodes[:12] + [nodes[13], nodes[12], nodes[14], nodes[15]]  # keep topological order
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])],
        [w("w", 16, 16), w("g", 16), w("b", 16), i8, w("cw", 4, 4, 3), w("lw", 1, 64, 16), w("lr", 1, 64, 16)])
    path = folder / "mixed.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def hwm(model: Path, threads: int, tokenizers: bool) -> int:
    runs = [int(subprocess.run([sys.executable, "-c", CHILD, str(model), str(threads), "1" if tokenizers else "0"],
                               check=True, capture_output=True, text=True).stdout) for _ in range(REPEATS)]
    return min(runs)  # the quietest run: page-cache noise only ever adds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the figures in the calibration file")
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp))
        one, four = hwm(model, 1, False), hwm(model, 4, False)
        with_tok = hwm(model, 1, True)
        mixed = hwm(mixed_model(Path(tmp)), 4, False)
    per_thread = max(0, (four - one) // 3)
    base = one - per_thread
    tokenizers = max(0, with_tok - one)
    session = max(0, mixed - four)
    M = 2**20
    print(f"{'onnxruntime':<14}{'base MiB':>10}{'per thread':>12}{'session':>10}{'tokenizers':>12}   measured on")
    print(f"{onnxruntime.__version__:<14}{base / M:>10.1f}{per_thread / M:>12.2f}{session / M:>10.1f}{tokenizers / M:>12.1f}   "
          f"{platform.machine()} Python {platform.python_version()}")
    if args.write:
        import tomllib

        data = tomllib.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else {"runtime": {}}
        data["runtime"][onnxruntime.__version__] = {
            "base_bytes": base, "per_thread_bytes": per_thread, "session_bytes": session, "tokenizers_bytes": tokenizers,
            "measured_on": f"{platform.machine()} Python {platform.python_version()}",
        }
        lines = ["# The runtime's own resident cost, per onnxruntime version: written by",
                 "# `python scripts/calibrate_runtime.py --write`, which takes the kernel's high-water mark",
                 "# (VmHWM) of fresh processes that import numpy and onnxruntime and run a one-node model",
                 "# with 1 and 4 intra-op threads, and with `tokenizers` imported; session_bytes is what a",
                 "# session over the usual kernels (MatMul, int8 MatMul, Conv, LSTM, If ...) adds beyond",
                 "# its weights, from a model with weights of a few KB. Measured on the build host:",
                 "# an aarch64 device's figure differs by its page size and libraries; its smoke test measures it.", ""]
        for version, entry in sorted(data["runtime"].items()):
            lines.append(f'[runtime."{version}"]')
            lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in entry.items()]
            lines.append("")
        CALIBRATION.write_text("\n".join(lines))
        print(f"wrote {CALIBRATION.relative_to(REPO)}")


if __name__ == "__main__":
    main()
