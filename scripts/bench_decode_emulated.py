#!/usr/bin/env python3
"""Decoder recipes on an arm64 target's CPU, under emulation: which runs token generation faster.

    python scripts/bench_decode_emulated.py [--target rpi4] [--model sample:tiny-llama] [--tokens 32]

Packages the model for the target with each recipe (int4 at accuracy_level 1 and 4, int8-dynamic,
fp32), then times greedy generation inside the target's Debian userland under qemu-user with the
target's CPU model (`packager smoke --emulate`'s machinery: qemu's cortex-a72 has no dotprod,
as the Pi 4). qemu translates every NEON instruction, so the times are the emulated instruction
stream's, not the device's: read the ratios between recipes, as the kernels' instruction counts,
not the absolute figures. Needs qemu-user-static and network for the first userland build.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from packager.archive import extract_bundle  # noqa: E402
from packager.config import resolve_package_settings  # noqa: E402
from packager.emulate import prepare  # noqa: E402
from packager.emulate_qemu import no_core_dumps  # noqa: E402
from packager.pipeline import package  # noqa: E402
from packager.profiles import resolve_target  # noqa: E402

# Runs inside the guest, in the bundle folder: generation time per token after a warm-up.
GUEST = """
import json, time, run
r = run.load()
ids = r.prompt_ids("The function returns")
r.decoder.generate(ids, 4)
start = time.perf_counter()
tokens, _ = r.decoder.generate(ids, {tokens})
print(json.dumps({{"s_per_token": (time.perf_counter() - start) / len(tokens), "tokens": len(tokens)}}))
"""


def variant_profile(target: str, accuracy_level: int, folder: Path) -> str:
    """The target's profile with another int4 accuracy_level, as a profile file of its own."""
    source = Path(resolve_target(target).source)
    text = re.sub(r"(?m)^accuracy_level = \d+", f"accuracy_level = {accuracy_level}", source.read_text("utf-8"))
    path = folder / f"{target}.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def time_in_guest(archive: Path, work: Path, tokens: int) -> float:
    folder = extract_bundle(archive, work / "bundle")
    emu = prepare(folder, work)
    proc = subprocess.run(emu.command("-c", GUEST.format(tokens=tokens)), cwd=folder, env=emu.env(),
                          capture_output=True, text=True, timeout=3600, preexec_fn=no_core_dumps)
    if proc.returncode != 0:
        raise SystemExit(f"the emulated run failed: {proc.stderr.strip().splitlines()[-1:]}")
    import json

    return float(json.loads(proc.stdout.strip().splitlines()[-1])["s_per_token"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="rpi4")
    parser.add_argument("--model", default="sample:tiny-llama")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    variants = [("int4", 1), ("int4", 4), ("int8-dynamic", None), ("fp32", None)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for i, (recipe, level) in enumerate(variants):
            work = Path(tmp) / str(i)
            work.mkdir()
            target = variant_profile(args.target, level, work) if level is not None else args.target
            settings = resolve_package_settings({"target": target, "out": str(work / "dist"), "recipe": recipe,
                                                 "budget": None})
            ctx = package(args.model, settings)
            size = sum(f["size"] for f in ctx.bundle_files if f["path"].startswith("model/model.onnx"))
            seconds = time_in_guest(ctx.archive, work, args.tokens)
            name = f"{recipe} (accuracy_level {level})" if level is not None else recipe
            rows.append((name, size, ctx.accuracy["token_agreement"], seconds))
            print(f"  {name}: {seconds * 1000:.1f} ms/token emulated", file=sys.stderr, flush=True)
    fastest = min(r[3] for r in rows)
    cpu = resolve_target(args.target).device.cpu
    print(f"\n{args.model} on {args.target} ({cpu}, emulated by qemu-user), {args.tokens} greedy tokens\n")
    print("| recipe | model MiB | token agreement | emulated ms/token | vs fastest |")
    print("|---|---|---|---|---|")
    for name, size, agreement, seconds in rows:
        print(f"| {name} | {size / 2**20:.1f} | {agreement:.1%} | {seconds * 1000:.1f} | {seconds / fastest:.2f}x |")


if __name__ == "__main__":
    main()
