#!/usr/bin/env python3
"""What MatMulNBits holds after load, by compute type, on this host and on an arm64 target's CPU under emulation.

    python scripts/bench_nbits_packing.py [--targets rpi5 rpi4] [--levels 1 4] [--block 32] [--pairs 8]

The memory model's MatMulNBits factors (packager/estimate_prepack.py NBITS_PACKED: the packed copy as a fraction of
the 4-bit weight, by accuracy_level and by the CPU's kernel family) are measured here: on this host, where the fit
stage runs, and on the devices, arm64, whose MLAS packs for its own kernels (NEON; KleidiAI with dotprod). It builds
a graph of E2B's widths: `--pairs` MLP pairs (1536 x 6144 and back) and a 262,144 x 1536 lm_head, every weight
distinct (onnxruntime shares the packed copy of identical weights, which would hide it), its data in an external
file as packager's bundles store it; then loads it in a fresh process, natively and inside the target's Debian
userland under qemu-user with the target's CPU model (`packager smoke --emulate`'s machinery, onnxruntime's aarch64
wheel), and reads
/proc/self/status after the load and after two runs (1 and 64 tokens). Each figure is taken above a one-weight
graph's in the same place, so the interpreter, onnxruntime and qemu's own memory cancel. "Resident after load" adds
the file pages (the mapped data and scales still held) to the anonymous memory (the packed copies), against the
4-bit data and scales as stored; the band beside each row is that place's kernel family's.

Memory is what the emulated process allocates for the guest (qemu-user maps the guest's memory as its own): the
packing code is the device's, the figures its layout's. Times are qemu's, not the device's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from packager.emulate import prepare  # noqa: E402
from packager.emulate_qemu import no_core_dumps  # noqa: E402
from packager.emulate_userland import emulate_cache  # noqa: E402
from packager.estimate_prepack import host_kernels, nbits_band  # noqa: E402
from packager.profile_types import nbits_compute  # noqa: E402
from packager.profiles import resolve_target  # noqa: E402

MiB = 2**20
HIDDEN, MLP, VOCAB = 1536, 6144, 262144

# Runs in a fresh process (host or guest): the model's memory after load and after runs, in KiB.
PROBE = """
import json, sys, numpy as np, onnxruntime as ort
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out
so = ort.SessionOptions(); so.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
load = status()
for n in (1, 64):
    s.run(None, {"x": np.random.default_rng(n).random((1, n, 1536), dtype=np.float32)})
print(json.dumps({"load": load, "run": status()}))
"""


def nbits_node(name: str, k: int, n: int, block: int, level: int, inp: str, out: str,
               seed: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    blocks = (k + block - 1) // block
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, blocks, block // 2), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) * 0.01).astype(np.float32)
    node = helper.make_node("MatMulNBits", [inp, f"{name}_q", f"{name}_s"], [out], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block, accuracy_level=level)
    return node, [numpy_helper.from_array(data, f"{name}_q"), numpy_helper.from_array(scales, f"{name}_s")]


def build(path: Path, block: int, level: int, pairs: int, head: int) -> tuple[int, int]:
    """The graph at `path` (data in path.data); returns its 4-bit bytes and its scales' bytes."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "x"
    for i in range(pairs):
        for name, k, n, out in ((f"up{i}", HIDDEN, MLP, f"h{i}"), (f"down{i}", MLP, HIDDEN, f"x{i}")):
            node, tensors = nbits_node(name, k, n, block, level, x, out, seed=len(nodes))
            nodes.append(node)
            inits += tensors
            x = out
    node, tensors = nbits_node("head", HIDDEN, head, block, level, x, "logits", seed=len(nodes))
    nodes.append(node)
    inits += tensors
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", HIDDEN])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", head])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    return (sum(len(t.raw_data) for t in inits if t.name.endswith("_q")),
            sum(len(t.raw_data) for t in inits if t.name.endswith("_s")))


def probe(command: list[str], env: dict[str, str] | None, model: Path) -> dict[str, Any]:
    proc = subprocess.run([*command, model.name], cwd=model.parent, env=env, capture_output=True, text=True,
                          timeout=3600, preexec_fn=no_core_dumps)
    if proc.returncode != 0:
        raise SystemExit(f"{model.name}: the probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def requirements(python: str, package: str, version: str) -> str:
    """A bundle's requirements whose packages an earlier emulated run installed (the cache is keyed by the text), or
    the runtime and numpy alone (installed now, as `packager smoke --emulate` does)."""
    for cached in sorted(emulate_cache().glob(f"site-py{python}-*/requirements.txt")):
        text = cached.read_text(encoding="utf-8")
        if f"{package}=={version}" in text.splitlines() and "numpy" in text:
            return text
    return f"{package}=={version}\nnumpy\n"


def emulated(target: str, work: Path) -> tuple[list[str], dict[str, str], str, str]:
    """The guest's python command for `target`'s CPU, as `packager smoke --emulate` prepares it, and its kernels."""
    profile = resolve_target(target)
    folder = work / f"fake-{target}"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"profile": profile.to_dict()}), encoding="utf-8")
    (folder / "requirements.txt").write_text(requirements(profile.os.python, profile.runtime.package,
                                                          profile.runtime.version), encoding="utf-8")
    (work / f"emu-{target}").mkdir()
    emu = prepare(folder, work / f"emu-{target}")
    return emu.command("-c", PROBE), emu.env(), f"{target} ({emu.cpu.model}, emulated)", profile.device.kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="*", default=["rpi5"], help="arm64 targets to emulate")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nbits-") as tmp:
        work = Path(tmp)
        places: list[tuple[list[str], dict[str, str] | None, str, str]] = [
            ([sys.executable, "-c", PROBE], None, "this host (native)", host_kernels())]
        places += [emulated(t, work) for t in args.targets]
        base = work / "base.onnx"
        build(base, args.block, 1, 0, 32)
        models = {level: (work / f"l{level}.onnx") for level in args.levels}
        nbits = {level: build(path, args.block, level, args.pairs, VOCAB) for level, path in models.items()}
        rows = []
        for command, env, where, kernels in places:
            ref = probe(command, env, base)
            for level, path in models.items():
                got = probe(command, env, path)
                anon = (got["load"]["RssAnon"] - ref["load"]["RssAnon"]) * 1024
                resident = anon + (got["load"]["RssFile"] - ref["load"]["RssFile"]) * 1024
                peak = (got["load"]["VmHWM"] - ref["load"]["VmHWM"]) * 1024
                mapped = (got["run"]["RssFile"] - ref["run"]["RssFile"]) * 1024
                rows.append((f"{where}, {kernels}", level, nbits[level], anon, resident, peak, mapped,
                             nbits_band(nbits_compute(level), args.block, (kernels,), HIDDEN)))
                print(f"  {where}, level {level}: done", file=sys.stderr, flush=True)
    print(f"\nMatMulNBits of E2B's widths ({args.pairs} MLP pairs and a {VOCAB:,}-row lm_head), block {args.block}, "
          "external data; figures above a one-weight graph's, in the same process kind\n")
    print("| where | accuracy_level | 4-bit MiB | scales MiB | anonymous after load | x 4-bit | resident after load "
          "| x 4-bit and scales | load peak | x 4-bit | file pages after runs | NBITS_PACKED (the band) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for where, level, (size, scales), anon, resident, peak, mapped, band in rows:
        print(f"| {where} | {level} | {size / MiB:.0f} | {scales / MiB:.0f} | {anon / MiB:.0f} | {anon / size:.2f} "
              f"| {resident / MiB:.0f} | {resident / (size + scales):.2f} | {peak / MiB:.0f} | {peak / size:.2f} "
              f"| {mapped / MiB:.0f} | {band[0]:.2f}-{band[1]:.2f} |")


if __name__ == "__main__":
    main()
