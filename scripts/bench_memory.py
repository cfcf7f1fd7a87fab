#!/usr/bin/env python3
"""Estimate against measurement: packager's static memory estimate next to the peak measured in
a fresh process, for every model the project has, with the error in %.

    python scripts/bench_memory.py [--only NAME ...]

Goal: the measurement inside [low, high] and every row within 10% of it. Columns: `outside` is
the distance from the measurement to the nearer bound (0 when inside), `high` how far the high
bound sits above the measurement, both in % of the measurement. MiB throughout.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from packager.config import resolve_package_settings  # noqa: E402
from packager.context import InputSpec  # noqa: E402
from packager.pipeline import package  # noqa: E402

MiB = 2**20


def matmul_chain(folder: Path, layers: int, width: int, external: bool) -> Path:
    """A generated model whose weights dominate: `layers` fp32 MatMuls of width x width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) * 0.02).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])], inits)
    path = folder / ("chain_ext.onnx" if external else "chain.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=external, location="chain_ext.onnx.data" if external else None)
    return path


def rows(tmp: Path) -> list[tuple[str, str, str]]:
    """(label, model, recipe)"""
    (tmp / "inline").mkdir()
    (tmp / "ext").mkdir()
    chain = matmul_chain(tmp / "inline", 16, 2048, external=False)      # 256 MiB inline
    chain_ext = matmul_chain(tmp / "ext", 16, 2048, external=True)      # 256 MiB external data
    return [
        ("minilm fp32", "sample:minilm", "fp32"),
        ("minilm int8", "sample:minilm", "int8-dynamic"),
        ("silero-vad", "sample:silero-vad", "fp32"),
        ("chain 256 MiB fp32", str(chain), "fp32"),
        ("chain 256 MiB int8", str(chain), "int8-dynamic"),
        ("chain 256 MiB external", str(chain_ext), "fp32"),
    ]


DECODER_CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
import run
import onnxruntime as ort
path, context = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions(); so.intra_op_num_threads = 4
run.reset_peak()
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
load = run.peak_bytes()
feeds = {}
for i in s.get_inputs():
    if i.name.startswith("past_key_values"):
        shape = [1, i.shape[1], context, i.shape[3]]
        feeds[i.name] = np.full(shape, 0.01, np.float32)  # touched pages: zeros would stay unmapped
    elif i.name == "attention_mask":
        feeds[i.name] = np.ones((1, context + 1), np.int64)
    elif i.name == "position_ids":
        feeds[i.name] = np.array([[context]], np.int64)
    else:
        feeds[i.name] = np.array([[1]], np.int64)
run.reset_peak()
s.run(None, feeds)
print(json.dumps({"load": load, "run": run.peak_bytes(), "shapes": {k: list(v.shape) for k, v in feeds.items()}}))
"""


def tiny_decoder(folder: Path) -> Path:
    """A 4-layer Llama with random weights, exported with past key/values (the decoder path)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import optimum.exporters.onnx.model_configs  # noqa: F401
    from optimum.exporters.onnx import main_export

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, max_position_embeddings=32768)
    LlamaForCausalLM(config).save_pretrained(folder / "hf")
    main_export(str(folder / "hf"), str(folder / "onnx"), task="text-generation-with-past", opset=18,
                local_files_only=True, do_validation=False)
    return folder / "onnx" / "model.onnx"


def decoder_rows(tmp: Path, target: str) -> None:
    import json
    import subprocess

    from packager.estimate import estimate
    from packager.profiles import resolve_target

    model = tiny_decoder(tmp / "decoder")
    for context in (1024, 4096, 16384):
        child = subprocess.run([sys.executable, "-c", DECODER_CHILD, str(model), str(context), str(REPO / "targets")],
                               capture_output=True, text=True, check=True)
        m = json.loads(child.stdout.strip().splitlines()[-1])
        shapes = {k: tuple(v) for k, v in m["shapes"].items()}
        est = estimate(model, resolve_target(target), "tensor", shapes, context)
        report(f"tiny llama ctx {context // 1024}K", est.to_dict(), max(m["load"], m["run"]), m["load"], m["run"])


def report(label: str, est: dict, peak: int, load: int, run: int) -> None:
    low, high = est["low_bytes"], est["high_bytes"]
    error = 0.0 if low <= peak <= high else min(abs(peak - low), abs(peak - high)) / peak * 100
    over = (high - peak) / peak * 100
    parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:4])
    print(f"{label:<24}{low / MiB:>8.0f}{high / MiB:>8.0f}{peak / MiB:>10.0f}{load / MiB:>8.0f}{run / MiB:>8.0f}"
          f"{error:>7.1f}%{over:>+8.0f}%  {parts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="labels to run (substring match)")
    parser.add_argument("--target", default="rpi5")
    args = parser.parse_args()
    header = (f"{'model':<24}{'low':>8}{'high':>8}{'measured':>10}{'load':>8}{'run':>8}{'outside':>8}{'high':>8}"
              f"  largest parts (MiB)")
    print(f"target {args.target}; MiB")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, recipe in rows(Path(tmp)):
            if args.only and not any(o in label for o in args.only):
                continue
            settings = resolve_package_settings({"target": args.target, "recipe": recipe, "out": str(Path(tmp) / "dist"),
                                                 "budget": "16GiB"})
            ctx = package(model, settings, input_spec=InputSpec(shapes={"x": (1, 2048)}) if "chain" in label else None)
            mem = ctx.memory
            report(label, mem["estimate"], mem["measured_peak_bytes"], mem["load_peak_bytes"], mem["run_peak_bytes"])
        if not args.only or any("llama" in o for o in args.only):
            decoder_rows(Path(tmp), args.target)


if __name__ == "__main__":
    main()
