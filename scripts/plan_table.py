#!/usr/bin/env python3
"""`packager plan` on the published decoder configs (packager/data/configs/), as the markdown tables of docs/llms.md:
stored and effective parameters, resident and mapped int4 weights, the KV cache per layer type, and the largest
int4 context that fits each profile (and, in brackets, with the runtime's smaller KV cache where that is longer:
onnxruntime-genai's int8 one, which `--fit auto` takes before it shortens the context).

    python scripts/plan_table.py [--precision int4] [--target rpi5 --target phone ...]

Each profile as `packager plan` and `package` apply it to a decoder: its [decoder_runtime] (onnxruntime-genai on
rpi4 and rpi5) where that runtime builds the architecture, else [runtime].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from packager.decoder_config import FULL  # noqa: E402
from packager.plan import (  # noqa: E402
    architecture,
    as_packaged,
    human_context,
    human_count,
    kv_cache,
    largest_context,
    read_config,
    row,
    smaller_kv_context,
)
from packager.profiles import resolve_target  # noqa: E402
from packager.runtimes import runtime_for  # noqa: E402

CONFIGS = REPO / "packager" / "data" / "configs"
TARGETS = ("rpi4", "rpi5", "phone", "jetson-orin-nano")
KV_TARGETS = ("rpi5", "phone")   # the KV table: onnxruntime-genai, and an exported graph on onnxruntime
MiB = 2**20


def kv_per_type(a, profile) -> str:  # type: ignore[no-untyped-def]
    """KV bytes per token of context by layer type (a windowed layer's whole window where the runtime keeps one)."""
    mem = runtime_for(profile).decoder_memory(profile, "int4")
    parts = []
    for kind, size in kv_cache(a, 4096, mem.kv_bits, mem.windowed_kv).items():
        layers = [la for la in a.attention if la.kind == kind and la.owns_cache]
        window = {la.window for la in layers} if mem.windowed_kv and kind != FULL else set()
        what = f"{len(layers)} {kind.removesuffix('_attention')}"
        parts.append(f"{what}: {size / MiB:.0f} MiB" + (f" (window {min(window)})" if window else ""))
    shared = sum(not la.owns_cache for la in a.attention)
    return "; ".join(parts) + (f"; {shared} shared: 0" if shared else "")


def fit_cell(a, profile, precision: str) -> str:  # type: ignore[no-untyped-def]
    """The largest context that fits with the profile's KV cache, and with the runtime's smaller one (--fit auto's
    lever) where that is longer."""
    tokens = largest_context(a, profile, precision, None)
    cache, longer = smaller_kv_context(a, profile, precision, tokens)
    cell = human_context(tokens) if tokens else "none"
    return cell + (f" ({human_context(longer)} {cache} KV)" if longer else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--target", action="append", default=None)
    args = parser.parse_args()
    targets = args.target or list(TARGETS)
    profiles = [resolve_target(t) for t in targets]
    print("| model | stored | effective | resident weights | mapped | " + " | ".join(targets) + " |")
    print("|---|---|---|---|---|" + "---|" * len(targets))
    kv_lines = []
    for path in sorted(CONFIGS.glob("*.json")):
        a = architecture(read_config(path))
        applied = [as_packaged(a, p)[0] for p in profiles]
        r = row(a, applied[0], args.precision, 4096, None)
        fits = [fit_cell(a, p, args.precision) for p in applied]
        print(f"| {path.stem} | {human_count(a.parameters)} | {human_count(a.effective_parameters)} | "
              f"{r.weights_bytes / MiB:.0f} MiB | {r.mapped_bytes / MiB:.0f} MiB | " + " | ".join(fits) + " |")
        kv = [as_packaged(a, resolve_target(t))[0] for t in KV_TARGETS]
        kv_lines.append(f"| {path.stem} | " + " | ".join(kv_per_type(a, p) for p in kv) + " |")
    print()
    print(f"| model (KV cache at 4K) | {' | '.join(f'{p.name} ({p.runtime.package})' for p in kv)} |")
    print("|---|---|---|")
    print("\n".join(kv_lines))


if __name__ == "__main__":
    main()
