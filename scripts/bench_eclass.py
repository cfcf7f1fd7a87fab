"""The per-layer-embedding (PLE) table mapped against resident (issue 20, item 5), measured in onnxruntime.

A Gemma 4 E-class model with random weights, a small stack (6 layers, hidden 256, 2 of them KV-shared) and the real
vocabulary and PLE width: the table is 262,144 x 6 x 256 int8 (385 MiB). The E-class exporter runs on a copy with
a small PLE vocabulary (no multi-GB torch model to trace), and the real-size table is written into model.ple.data
as the exporter lays it out (page-aligned int8 rows, a scale per row). Two variants of the same graph:

    mapped    the table in model.ple.data (onnxruntime memory-maps it)
    inline    the table inside model.onnx (onnxruntime copies it into its own memory)

Each runs in a fresh process (the genai environment's onnxruntime 1.32): load, a prompt of N token ids drawn over
the whole vocabulary (the worst case: every token another row), 16 greedy steps; VmHWM and the PLE file's resident
pages. The table's pages are evicted from the page cache first (posix_fadvise), as on a device after boot: pages
already cached in large folios (a file just written) are mapped whole on first touch, and then most of the table
is resident after a few hundred tokens.

    python scripts/bench_eclass.py [--tokens 300 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

VOCAB, LAYERS, WIDTH, ALIGN = 262144, 6, 256, 65536
PLE = ("ple_rows", "ple_scales")

RUN = r"""
import json, re, sys
import numpy as np, onnxruntime as ort

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

def file_rss(suffix):
    rss, current = 0, ""
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = line.split()[-1]
        elif line.startswith("Rss:") and current.endswith(suffix):
            rss += int(line.split()[1]) * 1024
    return rss

so = ort.SessionOptions(); so.enable_cpu_mem_arena = False; so.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
load = status("VmHWM")
names = [i.name for i in s.get_inputs() if i.name.startswith("past")]
past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in s.get_inputs() if i.name in names}
ids = np.random.RandomState(0).randint(2, int(sys.argv[3]), size=int(sys.argv[2])).tolist()

def step(new, past, done):
    feeds = {"input_ids": np.array([new], np.int64), "attention_mask": np.ones((1, done + len(new)), np.int64),
             "position_ids": np.arange(done, done + len(new), dtype=np.int64)[None]}
    out = s.run(None, {**feeds, **past})
    return out[0], dict(zip(names, out[1:]))

# the prompt in chunks (sys.argv[4] tokens a pass, as the device's run.py prefills an E-class graph): one pass
# over an 8K prompt would hold every head's scores against the whole prompt
chunk = int(sys.argv[4])
for start in range(0, len(ids), chunk):
    logits, past = step(ids[start:start + chunk], past, start)
for n in range(16):
    logits, past = step([int(np.argmax(logits[0, -1]))], past, len(ids) + n)
print(json.dumps({"load_hwm": load, "hwm": status("VmHWM"), "ple_rss": file_rss("model.ple.data")}))
"""


def build(root: Path) -> None:
    from packager import eclass
    from packager.exporter_envs import GENAI
    from tiny_decoders import make_eclass

    source = root / "source"
    if not (source / "model.safetensors").is_file():
        make_eclass(source, GENAI.python, vocab_size=VOCAB, vocab_size_per_layer_input=512, hidden_size=256,
                    hidden_size_per_layer_input=WIDTH, intermediate_size=512, num_attention_heads=4, head_dim=64,
                    global_head_dim=128, sliding_window=512, max_position_embeddings=16384)
    mapped = root / "mapped"
    shutil.rmtree(mapped, ignore_errors=True)
    eclass.export(source, mapped, root / "work")
    rng = np.random.default_rng(0)
    tables = {"ple_rows": rng.integers(-127, 128, size=(VOCAB, LAYERS * WIDTH), dtype=np.int8),
              "ple_scales": np.full((VOCAB, 1), 0.01, dtype=np.float32)}
    model = onnx.load(mapped / "model.onnx", load_external_data=False)
    inline = onnx.ModelProto()
    inline.CopyFrom(model)
    with open(mapped / "model.ple.data", "wb") as f:
        for t in (t for t in model.graph.initializer if t.name in PLE):
            offset = -(-f.tell() // ALIGN) * ALIGN
            f.write(b"\0" * (offset - f.tell()) + tables[t.name].tobytes())
            _place(t, tables[t.name].shape, {"location": "model.ple.data", "offset": str(offset),
                                             "length": str(tables[t.name].nbytes)})
    onnx.save(model, mapped / "model.onnx")
    (root / "inline").mkdir(exist_ok=True)
    shutil.copyfile(mapped / "model.onnx.data", root / "inline" / "model.onnx.data")
    for t in (t for t in inline.graph.initializer if t.name in PLE):
        _place(t, tables[t.name].shape, {})
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = tables[t.name].tobytes()
    onnx.save(inline, root / "inline" / "model.onnx")


def _place(t: onnx.TensorProto, shape: tuple[int, ...], external: dict[str, str]) -> None:
    del t.dims[:]
    t.dims.extend(shape)
    del t.external_data[:]
    for key, value in external.items():
        t.external_data.add(key=key, value=value)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    from packager.exporter_envs import GENAI

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-eclass"))
    parser.add_argument("--chunk", type=int, default=256, help="prompt tokens per pass")
    args = parser.parse_args()
    build(args.root)
    table = (args.root / "mapped" / "model.ple.data").stat().st_size
    print(f"PLE table {table / 2**20:.0f} MiB ({VOCAB} x {LAYERS} x {WIDTH} int8, a scale per row)")
    print(f"{'variant':8} {'tokens':>6} {'load MiB':>9} {'peak MiB':>9} {'PLE resident MiB':>17}")
    for variant in ("mapped", "inline"):
        for tokens in args.tokens:
            evict(args.root / "mapped" / "model.ple.data")
            out = subprocess.run([str(GENAI.python), "-c", RUN, str(args.root / variant / "model.onnx"), str(tokens),
                                  str(VOCAB), str(args.chunk)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.splitlines()[-1])
            resident = r["ple_rss"] if variant == "mapped" else table
            print(f"{variant:8} {tokens:>6} {r['load_hwm'] / 2**20:>9.0f} {r['hwm'] / 2**20:>9.0f} "
                  f"{resident / 2**20:>17.0f}", flush=True)


if __name__ == "__main__":
    main()
