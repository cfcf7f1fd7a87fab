#!/usr/bin/env python3
"""The KV cache's type against decode speed at a long context, and whether genai may share an int8 cache's buffer
between past and present (packager/runtimes/genai.py share_quantized_cache): two layers of the Llama-3.2-1B shape
(32 heads, 8 KV heads of 64, the attention's own width; a 64-wide MLP and a 256-token vocabulary, so that the
attention is most of a step), built by onnxruntime-genai's builder at int4 and run by genai on 2 threads.

    python scripts/bench_kv_cache.py [--prompt 4000] [--new 32] [--rounds 3] [--dir DIR]

Four folders, each measured once a round, in turn (a neighbour's load slows all four of a round):

    fp32        the builder's cache (past_key_values float32), shared as the builder makes it
    fp16        packager's 16-bit cache (runtimes/genai_kv16.py), shared
    int8        the builder's int8 cache (kv_cache_quant_scheme=int8_per_tensor), unshared as the builder makes it
    int8-shared the same model with past_present_share_buffer on, as packager's bundles have it

It prints each one's milliseconds a decode step after a --prompt-token prompt (in chunks of 64), per round and the
median, then checks that int8 and int8-shared give the same logits to the bit over a 1,000-token prompt in chunks of
64 and of 256 and 40 teacher-forced steps. Measured 2026-12-05 (`python scripts/bench_kv_cache.py --rounds 3`, 2
cores, x86-64, load average 1.4; median and rounds, ms a step): int8-shared 2.10 (2.10 2.42 1.72), int8 2.86 (2.86
2.75 2.86), fp16 4.71 (4.35 4.71 5.45), fp32 3.87 (3.39 3.87 5.46); the logits the same to the bit in both chunkings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_llm_runtime import KV8_OPTIONS, KV8_SCALE, build_genai  # noqa: E402
from bench_scale import CONFIG, bench_dir, make_model  # noqa: E402

from packager.exporter_envs import GENAI, ensure  # noqa: E402
from packager.runtimes.genai import share_quantized_cache  # noqa: E402

LAYERS = 2
SHAPE = CONFIG | {"num_hidden_layers": LAYERS, "intermediate_size": 64, "vocab_size": 256}
FOLDERS = ("fp32", "fp16", "int8", "int8-shared")

# The child, in the genai environment: one folder's ms a decode step (--prompt then --new steps), or its logits
# over a teacher-forced sequence ("logits"), as JSON on its last line.
CHILD = r"""
import json, sys, time, numpy as np
import onnxruntime_genai as og
folder, mode, prompt, new, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = og.Model(folder)
params = og.GeneratorParams(model)
params.set_search_options(max_length=prompt + new + 1)
g = og.Generator(model, params)
ids = np.random.default_rng(0).integers(4, 250, prompt + new).astype(np.int32)
for i in range(0, prompt, chunk):
    g.append_tokens(ids[i:min(i + chunk, prompt)])
if mode == "speed":
    g.generate_next_token()
    t = time.perf_counter()
    for _ in range(new):
        g.generate_next_token()
    print(json.dumps({"ms": (time.perf_counter() - t) / new * 1000}))
else:
    out = [np.array(g.get_logits()).ravel().tolist()]
    for t in ids[prompt:]:
        g.append_tokens(np.array([t], dtype=np.int32))
        out.append(np.array(g.get_logits()).ravel().tolist())
    print(json.dumps({"logits": out}))
"""


def folders(root: Path) -> dict[str, Path]:
    """The four folders, built once under `root`."""
    import onnx

    from packager.runtimes.genai_kv16 import kv_to_fp16

    model = make_model(root / "model", SHAPE)
    work = root / "work"
    work.mkdir(exist_ok=True)
    scales = work / "kv_scales.json"
    scales.write_text(json.dumps({"scales": {"k_scales": [KV8_SCALE] * LAYERS, "v_scales": [KV8_SCALE] * LAYERS}}),
                      encoding="utf-8")
    made = {"fp32": build_genai(model, root / "fp32", ("prune_lm_head=true",), work),
            "int8": build_genai(model, root / "int8", ("prune_lm_head=true", *KV8_OPTIONS,
                                                       f"kv_cache_scale_file={scales}"), work)}
    for name, base, change in (("fp16", "fp32", "kv16"), ("int8-shared", "int8", "share")):
        dest = root / name
        if not (dest / "genai_config.json").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(made[base], dest)
            if change == "kv16":
                graph = onnx.load(dest / "model.onnx", load_external_data=False)
                kv_to_fp16(graph)
                onnx.save(graph, dest / "model.onnx")
            else:
                config = json.loads((dest / "genai_config.json").read_text(encoding="utf-8"))
                share_quantized_cache(config)
                (dest / "genai_config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
        made[name] = dest
    for folder in made.values():   # 2 threads, the arena off, room for the longest run
        path = folder / "genai_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        options = config["model"]["decoder"]["session_options"]
        options |= {"intra_op_num_threads": 2, "inter_op_num_threads": 1, "enable_cpu_mem_arena": False}
        path.write_text(json.dumps(config, indent=4), encoding="utf-8")
    return made


def child(folder: Path, mode: str, prompt: int, new: int, chunk: int) -> dict:
    proc = subprocess.run([str(GENAI.python), "-c", CHILD, str(folder), mode, str(prompt), str(new), str(chunk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{folder.name}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=4000)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    ensure(GENAI, print)
    made = folders((args.dir or bench_dir()) / "kv-cache")
    times: dict[str, list[float]] = {name: [] for name in FOLDERS}
    for _ in range(args.rounds):
        for name in FOLDERS:
            times[name].append(child(made[name], "speed", args.prompt, args.new, 64)["ms"])
    print(f"\n{LAYERS} layers of the Llama 3.2 1B shape, int4; a {args.prompt}-token prompt in chunks of 64, then "
          f"{args.new} steps; 2 threads; ms a decode step\n")
    print(f"{'cache':<12} {'median':>7}  rounds")
    for name in FOLDERS:
        print(f"{name:<12} {statistics.median(times[name]):7.2f}  " + " ".join(f"{t:.2f}" for t in times[name]))
    print()
    for chunk in (64, 256):
        a, b = (child(made[name], "logits", 1000, 40, chunk)["logits"] for name in ("int8", "int8-shared"))
        print(f"int8 against int8-shared, a 1,000-token prompt in chunks of {chunk} and 40 steps: "
              + ("the same logits to the bit" if a == b else "LOGITS DIFFER"))


if __name__ == "__main__":
    main()
