#!/usr/bin/env python3
"""Scale: a 1B-class decoder (the Llama 3.2 1B shape, random weights) packaged for `phone` at int4,
with packager's wall time and peak memory per stage, beside optimum-cli's export plus onnxruntime's
int4 quantizer on the same model.

    python scripts/bench_scale.py [--skip-optimum] [--skip-packager] [--no-smoke] [--keep] [--dir DIR]
                                  [--generate-only]

The model is generated once (fixed seed, fp16 safetensors: 2.5 GB on disk, half of fp32; the export
upcasts to fp32 as it loads) into $PACKAGER_BENCH_DIR/llama-3.2-1b-shape (default
~/.cache/packager/bench) and reused. packager runs as a user runs it, `packager package MODEL
--target PROFILE --no-cache --report DIR`, in a child process; the bench samples the resident memory
(RSS) of that process and all its children every 50 ms with psutil, and attributes each sample to the
stage whose progress line has not yet been printed: a stage's peak is the largest sum of RSS over the
process tree while it ran (memory-mapped file pages that are resident count, as the kernel counts
them). optimum-cli and the quantizer are timed and sampled the same way.

The profile is phone's, in a copy with two changes (written into the work folder): an 8 GB budget (the
device's RAM: the most a profile allows), so that fit measures and reports instead of stopping (a 1B model
does not fit a phone's 1.5 GB at 4K), and accuracy thresholds of 0.001 (the least a profile takes), since
random weights give near-uniform logits whose greedy token any rounding changes: verify still runs both
models on every prompt and reports its figures, but cannot judge them. Goal (issue 9): packager's export +
quantize peak at most 2x the fp32 weight bytes, and no slower than optimum-cli + the quantizer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GiB = 2**30
MiB = 2**20

# Llama 3.2 1B's public config (meta-llama/Llama-3.2-1B config.json), with the tokenizer's special ids
# of sample:tiny-llama, whose tokenizer the folder reuses (its ids are < 2048 < vocab_size).
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "torch_dtype": "float16",
    "use_cache": True,
}
SEED = 0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bench_dir() -> Path:
    return Path(os.environ.get("PACKAGER_BENCH_DIR") or Path.home() / ".cache" / "packager" / "bench")


def parameter_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint (lm_head is tied: not stored), in Hugging Face's names."""
    h, i, v, d = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                   p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                   p + "mlp.down_proj.weight": (h, i),
                   p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
    return shapes


def make_model(folder: Path, config: dict = CONFIG) -> Path:
    """The model folder of `config` (the 1B shape's by default), generated once: random normal weights (std 0.02, the
    config's initializer_range; norms 1) from a fixed seed, tensor by tensor, as fp16 safetensors."""
    done = folder / "model.safetensors"
    if done.is_file() and (folder / "config.json").is_file():
        write_tokenizer(folder)
        return folder
    from safetensors.numpy import save_file

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    tensors = {}
    for name, shape in parameter_shapes(config).items():
        if len(shape) == 1:
            tensors[name] = np.ones(shape, np.float16)
        else:
            weights = rng.standard_normal(shape, dtype=np.float32) * config["initializer_range"]
            tensors[name] = weights.astype(np.float16)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}),
                                               encoding="utf-8")
    write_tokenizer(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def write_tokenizer(folder: Path) -> None:
    """sample:tiny-llama's tokenizer, with the model's positions as its model_max_length (its own says
    512, which packager would take as the model's limit and cap the 4K context at)."""
    for name in TOKENIZER_FILES:
        text = (REPO / "packager" / "data" / "tiny-llama" / name).read_text(encoding="utf-8")
        if name == "tokenizer_config.json":
            config = json.loads(text)
            config["model_max_length"] = CONFIG["max_position_embeddings"]
            text = json.dumps(config, indent=2)
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text:
            (folder / name).write_text(text, encoding="utf-8")



# ---------------------------------------------------------------- measuring a command

@dataclass
class Run:
    """One command's wall time, and its process tree's peak RSS, per stage (or in all)."""

    wall_s: float = 0.0
    peak_bytes: int = 0
    returncode: int = 0
    stages: dict[str, tuple[float, int]] = field(default_factory=dict)   # stage -> (wall s, peak bytes)
    stderr_tail: list[str] = field(default_factory=list)


def tree_rss(proc) -> int:
    """RSS of a process and all its descendants (psutil), 0 once it is gone."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


STAGE_DONE = re.compile(r"^[✓✗] (\S+(?: \(\w+\))?)\s+([\d.]+)s")


def measure(cmd: list[str], env: dict[str, str] | None = None, label: str = "") -> Run:
    """Run `cmd`, sampling its tree's RSS every 50 ms. Its stderr is echoed (progress) and read for
    packager's stage lines (`✓ export  12.3s`): the samples since the previous such line are that
    stage's."""
    import psutil

    run = Run()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            encoding="utf-8", errors="replace")
    ps = psutil.Process(proc.pid)
    lock = threading.Lock()
    current = {"peak": 0, "since": start}

    def sample() -> None:
        while proc.poll() is None:
            rss = tree_rss(ps)
            with lock:
                current["peak"] = max(current["peak"], rss)
                run.peak_bytes = max(run.peak_bytes, rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        line = line.rstrip("\n")
        print(f"    {label}| {line}", flush=True)
        run.stderr_tail = (run.stderr_tail + [line])[-20:]
        m = STAGE_DONE.match(line)
        if m:
            with lock:
                now = time.perf_counter()
                run.stages[m.group(1)] = (float(m.group(2)), current["peak"])
                current["peak"], current["since"] = 0, now
    run.returncode = proc.wait()
    sampler.join()
    run.wall_s = time.perf_counter() - start
    return run


# ---------------------------------------------------------------- the runs

def bench_profile(work: Path) -> Path:
    """phone's profile with an 8 GB budget and accuracy thresholds of 0.001 (see the module's doc)."""
    text = (REPO / "profiles" / "phone.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^memory_bytes = \d+", "memory_bytes = 8000000000", text)
    for key in ("min_token_agreement", "min_logits_cosine"):
        text = re.sub(rf"(?m)^{key} = [\d.]+", f"{key} = 0.001", text)
    folder = work / "profile"
    folder.mkdir(exist_ok=True)
    (folder / "phone.toml").write_text(text, encoding="utf-8")
    return folder / "phone.toml"


def run_packager(model: Path, work: Path, smoke: bool) -> tuple[Run, dict]:
    out, report = work / "dist", work / "report"
    cmd = [sys.executable, "-m", "packager", "package", str(model), "--target", str(bench_profile(work)),
           "--out", str(out), "--no-cache", "--report", str(report)] + (["--smoke", "host"] if smoke else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    print("$ " + " ".join(cmd), flush=True)
    run = measure(cmd, env, "packager")
    summary: dict = {}
    if (report / "report.json").is_file():
        data = json.loads((report / "report.json").read_text(encoding="utf-8"))
        results = data.get("results", data) if isinstance(data, dict) else data
        summary = results[0] if results else {}
    return run, summary


def run_optimum(model: Path, work: Path) -> tuple[Run, Run, Path]:
    """optimum-cli's export, then onnxruntime's int4 quantizer (its own CLI) with phone's int4
    settings (block 32, symmetric, accuracy level 4; its default op types: MatMul only)."""
    exported, quantized = work / "optimum", work / "optimum-int4"
    shutil.rmtree(exported, ignore_errors=True)
    shutil.rmtree(quantized, ignore_errors=True)
    quantized.mkdir(parents=True)
    bindir = Path(sys.executable).parent
    cli = str(bindir / "optimum-cli") if (bindir / "optimum-cli").exists() else "optimum-cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The opset packager exports phone's model at (its exporter's highest, under the app runtime's cap).
    # --no-post-process: with it, optimum's deduplication of the tied embedding serializes the whole model
    # into one protobuf, which fails over 2 GB ("Failed to serialize proto"; its message suggests the flag).
    cmd = [cli, "export", "onnx", "--model", str(model), "--task", "text-generation-with-past", "--opset", "20",
           "--no-post-process", str(exported)]
    print("$ " + " ".join(cmd), flush=True)
    export = measure(cmd, env, "optimum")
    cmd = [sys.executable, "-m", "onnxruntime.quantization.matmul_nbits_quantizer", "--input_model",
           str(exported / "model.onnx"), "--output_model", str(quantized / "model.onnx"), "--block_size", "32",
           "--symmetric", "True", "--accuracy_level", "4"]
    print("$ " + " ".join(cmd), flush=True)
    quant = measure(cmd, env, "quantizer")
    return export, quant, quantized


def plan_rows(model: Path, work: Path) -> dict:
    cmd = [sys.executable, "-m", "packager", "plan", str(model / "config.json"), "--target", str(bench_profile(work)),
           "--precision", "int4", "--context", "4K", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


# ---------------------------------------------------------------- the table

def gib(b: float) -> str:
    return f"{b / GiB:.2f}"


def table(model: Path, packager_run: Run | None, summary: dict, plan: dict, optimum: tuple[Run, Run, Path] | None,
          work: Path) -> str:
    shapes = parameter_shapes(CONFIG)
    params = sum(int(np.prod(s)) for s in shapes.values())
    fp32 = params * 4
    lines = [f"model: Llama 3.2 1B shape (hidden 2048, 16 layers, 32/8 heads, intermediate 8192, vocab 128256, tied), "
             f"random fp16 weights; {params / 1e9:.3f}B parameters, fp32 weights {gib(fp32)} GiB; goal: peak <= 2x = "
             f"{gib(2 * fp32)} GiB",
             f"host: {os.cpu_count()} cores; peaks: RSS of the process tree, sampled every 50 ms",
             "", f"{'step':<34}{'wall s':>9}{'peak GiB':>10}{'x fp32':>8}", "-" * 61]

    def row(name: str, wall: float, peak: int) -> None:
        lines.append(f"{name:<34}{wall:>9.1f}{gib(peak):>10}{peak / fp32:>8.2f}")

    if packager_run is not None:
        for stage, (wall, peak) in packager_run.stages.items():
            row(f"packager {stage}", wall, peak)
        eq = [packager_run.stages[s] for s in ("export", "quantize") if s in packager_run.stages]
        if len(eq) == 2:
            row("packager export + quantize", sum(w for w, _ in eq), max(p for _, p in eq))
        row(f"packager package (all, exit {packager_run.returncode})", packager_run.wall_s, packager_run.peak_bytes)
    if optimum is not None:
        export, quant, _ = optimum
        row(f"optimum-cli export (exit {export.returncode})", export.wall_s, export.peak_bytes)
        row(f"ORT int4 quantizer (exit {quant.returncode})", quant.wall_s, quant.peak_bytes)
        row("optimum-cli + quantizer", export.wall_s + quant.wall_s, max(export.peak_bytes, quant.peak_bytes))
    lines.append("")
    half = params * 0.5
    if summary.get("sizes"):
        bundle = work / "dist"
        model_bytes = summary["sizes"]["model_bytes"]
        lines.append(f"{'size':<34}{'GiB':>9}{'/ (params x 0.5 B)':>20}")
        lines.append(f"{'params x 0.5 bytes':<34}{gib(half):>9}{1:>20.2f}")
        lines.append(f"{'bundle model (what the app loads)':<34}{gib(model_bytes):>9}{model_bytes / half:>20.2f}")
        onnx_bytes = summary.get("onnx_bytes", 0)
        if onnx_bytes:
            lines.append(f"{'bundle model.onnx + external data':<34}{gib(onnx_bytes):>9}{onnx_bytes / half:>20.2f}")
        lines.append(f"{'bundle archive (.tar.gz)':<34}{gib(summary['sizes']['archive_bytes']):>9}"
                     f"{summary['sizes']['archive_bytes'] / half:>20.2f}")
        del bundle
    if optimum is not None:
        q = folder_bytes(optimum[2])
        lines.append(f"{'optimum + quantizer model':<34}{gib(q):>9}{q / half:>20.2f}")
    lines.append("")
    mem = summary.get("memory") or {}
    est = mem.get("estimate") or {}
    lines.append(f"{'peak of the bundle at 4K context':<34}{'low GiB':>9}{'high GiB':>10}{'measured':>10}")
    if est:
        lines.append(f"{'packager fit (graph estimate)':<34}{gib(est['low_bytes']):>9}{gib(est['high_bytes']):>10}"
                     f"{gib(mem.get('measured_peak_bytes', 0)):>10}")
        lines.append(f"{'  measured load / run':<34}{'':>9}{'':>10}"
                     f"{gib(mem.get('load_peak_bytes', 0)):>6} / {gib(mem.get('run_peak_bytes', 0))}")
    for r in plan.get("rows", []):
        lines.append(f"{'packager plan (config.json), int4':<34}{gib(r['peak_low_bytes']):>9}"
                     f"{gib(r['peak_high_bytes']):>10}{gib(mem.get('measured_peak_bytes', 0)) if mem else '':>10}")
        lines.append(f"{'  plan weights / bundle model':<34}{gib(r['weights_bytes']):>9}"
                     f"{gib(summary.get('sizes', {}).get('model_bytes', 0)):>10}")
    if "error" in plan:
        lines.append(f"plan failed: {plan['error']}")
    if summary.get("bundle_files"):
        lines.append("bundle model/: " + ", ".join(summary["bundle_files"]))
    acc = summary.get("accuracy") or {}
    if acc:
        lines.append("")
        lines.append(f"verify (random weights, thresholds 0.001): token agreement {acc.get('token_agreement', 0):.1%}, "
                     f"logits cosine {acc.get('min_logits_cosine', 0):.4f}")
    if summary.get("smoke"):
        lines.append(f"smoke test (host): {summary['smoke'].get('verdict')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-optimum", action="store_true", help="leave out optimum-cli + the quantizer")
    parser.add_argument("--skip-packager", action="store_true", help="leave out packager (the optimum rows only)")
    parser.add_argument("--no-smoke", action="store_true", help="leave out the bundle's smoke test (--smoke host)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (bundle, exports) for a look")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--generate-only", action="store_true", help="generate (or find) the model, and stop")
    args = parser.parse_args()
    t = time.perf_counter()
    model = make_model(bench_dir() / "llama-3.2-1b-shape")
    print(f"model: {model} ({time.perf_counter() - t:.0f}s)", flush=True)
    if args.generate_only:
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-scale-", dir=os.environ.get("TMPDIR")))
    work.mkdir(parents=True, exist_ok=True)
    try:
        packager_run, summary = (None, {}) if args.skip_packager else run_packager(model, work, not args.no_smoke)
        if summary.get("archive") and Path(summary["archive"]).is_file():
            import tarfile

            with tarfile.open(summary["archive"]) as tar:
                files = {m.name.split("/", 1)[1]: m.size for m in tar.getmembers() if m.isfile()}
            summary["onnx_bytes"] = sum(size for name, size in files.items()
                                        if name == "model/model.onnx" or name.startswith("model/model.onnx."))
            summary["bundle_files"] = sorted(name for name in files if name.startswith("model/"))
        if packager_run is not None and packager_run.returncode != 0:
            print("packager failed:\n  " + "\n  ".join(packager_run.stderr_tail), flush=True)
        optimum = None if args.skip_optimum else run_optimum(model, work)
        plan = plan_rows(model, work)
        print()
        print(table(model, packager_run, summary, plan, optimum, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"\nkept: {work}")


if __name__ == "__main__":
    main()
