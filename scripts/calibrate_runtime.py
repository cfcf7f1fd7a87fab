#!/usr/bin/env python3
"""Measure the runtime's own resident cost: the fixed parts of packager's memory estimate.

Every figure is a peak from the bundle's own measurement, `run.py --measure` (targets/run.py:
the kernel's high-water mark of a fresh process that imports the runner, loads the model with
the given session options, and runs its samples), over small generated bundles, so the
calibration and the fit stage measure the same way. Each is the quietest of a few runs (noise
only ever adds).

    base_bytes / per_thread_bytes   a one-Relu tensor bundle at 1 and 4 intra-op threads: the
                                    interpreter, numpy, the runner, onnxruntime and a session
    session_bytes                   a session over the usual kernels (MatMul, int8 MatMul, Conv,
                                    LSTM, If ...) with weights of a few KB, beyond the Relu's
    node_bytes                      each node of a graph: a chain of elementwise nodes, beyond
                                    the Relu's, per node (kernel, node and arena bookkeeping)
    tokenizers_bytes                a text bundle with a minimal tokenizer, beyond the tensor one
                                    (the `tokenizers` import and an empty tokenizer)
    token_bytes / merge_bytes       text bundles with 32K-token WordPiece (tokens only) and BPE
                                    (tokens and merges) tokenizers, beyond the minimal one: per
                                    token and per merge, as the Rust tokenizer holds them (its
                                    JSON parse included)

With --write, stores them in profiles/calibration/runtime_base.toml under this onnxruntime version.

    python scripts/calibrate_runtime.py [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = REPO / "profiles" / "calibration" / "runtime_base.toml"
REPEATS = 3
CHAIN_NODES = 2000
BIG_VOCAB = 32768
SESSION = {"intra_op_threads": 4, "inter_op_threads": 1, "graph_optimization": "all", "execution_mode": "sequential",
           "cpu_mem_arena": True, "mem_pattern": True}


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] = ()) -> Any:
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def relu_model() -> Any:
    """One Relu: the runtime and an empty session."""
    from onnx import TensorProto, helper

    return _model([helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])])


def chain_model(nodes: int) -> Any:
    """`nodes` elementwise nodes in a row on a [1, 4, 16] tensor: the per-node cost, weights and activations nil."""
    from onnx import TensorProto, helper

    ops, x, made = ("Relu", "Sigmoid", "Neg", "Abs"), "x", []
    for i in range(nodes):
        made.append(helper.make_node(ops[i % len(ops)], [x], [f"h{i}"]))
        x = f"h{i}"
    return _model(made, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 16])])


def mixed_model() -> Any:
    """The kernels real models use (MatMul, int8 MatMul, Conv, LSTM, LayerNorm, Softmax, If) with
    weights of a few KB: what a real session costs beyond its weights and activations."""
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
        helper.make_node("Cast", ["cond0"], ["cond0f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMin", ["cond0f"], ["condr"], keepdims=0),
        helper.make_node("Cast", ["condr"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else")),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])],
                  [w("w", 16, 16), w("g", 16), w("b", 16), i8, w("cw", 4, 4, 3), w("lw", 1, 64, 16),
                   w("lr", 1, 64, 16)])


def ids_model() -> Any:
    """input_ids -> Cast: a text model with nothing in it but its tokenizer."""
    from onnx import TensorProto, helper

    return _model([helper.make_node("Cast", ["input_ids"], ["y"], to=TensorProto.FLOAT)],
                  [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "sequence"])])


def tokenizer_file(path: Path, vocab_size: int, kind: str) -> None:
    """A tokenizer.json of `vocab_size` tokens: byte-level BPE (each token past the 256 bytes a merge
    of two earlier ones, as a trained one's are) or WordPiece (the same tokens, no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(sorted(alphabet))}
    tokens, merges = list(vocab), []
    rng = np.random.default_rng(0)
    while len(vocab) < vocab_size:
        a, b = tokens[rng.integers(len(tokens))], tokens[rng.integers(min(len(tokens), 4096))]
        if len(a) + len(b) > 16 or a + b in vocab:
            continue
        vocab[a + b] = len(vocab)
        tokens.append(a + b)
        merges.append((a, b))
    if kind == "bpe":
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    else:
        tok = Tokenizer(models.WordPiece(vocab=vocab | {"[UNK]": len(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))


def bundle(folder: Path, model: Any, threads: int = 4, tokenizer: Path | None = None) -> Path:
    """A bundle as run.py --measure reads it: manifest runtime section, model, samples, run.py."""
    import onnx

    sys.path.insert(0, str(REPO))
    from packager.device_code import runner

    (folder / "model").mkdir(parents=True)
    (folder / "samples").mkdir()
    onnx.save(model, folder / "model" / "model.onnx")
    def tensor(value: Any) -> dict[str, Any]:
        """runtime.io's record of a graph input or output: name, numpy dtype name, shape (a name where open)."""
        t = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": value.name, "dtype": dtype,
                "shape": [d.dim_param or d.dim_value or None for d in t.shape.dim]}

    inputs = [tensor(i) for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    io: dict[str, Any] = {"kind": "tensor", "inputs": inputs, "outputs": [tensor(o) for o in model.graph.output],
                          "checked_outputs": outputs, "primary_outputs": outputs}
    if tokenizer is not None:
        shutil.copyfile(tokenizer, folder / "model" / "tokenizer.json")
        io |= {"kind": "text", "tokenizer": "model/tokenizer.json", "max_length": 128}
        (folder / "samples" / "texts.json").write_text(json.dumps(["The quick brown fox jumps over the lazy dog."]))
    else:
        sample = {"input_ids": np.ones((1, 12), np.int64)} if inputs[0]["name"] == "input_ids" \
            else {"x": np.zeros((1, 4, 16), np.float32)}
        runner().save_samples(folder / "samples" / "inputs.npz", [sample])
    import onnxruntime

    runtime = {"model": "model/model.onnx", "package": "onnxruntime", "version": onnxruntime.__version__,
               "providers": ["CPUExecutionProvider"], "provider_options": {},
               "session": SESSION | {"intra_op_threads": threads}, "io": io}
    (folder / "manifest.json").write_text(json.dumps({"runtime": runtime}), encoding="utf-8")
    shutil.copyfile(REPO / "targets" / "run.py", folder / "run.py")
    shutil.copytree(REPO / "targets" / "runtime", folder / "runtime")   # the package run.py loads
    return folder


def peak(folder: Path) -> int:
    runs = [json.loads(subprocess.run([sys.executable, str(folder / "run.py"), "--measure"], check=True,
                                      capture_output=True, text=True).stdout)["peak_bytes"] for _ in range(REPEATS)]
    return min(runs)  # the quietest run: page-cache noise only ever adds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the figures in the calibration file")
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        tokenizer_file(t / "small.json", 256, "wordpiece")
        tokenizer_file(t / "bpe.json", BIG_VOCAB, "bpe")
        tokenizer_file(t / "wordpiece.json", BIG_VOCAB, "wordpiece")
        one = peak(bundle(t / "relu1", relu_model(), threads=1))
        four = peak(bundle(t / "relu4", relu_model()))
        mixed = peak(bundle(t / "mixed", mixed_model()))
        chain = peak(bundle(t / "chain", chain_model(CHAIN_NODES)))
        ids = peak(bundle(t / "ids", ids_model()))
        small = peak(bundle(t / "small", ids_model(), tokenizer=t / "small.json"))
        bpe = peak(bundle(t / "bpe", ids_model(), tokenizer=t / "bpe.json"))
        wordpiece = peak(bundle(t / "wordpiece", ids_model(), tokenizer=t / "wordpiece.json"))
    per_thread = max(0, (four - one) // 3)
    entry = {
        "base_bytes": one - per_thread,
        "per_thread_bytes": per_thread,
        "session_bytes": max(0, mixed - four),
        "node_bytes": max(0, (chain - four) // (CHAIN_NODES - 1)),
        "tokenizers_bytes": max(0, small - ids),
        # WordPiece: BIG_VOCAB tokens more than the small one; BPE: the same and BIG_VOCAB - 256 merges.
        "token_bytes": max(0, wordpiece - small) // (BIG_VOCAB - 256),
        "merge_bytes": max(0, bpe - wordpiece) // (BIG_VOCAB - 256),
        "measured_on": f"{platform.machine()} Python {platform.python_version()}",
    }
    M = 2**20
    print(f"{'onnxruntime':<14}{'base MiB':>10}{'per thread':>12}{'session':>10}{'per node':>10}{'tokenizers':>12}"
          f"{'per token':>11}{'per merge':>11}   measured on")
    print(f"{onnxruntime.__version__:<14}{entry['base_bytes'] / M:>10.1f}{per_thread / M:>12.2f}"
          f"{entry['session_bytes'] / M:>10.1f}{entry['node_bytes']:>9d}B{entry['tokenizers_bytes'] / M:>12.1f}"
          f"{entry['token_bytes']:>10d}B{entry['merge_bytes']:>10d}B   {entry['measured_on']}")
    if args.write:
        import tomllib

        data = tomllib.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else {"runtime": {}}
        data["runtime"][onnxruntime.__version__] = entry
        lines = ["# The runtime's own resident cost, per onnxruntime version: written by",
                 "# `python scripts/calibrate_runtime.py --write` (its docstring says how each figure is",
                 "# measured): peaks of the bundle's own `run.py --measure` over small generated bundles,",
                 "# so the estimate's fixed parts and the fit stage's measurement count the same things.",
                 "# Measured on the build host: an aarch64 device's figures differ by its page size and",
                 "# libraries; its smoke test measures the real peak.", ""]
        for version, values in sorted(data["runtime"].items()):
            lines.append(f'[runtime."{version}"]')
            lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in values.items()]
            lines.append("")
        CALIBRATION.write_text("\n".join(lines))
        print(f"wrote {CALIBRATION.relative_to(REPO)}")


if __name__ == "__main__":
    main()
