#!/usr/bin/env python3
"""Run the packaged model on the device.

Depends on what the device has: onnxruntime, numpy, the standard library (and `tokenizers`
for text models); Python 3.10 to 3.13. It never imports packager.

    python run.py "some sentence" ["another one" ...]   text models: prints the output as JSON
    python run.py --inputs feeds.npz [--output out.npz]  any model: runs one set of inputs
    python run.py --measure                             peak resident memory of load and run

Importable too (smoke_test.py does):

    import run
    runner = run.load()                 # the bundle this file sits in
    runner.run_texts(["hello"])         # {output name: array}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
SAMPLE_INPUTS = "samples/inputs.npz"
SAMPLE_EXPECTED = "samples/expected.npz"
SAMPLE_TEXTS = "samples/texts.json"

_GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                 "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def sha256_file(path: Path) -> str:
    """The checksum SHA256SUMS and the manifest record for each bundle file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: Path = HERE) -> dict[str, Any]:
    with open(bundle / MANIFEST, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------- session

def choose_providers(wanted: list[str], available: list[str]) -> tuple[list[str], list[str]]:
    """The wanted providers this runtime has, in priority order, and those it lacks."""
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, missing


def session_options(spec: dict[str, Any], log_level: int = 3) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(spec["intra_op_threads"])
    so.inter_op_num_threads = int(spec["inter_op_threads"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[spec["graph_optimization"]])
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if spec["execution_mode"] == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.enable_cpu_mem_arena = bool(spec["cpu_mem_arena"])
    so.enable_mem_pattern = bool(spec["mem_pattern"])
    so.log_severity_level = log_level
    return so


def provider_options(chosen: list[str], options: dict[str, dict[str, Any]], cache_dir: Path) -> list[dict[str, str]]:
    result = []
    for name in chosen:
        opts = {k: str(v) for k, v in options.get(name, {}).items()}
        if name == "TensorrtExecutionProvider" and opts.get("trt_engine_cache_enable") == "True":
            # Engines are built on first load and reused; the bundle may sit on a read-only path.
            opts.setdefault("trt_engine_cache_path", str(cache_dir / "trt-engines"))
        result.append(opts)
    return result


class Runner:
    """The packaged model in an onnxruntime session, with the bundle's pre-processing."""

    def __init__(self, bundle: Path, runtime: dict[str, Any], log_level: int = 3) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        self.runtime = runtime
        self.io = runtime["io"]
        self.providers, self.missing_providers = choose_providers(
            list(runtime["providers"]), ort.get_available_providers())
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "packager-bundle"
        self.session = ort.InferenceSession(
            str(bundle / runtime["model"]),
            sess_options=session_options(runtime["session"], log_level),
            providers=self.providers,
            provider_options=provider_options(self.providers, runtime.get("provider_options", {}), cache),
        )
        self.tokenizer = load_tokenizer(bundle, self.io) if self.io["kind"] == "text" else None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))

    def encode(self, text: str) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            raise ValueError("this bundle's model takes tensors, not text: use --inputs FILE.npz")
        return encode(self.tokenizer, text, self.input_names)

    def run_texts(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        return [self.run(self.encode(t)) for t in texts]


def encode(tokenizer: Any, text: str, input_names: list[str]) -> dict[str, np.ndarray]:
    """Tokenize one text into the model's inputs (batch of one)."""
    enc = tokenizer.encode(text)
    columns = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
    return {name: np.asarray([columns[name]], dtype=np.int64) for name in input_names}


def load_tokenizer(bundle: Path, io: dict[str, Any]) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise RuntimeError("this bundle's model takes text and needs the `tokenizers` package: "
                           "pip install -r requirements.txt") from None
    tok = Tokenizer.from_file(str(bundle / io["tokenizer"]))
    tok.no_padding()
    tok.enable_truncation(max_length=int(io["max_length"]))
    return tok


def load(bundle: Path = HERE) -> Runner:
    return Runner(bundle, read_manifest(bundle)["runtime"])


# ---------------------------------------------------------------- samples and comparison

def load_samples(bundle: Path = HERE, name: str = SAMPLE_INPUTS) -> list[dict[str, np.ndarray]]:
    """Per-sample feeds (or outputs) stored as '<index>/<tensor name>' keys of an .npz."""
    samples: dict[int, dict[str, np.ndarray]] = {}
    with np.load(bundle / name, allow_pickle=False) as npz:
        for key in npz.files:
            index, tensor = key.split("/", 1)
            samples.setdefault(int(index), {})[tensor] = npz[key]
    return [samples[i] for i in sorted(samples)]


def save_samples(path: Path, samples: list[dict[str, np.ndarray]]) -> None:
    arrays = {f"{i}/{name}": value for i, sample in enumerate(samples) for name, value in sample.items()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def compare(expected: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]],
            outputs: list[str]) -> dict[str, Any]:
    """Cosine similarity and max-abs difference of `actual` against `expected`, per output.

    Each sample's output is compared on its own when it has at least 8 values (an embedding,
    a hidden state); smaller outputs (a probability, a logit pair) are concatenated across the
    samples first, since the cosine of two 1-element vectors says only whether the signs agree.
    Non-float outputs count the fraction of equal elements.
    """
    per_output = {}
    for name in outputs:
        exp = [np.asarray(s[name]).ravel() for s in expected]
        act = [np.asarray(s[name]).ravel() for s in actual]
        if any(e.shape != a.shape for e, a in zip(exp, act)):
            per_output[name] = {"cosine": 0.0, "max_abs_diff": float("inf"), "note": "shape differs"}
            continue
        if not np.issubdtype(exp[0].dtype, np.floating):
            agree = float(np.mean(np.concatenate([e == a for e, a in zip(exp, act)])))
            per_output[name] = {"cosine": agree, "max_abs_diff": 0.0 if agree == 1.0 else float("inf")}
            continue
        groups = list(zip(exp, act)) if exp[0].size >= 8 else [(np.concatenate(exp), np.concatenate(act))]
        cosines = [_cosine(e.astype(np.float64), a.astype(np.float64)) for e, a in groups]
        diff = max(float(np.max(np.abs(e.astype(np.float64) - a))) if e.size else 0.0 for e, a in zip(exp, act))
        per_output[name] = {"cosine": min(cosines), "max_abs_diff": diff}
    return {
        "min_cosine": min(m["cosine"] for m in per_output.values()),
        "max_abs_diff": max(m["max_abs_diff"] for m in per_output.values()),
        "outputs": per_output,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    if not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# ---------------------------------------------------------------- memory

def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """Peak resident memory of this process since the last reset_peak()."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # ru_maxrss: kilobytes on Linux, bytes on macOS; never reset

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def rss_bytes() -> int:
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else peak_bytes()


def measure(bundle: Path = HERE) -> dict[str, Any]:
    """Load the model and run the bundle's samples, measuring peak resident memory of each phase.

    Call it in a fresh process: the peak covers everything resident, the interpreter and the
    runtime included, as it will be on the device.
    """
    import onnxruntime  # noqa: F401  (the runtime's own import is part of the baseline)

    baseline = rss_bytes()
    resettable = reset_peak()
    runner = load(bundle)
    load_peak = peak_bytes()
    if runner.io["kind"] == "text":
        texts = json.loads((bundle / SAMPLE_TEXTS).read_text(encoding="utf-8"))
        feeds = [runner.encode(t) for t in texts]
    else:
        feeds = load_samples(bundle)
    resettable = reset_peak() and resettable
    for f in feeds:
        runner.run(f)
    run_peak = peak_bytes()
    return {
        "baseline_bytes": baseline,
        "load_peak_bytes": load_peak,
        "run_peak_bytes": run_peak,
        "peak_bytes": max(load_peak, run_peak),
        "method": "VmHWM after clear_refs" if resettable else "ru_maxrss (process lifetime)",
        "providers": runner.providers,
        "missing_providers": runner.missing_providers,
        "host": f"{platform.machine()} Python {platform.python_version()}",
    }


# ---------------------------------------------------------------- CLI

def read_inputs(path: Path, names: list[str]) -> list[dict[str, np.ndarray]]:
    """One set of inputs (an .npz with one array per model input), or several in the samples'
    '<index>/<name>' layout (samples/inputs.npz)."""
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.files)
    if keys and all("/" in k for k in keys):
        feeds = load_samples(path.parent, path.name)
    else:
        with np.load(path, allow_pickle=False) as npz:
            feeds = [{k: npz[k] for k in keys}]
    for feed in feeds:
        if set(feed) != set(names):
            raise ValueError(f"{path} must hold one array per model input ({', '.join(names)}); "
                             f"it holds {', '.join(sorted(feed)) or 'nothing'}")
    return feeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this bundle's model.")
    parser.add_argument("texts", nargs="*", help="texts to run (text models)")
    parser.add_argument("--inputs", type=Path, help=".npz of input tensors, one per model input")
    parser.add_argument("--output", type=Path, help="write the outputs to this .npz instead of printing them")
    parser.add_argument("--measure", action="store_true", help="print peak memory of load and run as JSON")
    parser.add_argument("--bundle", type=Path, default=HERE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not (args.measure or args.inputs or args.texts):
        parser.error("give texts to run, or --inputs FILE.npz")
    try:
        if args.measure:
            print(json.dumps(measure(args.bundle)))
            return 0
        runner = load(args.bundle)
        for p in runner.missing_providers:
            print(f"note: {p} is not available here; running on {', '.join(runner.providers)}", file=sys.stderr)
        results = [runner.run(f) for f in read_inputs(args.inputs, runner.input_names)] if args.inputs \
            else runner.run_texts(args.texts)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        save_samples(args.output, results)
        return 0
    shown = runner.io["primary_outputs"]
    print(json.dumps([{k: r[k].tolist() for k in shown} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
