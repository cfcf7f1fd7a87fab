#!/usr/bin/env python3
"""`packager plan` on the published decoder configs (packager/data/configs/), as the markdown tables of docs/llms.md:
stored and effective parameters, resident and mapped int4 weights, the KV cache per layer type, and the largest
int4 context that fits each profile (and, in brackets, with the runtime's smaller KV cache where that is longer:
onnxruntime-genai's int8 one, which `--fit auto` takes before it shortens the context).

    python scripts/plan_table.py [--precision int4] [--target rpi5 --target phone ...]
    python scripts/plan_table.py --write    # into docs/llms.md and README.md (--check: exit 1 where they are stale)

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
from packager.labels import human_context, human_count  # noqa: E402
from packager.plan import (  # noqa: E402
    architecture,
    as_packaged,
    kv_cache,
    largest_context,
    read_config,
    row,
    smaller_kv_context,
)
from packager.profiles import resolve_target  # noqa: E402
from packager.runtimes import runtime_for  # noqa: E402

CONFIGS = REPO / "packager" / "data" / "configs"
TARGETS = ("rpi4", "rpi5", "phone", "jetson-orin-nano", "jetson-orin-nano-cpu")
KV_TARGETS = ("rpi5", "jetson-orin-nano")   # the KV table: onnxruntime-genai, and an exported graph on onnxruntime
MiB = 2**20
# Where --write puts the tables (docs/llms.md: both; README.md: the short one)
BEGIN, END = "<!-- scripts/plan_table.py --write: begin -->", "<!-- scripts/plan_table.py --write: end -->"


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


def tables(targets: list[str], precision: str) -> tuple[str, str]:
    """docs/llms.md's two tables (the plan per model and target, the KV cache per layer type at 4K), and the README's
    short one (the model, its effective parameters and the largest context per target)."""
    profiles = [resolve_target(t) for t in targets]
    full = ["| model | stored | effective | resident weights | mapped | " + " | ".join(targets) + " |",
            "|---|---|---|---|---|" + "---|" * len(targets)]
    short = ["| model | effective | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    kv_lines = []
    for path in sorted(CONFIGS.glob("*.json")):
        a = architecture(read_config(path))
        applied = [as_packaged(a, p)[0] for p in profiles]
        r = row(a, applied[0], precision, 4096, None)
        fits = " | ".join(fit_cell(a, p, precision) for p in applied)
        full.append(f"| {path.stem} | {human_count(a.parameters)} | {human_count(a.effective_parameters)} | "
                    f"{r.weights_bytes / MiB:.0f} MiB | {r.mapped_bytes / MiB:.0f} MiB | {fits} |")
        short.append(f"| {path.stem} | {human_count(a.effective_parameters)} | {fits} |")
        kv = [as_packaged(a, resolve_target(t))[0] for t in KV_TARGETS]
        kv_lines.append(f"| {path.stem} | " + " | ".join(kv_per_type(a, p) for p in kv) + " |")
    full += ["", f"| model (KV cache at 4K) | {' | '.join(f'{p.name} ({p.runtime.package})' for p in kv)} |",
             "|---|---|---|", *kv_lines]
    return "\n".join(full), "\n".join(short)


def with_table(text: str, table: str, where: Path) -> str:
    """`text` with the block between the markers replaced by `table`."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{where}: no {BEGIN} ... {END} block to write the table into")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--target", action="append", default=None)
    parser.add_argument("--write", action="store_true", help="write the tables into docs/llms.md and README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/llms.md's or README.md's table is not "
                        "what this prints (the tables are generated, never typed)")
    args = parser.parse_args()
    full, short = tables(args.target or list(TARGETS), args.precision)
    if not (args.write or args.check):
        print(full)
        return
    stale = []
    for path, table in ((REPO / "docs" / "llms.md", full), (REPO / "README.md", short)):
        text = path.read_text(encoding="utf-8")
        wanted = with_table(text, table, path)
        if wanted != text:
            stale.append(str(path.relative_to(REPO)))
            if args.write:
                path.write_text(wanted, encoding="utf-8")
    if args.check and stale:
        raise SystemExit(f"{', '.join(stale)}: the plan table is stale; run `python scripts/plan_table.py --write`")
    print(f"written: {', '.join(stale)}" if args.write and stale else "the tables are current")


if __name__ == "__main__":
    main()
