#!/usr/bin/env python3
"""Quality, size and speed of each recipe, next to optimum's own int8 preset, on this CPU.

    python scripts/bench_quality.py [--quick] [--runs N] [--threads 2] [--only MODEL ...] [--json FILE]

For each model and recipe: the file's size; the size over the physical limit (parameters x bits
/ 8: 1.00 means nothing but the weights); the accuracy against the fp32 reference, by the
model's metric; the latency on this CPU. Beside packager's recipes, the same for optimum's path:
`optimum-cli export onnx` then `optimum-cli onnxruntime quantize --arm64` (its arm64 preset).

Encoders (sample:minilm): the cosine between the fp32 reference's pooled embedding
(`sentence_embedding`, from packager's export) and the variant's, per sentence of
targets/families/text/eval.txt, mean and min. Latency: median per-sentence wall time at
--threads intra-op threads (graph optimisation "all", as the profiles run), the variants
interleaved sentence by sentence so that load from other processes hits them alike; beside it
the mean over sentences of each one's fastest run (`best`), and the same in CPU time at one thread
(`cpu@1`): on a shared machine those two move least with the load.

Adding a model: one `ModelSpec` in MODELS with its sample, recipes and a metric function
(`quality(reference, candidate, inputs) -> {"figure": ..., columns}`); a decoder's metric is
greedy-token agreement and the last token's logits cosine. Models or recipes not available
here are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from packager.context import Context  # noqa: E402
from packager.device_code import runner  # noqa: E402
from packager.errors import PackagerError  # noqa: E402
from packager.profiles import resolve_target  # noqa: E402
from packager.recipes import RECIPES  # noqa: E402
from packager.recipes.common import RecipeOptions  # noqa: E402
from packager.stage_runner import fp32_reference  # noqa: E402
from packager.stages import export, source  # noqa: E402

Feeds = list[dict[str, np.ndarray]]
BITS = {"fp32": 32, "fp16": 16, "int8-dynamic": 8, "int8": 8, "int8-static": 8, "int4": 4, "optimum-arm64": 8}
EVAL_TEXTS = REPO / "targets" / "families" / "text" / "eval.txt"


# ---------------------------------------------------------------- metrics

def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def encoder_inputs(reference: Path, io: dict[str, Any], quick: bool) -> Feeds:
    """eval.txt through the model's tokenizer, one sentence per run, as the device encodes it."""
    tokenizer = runner().load_tokenizer(reference.parent, {"tokenizer": "tokenizer.json",
                                                           "max_length": io.get("max_length", 512)})
    texts = [t.strip() for t in EVAL_TEXTS.read_text(encoding="utf-8").splitlines() if t.strip()]
    names = [i["name"] for i in io["inputs"]]
    return [runner().encode(tokenizer, t, names) for t in texts[: 16 if quick else None]]


def encoder_quality(reference: Any, candidate: Any, inputs: Feeds, output: str, io: dict[str, Any]) -> dict[str, Any]:
    """Per-input cosine of the primary output against the fp32 reference's: mean and min."""
    cos = [_cosine(reference.run([output], _feed(reference, f))[0], candidate.run([output], _feed(candidate, f))[0])
           for f in inputs]
    return {"figure": f"cos {np.mean(cos):.4f} / {min(cos):.4f}", "mean_cosine": float(np.mean(cos)),
            "min_cosine": float(min(cos))}


DECODER_TOKENS = 16


def decoder_inputs(reference: Path, io: dict[str, Any], quick: bool) -> Feeds:
    """The family's prompts as the first generation step takes them (prompt ids, empty KV cache):
    the latency columns time that prefill step."""
    rt = runner()
    tokenizer = rt.load_tokenizer(reference.parent.parent,
                                  {**io, "tokenizer": f"{reference.parent.name}/tokenizer.json"})
    decoder = rt.Decoder(None, io)
    prompts_file = REPO / "targets" / "families" / "text" / "prompts.txt"
    prompts = [t.strip() for t in prompts_file.read_text("utf-8").splitlines() if t.strip()]
    return [decoder.feeds(tokenizer.encode(p).ids, decoder.empty_past(), 0) for p in prompts]


def decoder_quality(reference: Any, candidate: Any, inputs: Feeds, output: str, io: dict[str, Any]) -> dict[str, Any]:
    """run.py's own measure (verify's and the smoke test's): the fp32 model's greedy continuations,
    teacher-forced token agreement and first-prediction logits cosine."""
    rt = runner()
    prompts = [[int(t) for t in f["input_ids"][0]] for f in inputs]
    expected = rt.reference_generations(rt.Decoder(reference, io), prompts, DECODER_TOKENS)
    r = rt.compare_decoder(expected, rt.Decoder(candidate, io))
    return {"figure": f"tok {r['token_agreement']:.3f} / cos {r['min_logits_cosine']:.4f}",
            "token_agreement": r["token_agreement"], "min_logits_cosine": r["min_logits_cosine"]}


# ---------------------------------------------------------------- models

@dataclass(frozen=True)
class ModelSpec:
    name: str
    model: str                                     # what `packager package` takes
    recipes: tuple[str, ...]
    inputs: Callable[[Path, dict[str, Any], bool], Feeds]
    quality: Callable[[Any, Any, Feeds, str, dict[str, Any]], dict[str, Any]]
    metric: str                                    # the figure's meaning, for the table's header
    optimum_task: str | None = None                # optimum-cli export --task; None: no optimum row


MODELS = [
    ModelSpec("minilm", "sample:minilm", ("fp32", "int8-dynamic", "fp16"), encoder_inputs, encoder_quality,
              "cosine of sentence_embedding vs fp32 over eval.txt, mean / min", optimum_task="feature-extraction"),
    ModelSpec("tiny-llama", "sample:tiny-llama", ("fp32", "int8-dynamic", "int4", "fp16"), decoder_inputs,
              decoder_quality, f"teacher-forced agreement with fp32's {DECODER_TOKENS} greedy tokens per prompt / "
              "min first-token logits cosine; latency: the prompt's prefill step",
              optimum_task="text-generation-with-past"),
]


# ---------------------------------------------------------------- variants

@dataclass
class Variant:
    label: str
    bits: int
    path: Path
    note: str = ""


def export_reference(spec: ModelSpec, work: Path) -> Context:
    """packager's own export (source and export stages) of the model: the fp32 reference."""
    ctx = Context(spec.model, resolve_target("rpi5"), "fp32", work, work / "out")
    source.run(ctx)
    export.run(ctx)
    fp32_reference(ctx)   # rpi5's decoders are built by onnxruntime-genai, whose path makes no export of its own
    assert ctx.reference_io is not None
    ctx.io = ctx.reference_io
    return ctx


def run_recipe(name: str, src: Path, dst: Path) -> Any:
    return RECIPES[name](src, dst, RecipeOptions(int4=resolve_target("rpi5").int4))


def optimum_arm64(spec: ModelSpec, ctx: Context, work: Path) -> Variant:
    """optimum's path as its CLI gives it: its own export, then its arm64 int8 preset."""
    assert ctx.source is not None and spec.optimum_task
    exported, quantized = work / "optimum-export", work / "optimum-arm64"
    cli = shutil.which("optimum-cli") or str(Path(sys.executable).parent / "optimum-cli")
    for cmd in ([cli, "export", "onnx", "--model", str(ctx.source.path), "--task", spec.optimum_task, str(exported)],
                [cli, "onnxruntime", "quantize", "--onnx_model", str(exported), "--arm64", "-o", str(quantized)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:3])} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    (path,) = quantized.glob("*.onnx")
    return Variant("optimum-cli --arm64", BITS["optimum-arm64"], path, "per-tensor weights")


# ---------------------------------------------------------------- measures

def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feed(session: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feed[i.name] for i in session.get_inputs()}


def model_bytes(path: Path) -> int:
    """The model file and the external data files beside it."""
    data = [p for p in path.parent.iterdir() if p.is_file() and p != path and p.name.startswith(path.stem)
            and p.suffix not in (".onnx", ".json", ".txt")]
    return path.stat().st_size + sum(p.stat().st_size for p in data)


def parameter_count(path: Path) -> int:
    """Elements of the float initializers: the weights a recipe can shrink."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)


def latencies(variants: list[Variant], inputs: Feeds, output: str, threads: int, runs: int,
              clock: str) -> dict[str, tuple[float, float]]:
    """Each variant's latency (ms): the median over inputs x runs, and the mean over inputs of each
    input's fastest run (what the run takes when nothing else competes for the cores). The variants
    are interleaved input by input, in rotating order."""
    tick = time.perf_counter if clock == "wall" else time.thread_time
    sessions = {v.label: _session(v.path, threads) for v in variants}
    feeds = {label: [_feed(s, f) for f in inputs] for label, s in sessions.items()}
    for label, s in sessions.items():
        for f in feeds[label][:4]:
            s.run([output], f)
    times = {label: np.zeros((runs, len(inputs))) for label in sessions}
    order = list(sessions)
    for run in range(runs):
        for i in range(len(inputs)):
            order = order[1:] + order[:1]
            for label in order:
                start = tick()
                sessions[label].run([output], feeds[label][i])
                times[label][run, i] = tick() - start
    return {label: (float(np.median(t)) * 1e3, float(t.min(axis=0).mean()) * 1e3) for label, t in times.items()}


# ---------------------------------------------------------------- the table

def bench(spec: ModelSpec, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    try:
        ctx = export_reference(spec, work)
    except PackagerError as e:
        print(f"note: {spec.name} skipped: {e.message}")
        return []
    assert ctx.reference_model is not None
    reference_path = ctx.reference_model
    io = ctx.io.to_dict()   # the record as JSON, which the specs' functions take
    output = io["primary_outputs"][0]
    params = parameter_count(reference_path)
    variants: list[Variant] = []
    for name in spec.recipes:
        if name not in RECIPES:
            print(f"note: {spec.name}: recipe {name} is not in this packager; skipped")
            continue
        folder = work / name
        folder.mkdir()
        result = run_recipe(name, reference_path, folder / "model.onnx")
        fusion, smoothing = result.params.get("fusion", {}), result.params.get("smoothing", {})
        note = "; ".join(([f"{fusion['fused']['Attention']} attention blocks fused"] if fusion.get("applied") else [])
                         + ([f"{smoothing['channels_smoothed']} outlier channels of {smoothing['inputs_smoothed']} "
                             "inputs smoothed"] if smoothing.get("applied") else []))
        variants.append(Variant(name, BITS.get(name, 32), folder / "model.onnx", note))
    if spec.optimum_task and not args.no_optimum:
        try:
            variants.append(optimum_arm64(spec, ctx, work))
        except (RuntimeError, ValueError, OSError) as e:
            print(f"note: {spec.name}: optimum's arm64 preset skipped ({e})")

    inputs = spec.inputs(reference_path, io, args.quick)
    reference = _session(reference_path, args.threads)
    rows = []
    for v in variants:
        size = model_bytes(v.path)
        rows.append({"model": spec.name, "variant": v.label, "mb": size / 1e6, "physical": size / (params * v.bits / 8),
                     **spec.quality(reference, _session(v.path, args.threads), inputs, output, io), "note": v.note})
    wall = latencies(variants, inputs, output, args.threads, args.runs, "wall")
    cpu = latencies(variants, inputs, output, 1, args.runs, "cpu") if not args.quick else {}
    for row in rows:
        row["ms"], row["best_ms"] = wall[row["variant"]]
        row["cpu_ms_1t"] = cpu[row["variant"]][1] if cpu else None
    print(f"\n{spec.name}: {params / 1e6:.1f}M parameters; {spec.metric}; {len(inputs)} inputs x {args.runs} runs")
    return rows


def print_table(rows: list[dict[str, Any]], threads: int) -> None:
    header = (f"{'model':8} {'variant':20} {'MB':>6} {'x phys':>6} {'accuracy':>21} {f'ms@{threads}':>7} "
              f"{f'best@{threads}':>7} {'cpu@1':>6}  note")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        cpu = f"{r['cpu_ms_1t']:6.2f}" if r.get("cpu_ms_1t") is not None else f"{'-':>6}"
        print(f"{r['model']:8} {r['variant']:20} {r['mb']:6.2f} {r['physical']:6.2f} {r['figure']:>21} {r['ms']:7.2f} "
              f"{r['best_ms']:7.2f} {cpu}  {r['note']}")
    print(f"\nms@{threads}: median latency per input over all runs, {threads} threads; best@{threads}: mean over "
          "inputs of the fastest run; cpu@1: the same best, in CPU time at one thread (least disturbed by other "
          "processes).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 inputs, one run, no 1-thread CPU-time column")
    parser.add_argument("--runs", type=int, default=None,
                        help="passes over the inputs for latency (default 5; 1 quick)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for the latency column")
    parser.add_argument("--only", nargs="*", default=None, help="models to run (default: all)")
    parser.add_argument("--no-optimum", action="store_true", help="leave out optimum's arm64 preset")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 5)
    rows: list[dict[str, Any]] = []
    for spec in MODELS:
        if args.only and spec.name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
            rows += bench(spec, args, Path(tmp))
    if not rows:
        print("nothing measured")
        return 1
    print_table(rows, args.threads)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
