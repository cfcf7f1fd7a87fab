#!/usr/bin/env python3
"""A multimodal E model's modes measured on a packaged bundle, beside plan's figure (issue 20, item 4).

The model: scripts/bench_eclass.py's (Gemma 4 E2B's layer plan, vocabulary and per-layer table of 2,240 MiB in int8,
the stack scaled down to a hidden size of 256, random weights, bf16) with Gemma 4's vision and audio encoders at
E2B's sizes (transformers 5.x's default sub-configs: 169M and 307M parameters with their projections). It goes
through `packager package` for the target at int8-dynamic (decoder and encoders: a random model's answers survive
8 bits, where int4's do not), then the bundle's own `run.py --measure --context N` in a fresh process: the text
mode's peak (a pass at the context), then each encoder loaded on its largest input with that cache held. Beside
each, plan's figure for the same config at int8 (packager/plan.py: the decoder's row and each mode's).

    flock /tmp/heavy.lock python scripts/bench_multimodal.py [--target rpi5] [--context 8192]

--target also takes a profile file: a copy of rpi5.toml with min_token_agreement and min_logits_cosine 0.5. The
random model's int8 answers stop verify at rpi5's gates (against fp32: its text prompts' cosine 0.93, the picture's
0.82, the tone's 81% of the tokens at cosine 0.79): what is measured here is memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from bench_eclass import package, spec  # noqa: E402

MAKE = """
import json, sys, torch
from transformers import Gemma4Config, Gemma4ForConditionalGeneration
text = json.loads(sys.argv[2])
text.pop("model_type"); text.pop("architectures", None)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
config = Gemma4Config(text_config=text, vision_config={}, audio_config={})
Gemma4ForConditionalGeneration(config).save_pretrained(sys.argv[1])
"""


def make_source(folder: Path) -> Path:
    from packager.exporter_envs import GENAI
    from tiny_decoders import make_tokenizer

    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(GENAI.python), "-c", MAKE, str(folder), json.dumps(spec("gemma4"))], check=True)
        make_tokenizer(folder, 16384)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="rpi5")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-multimodal"))
    parser.add_argument("--reuse", action="store_true", help="measure the bundle an earlier run left in ROOT")
    args = parser.parse_args()
    from packager.plan import plan
    from packager.profiles import resolve_target

    source = make_source(args.root / "source")
    bundle, took = package(source, args.target, args.root / Path(args.target).stem,
                           ["--recipe", "int8-dynamic", "--context", str(args.context)], args.reuse)
    measured = subprocess.run([sys.executable, "run.py", "--measure", "--context", str(args.context)], cwd=bundle,
                              capture_output=True, text=True)
    if measured.returncode:
        sys.exit(measured.stderr[-3000:])
    peaks = json.loads(measured.stdout.splitlines()[-1])
    row = plan(source, resolve_target(args.target), ["int8"], [args.context]).rows[0]
    mib = 2**20
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(f"{args.target}, int8-dynamic, {args.context} tokens; packaged in {took}; budget "
          f"{manifest['memory']['budget_bytes'] / mib:,.0f} MiB; encoders on demand: "
          + ", ".join(f"{m} {e['size_bytes'] / mib:,.0f} MiB" for m, e in manifest["memory"]["on_demand"].items()))
    est = manifest["memory"]["estimate"]   # the bundle's, from its graphs (estimate.with_modes for each mode)
    print(f"{'mode':6} {'measured MiB':>12} {'plan MiB':>13} {'estimate MiB':>13}")
    print(f"{'text':6} {max(peaks['load_peak_bytes'], peaks['run_peak_bytes']) / mib:12,.0f} "
          f"{row.peak_low_bytes / mib:6,.0f}-{row.peak_high_bytes / mib:<6,.0f} "
          f"{est['low_bytes'] / mib:6,.0f}-{est['high_bytes'] / mib:<6,.0f}")
    for mode, m in peaks["modes"].items():
        low, high = row.modes[mode]
        graph = est.get("modes", {}).get(mode)
        print(f"{mode:6} {m['peak_bytes'] / mib:12,.0f} {low / mib:6,.0f}-{high / mib:<6,.0f} "
              + (f"{graph['low_bytes'] / mib:6,.0f}-{graph['high_bytes'] / mib:<6,.0f}" if graph else "-"))
    print("media gate: " + ", ".join(f"{name} {f['token_agreement']:.1%} / {f['logits_cosine']:.4f}"
                                     for name, f in manifest["accuracy"].get("media", {}).items()))


if __name__ == "__main__":
    main()
