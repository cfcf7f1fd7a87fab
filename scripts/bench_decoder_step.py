#!/usr/bin/env python3
"""What one pass of a decoder bundle's generation loop holds above its resident cache, by the pass's tokens.

    python scripts/bench_decoder_step.py BUNDLE [--context 8K] [--tokens 1 16 32 64 128]

For each token count n, a fresh process loads the bundle's model with the bundle's own runner (run.py's
`runtime.session`), makes a KV cache of context - n positions (`Decoder.empty_past`: every position written, so
resident), resets the high-water mark and runs one pass of n tokens (`Decoder.step`). It prints the memory resident
before the pass and the peak the pass added, beside the cache's own bytes: what the memory model's score copies
(packager/runtimes/onnxruntime.py SCORE_COPIES, ECLASS_SCORE_COPIES) and KV copies (`kv_copies`) are read from.
BUNDLE: a bundle folder or its .tar.gz.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

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


def probe(bundle: Path, tokens: int, context: int) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(tokens), str(context)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"the pass of {tokens} tokens failed: {proc.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--context", default="8K", help="positions of the cache the pass reads (8192 or 8K)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 32, 64, 128])
    args = parser.parse_args()
    context = parse_context(args.context)
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        bundle = extract_bundle(args.bundle, Path(tmp)) if args.bundle.is_file() else args.bundle
        rows = [(n, probe(bundle, n, context)) for n in args.tokens]
    print(f"\n{args.bundle.name}: one pass of n tokens on a cache of {context:,} - n positions\n")
    print("| tokens | resident before MiB | the cache MiB | the pass added MiB |")
    print("|---|---|---|---|")
    for n, got in rows:
        print(f"| {n} | {got['before'] / MiB:.0f} | {got['cache'] / MiB:.1f} | {got['added'] / MiB:.1f} |")


if __name__ == "__main__":
    main()
