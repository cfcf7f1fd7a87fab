#!/usr/bin/env python3
"""What one pass of a decoder bundle's generation loop holds above its resident cache, by the pass's tokens.

    python scripts/bench_decoder_step.py BUNDLE [--context 8K] [--tokens 1 16 32 64 128]
    python scripts/bench_decoder_step.py BUNDLE --speed [--context 8K] [--prompt 1024] [--chunks 32 64 128]

For each token count n, a fresh process loads the bundle's model with the bundle's own runner (run.py's
`runtime.session`), makes a KV cache of context - n positions (`Decoder.empty_past`: every position written, so
resident), resets the high-water mark and runs one pass of n tokens (`Decoder.step`). It prints the memory resident
before the pass and the peak the pass added, beside the cache's own bytes: what the memory model's score copies
(packager/runtimes/onnxruntime.py SCORE_COPIES, ECLASS_SCORE_COPIES) and KV copies (`kv_copies`) are read from.
With --speed, what the same loop costs in time instead: for each prefill chunk (every pass of that many tokens,
set in the probe's process; 0: run.py's own schedule, Decoder.pass_tokens), a prompt of --prompt random tokens
prefilled (`Decoder.prefill`, the best of two after a warm-up),
and one decode step on a cache of the context (`Decoder.step`, the best of 20): the figures the chunk's memory is
weighed against.
BUNDLE: a bundle folder or its .tar.gz.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from packager.archive import extract_bundle  # noqa: E402
from packager.config import parse_context  # noqa: E402

MiB = 2**20

# Runs in a fresh process beside the bundle's runtime package: one pass of argv[2] tokens on a cache of argv[3].
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import runtime.session as rt
from runtime.peak import peak_bytes, reset_peak, rss_bytes
tokens, context = int(sys.argv[2]), int(sys.argv[3])
decoder = rt.load(Path(sys.argv[1])).decoder
past = decoder.empty_past(context - tokens)
before = rss_bytes()
reset_peak()
decoder.step([5] * tokens, past, context - tokens)
print(json.dumps({"before": before, "added": peak_bytes() - before,
                  "cache": sum(v.nbytes for v in past.values())}))
"""

# Runs in a fresh process: argv[2] the prefill chunk, argv[3] the prompt's tokens, argv[4] the context.
SPEED = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import numpy as np
import runtime.session as rt
chunk, prompt, context = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if chunk:   # every pass of `chunk` tokens; 0: run.py's own schedule (64, smaller as the cache grows)
    rt.PREFILL_CHUNK, rt.CHUNK_SCORES = chunk, 1 << 62
decoder = rt.load(Path(sys.argv[1])).decoder
ids = [int(i) for i in np.random.default_rng(0).integers(100, 16000, prompt)]
decoder.prefill(ids[:chunk or 64])

def best(runs, work):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)

past = decoder.empty_past(context - 1)
print(json.dumps({"prefill": prompt / best(2, lambda: decoder.prefill(ids)),
                  "step": best(20, lambda: decoder.step([5], past, context - 1))}))
"""


def probe(bundle: Path, tokens: int, context: int, code: str = PROBE, *args: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", code, str(bundle), str(tokens), *map(str, args), str(context)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"the run with {tokens} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--context", default="8K", help="positions of the cache the pass reads (8192 or 8K)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 32, 64, 128])
    parser.add_argument("--speed", action="store_true", help="time the prefill by chunk and a decode step instead")
    parser.add_argument("--prompt", type=int, default=1024, help="--speed: the prompt's tokens")
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128], help="--speed: prefill chunks")
    args = parser.parse_args()
    context = parse_context(args.context)
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        bundle = extract_bundle(args.bundle, Path(tmp)) if args.bundle.is_file() else args.bundle
        if args.speed:
            speed(bundle, args.bundle.name, args.chunks, args.prompt, context)
            return
        rows = [(n, probe(bundle, n, context)) for n in args.tokens]
    print(f"\n{args.bundle.name}: one pass of n tokens on a cache of {context:,} - n positions\n")
    print("| tokens | resident before MiB | the cache MiB | the pass added MiB |")
    print("|---|---|---|---|")
    for n, got in rows:
        print(f"| {n} | {got['before'] / MiB:.0f} | {got['cache'] / MiB:.1f} | {got['added'] / MiB:.1f} |")


def speed(bundle: Path, name: str, chunks: list[int], prompt: int, context: int) -> None:
    rows = [(c, probe(bundle, c, context, SPEED, prompt)) for c in chunks]
    print(f"\n{name}: a prompt of {prompt:,} tokens by prefill chunk; a decode step on a cache of {context:,}\n")
    print("| chunk | prefill tok/s | decode step ms |")
    print("|---|---|---|")
    for chunk, got in rows:
        print(f"| {chunk} | {got['prefill']:.0f} | {got['step'] * 1000:.1f} |")


if __name__ == "__main__":
    main()
