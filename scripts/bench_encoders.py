#!/usr/bin/env python3
"""A Gemma 4 E model's encoders loaded on demand (issue 20, item 4): plan's figure beside the measured one.

Gemma 4's vision and audio encoders at E2B's sizes (transformers 5.x's defaults, which its docs give as
google/gemma-4-e2b-it's: a 16-layer ViT of 768, a 12-layer conformer of 1024; random weights), each with its
projection into the decoder's 1,536-wide embeddings, are exported by packager's encoder exporter
(packager/runtimes/eclass_encoders.py, in the `genai` environment), then quantized by packager's int8-dynamic recipe
(the encoder recipe of the Pi, phone and Orin CPU profiles). Each graph runs in a fresh process, 2 threads, on one
input at the processor's largest size (an image of 280 soft tokens: 2,520 patches; 30 s of audio: 3,000 frames):
VmHWM after the load and after the run, less the process's own before the session (Python, numpy,
onnxruntime: no torch in it).
Beside it, what plan adds for that mode (packager/plan_encoders.py: encoder_bytes, low-high) and the fidelity of
each graph to transformers' own module on the same input (min cosine of the soft tokens).

    flock /tmp/heavy.lock python scripts/bench_encoders.py [--root /tmp/bench-encoders] [--reuse]

Goal: the measurement inside plan's [low, high], its midpoint within 10%. About 3 minutes and 5 GiB of disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from packager.decoder_config import Keys  # noqa: E402
from packager.exporter_envs import GENAI, ensure  # noqa: E402
from packager.plan_encoders import RULES, encoder_bytes  # noqa: E402
from packager.recipes.common import RecipeOptions  # noqa: E402
from packager.recipes.dense import int8_dynamic  # noqa: E402

TEXT_HIDDEN = 1536   # E2B's
KINDS = {"vision": "gemma4_vision", "audio": "gemma4_audio"}

# In the genai environment: the model at E2B's encoder sizes (a one-layer text decoder of E2B's width: the encoders
# only read its hidden size), each encoder exported, transformers' own output on the export's input kept.
EXPORT = r"""
import json, sys, numpy as np, torch
sys.path.insert(0, sys.argv[2])
import eclass_encoders as E
from pathlib import Path
from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig
torch.manual_seed(0)
text = Gemma4TextConfig(num_hidden_layers=1, hidden_size=int(sys.argv[3]), intermediate_size=64, vocab_size=512,
                        vocab_size_per_layer_input=512, num_kv_shared_layers=0, layer_types=["full_attention"])
model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config={}, audio_config={})).eval()
out = Path(sys.argv[1])
with torch.no_grad():
    vi, ai = E.vision_inputs(model.config.vision_config, 280), E.audio_inputs()
    v = model.model.get_image_features(*vi).pooler_output
    a = model.model.get_audio_features(*ai, return_dict=True)
    v = v[0] if isinstance(v, (tuple, list)) else v
    ref = {"vision": (vi, v), "audio": (ai, a.pooler_output[a.attention_mask])}
    E.export_encoders(E.encoders_of(model), out)
for kind, (inputs, tokens) in ref.items():
    np.savez(out / f"{kind}.ref.npz", tokens=tokens.numpy(), **{f"input{i}": x.numpy() for i, x in enumerate(inputs)})
print(json.dumps({k: sum(p.numel() for p in getattr(model.model, m).parameters()) + sum(
    p.numel() for p in getattr(model.model, e).parameters()) for k, m, e in (
    ("vision", "vision_tower", "embed_vision"), ("audio", "audio_tower", "embed_audio"))}))
"""

# A fresh process as run.py makes it (glibc's mmap threshold held: without, the heap kept 0-300 MiB of what the
# load freed, another amount each run): the session on 2 threads, one run on the kept input; VmHWM before, after the
# load, after the run.
MEASURE = r"""
import ctypes, json, sys, numpy as np, onnxruntime as ort
ctypes.CDLL(None).mallopt(-3, 128 * 1024)   # glibc's mmap threshold held, as run.py holds it (runtime/peak.py)
def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
stored = np.load(sys.argv[2])
ref = {"inputs": [stored[f"input{i}"] for i in range(2)], "tokens": stored["tokens"]}
before = hwm()
options = ort.SessionOptions(); options.intra_op_num_threads = 2
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
load = hwm()
names = [i.name for i in session.get_inputs()]
tokens = session.run(None, dict(zip(names, ref["inputs"])))[0]
want = ref["tokens"]
cos = (tokens * want).sum(-1) / np.linalg.norm(tokens, axis=-1) / np.linalg.norm(want, axis=-1)
print(json.dumps({"before": before, "load": load, "peak": hwm(), "cosine": float(cos.min()),
                  "tokens": int(tokens.shape[0])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-encoders"))
    parser.add_argument("--reuse", action="store_true", help="measure the graphs an earlier run left in ROOT")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    ensure(GENAI)
    python = GENAI.python
    counts_file = args.root / "parameters.json"
    if not (args.reuse and counts_file.is_file()):
        proc = subprocess.run([str(python), "-c", EXPORT, str(args.root), str(ROOT / "packager" / "runtimes"),
                               str(TEXT_HIDDEN)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        counts_file.write_text(proc.stdout.splitlines()[-1])
        for kind in KINDS:
            int8_dynamic(args.root / f"{kind}.onnx", args.root / f"{kind}.int8.onnx", RecipeOptions())
    counts = json.loads(counts_file.read_text())
    mib = 2**20
    print(f"{'encoder':8s} {'recipe':6s} {'params':>8s} {'load MiB':>9s} {'run MiB':>8s} {'plan MiB':>13s} "
          f"{'mid err':>8s} {'tokens':>6s} {'min cos':>8s}")
    for kind, rule in KINDS.items():
        planned = RULES[rule](Keys({}, "defaults"), TEXT_HIDDEN)
        assert planned.parameters == counts[kind], (planned.parameters, counts[kind])
        for recipe, path, per_param in (("int8", f"{kind}.int8.onnx", 1.0), ("fp32", f"{kind}.onnx", 4.0)):
            proc = subprocess.run([str(python), "-c", MEASURE, str(args.root / path),
                                   str(args.root / f"{kind}.ref.npz")], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            m = json.loads(proc.stdout.splitlines()[-1])
            low, high = encoder_bytes(planned, per_param)
            run = m["peak"] - m["before"]
            mid = (low + high) / 2
            print(f"{kind:8s} {recipe:6s} {counts[kind] / 1e6:7.0f}M {(m['load'] - m['before']) / mib:9.0f} "
                  f"{run / mib:8.0f} {low / mib:6.0f}-{high / mib:<6.0f} {100 * (mid - run) / run:+7.1f}% "
                  f"{m['tokens']:6d} {m['cosine']:8.4f}" + ("" if low <= run <= high else "   OUTSIDE"))


if __name__ == "__main__":
    main()
