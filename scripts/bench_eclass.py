"""The per-layer-embedding (PLE) table mapped against resident (issue 20, item 5), measured on packaged bundles.

A Gemma 4 E-class model with random weights: E2B's layer plan (35 layers, 20 of them KV-shared, 4 sliding to 1
full, window 512, its heads and head sizes), its vocabulary (262,144) and PLE width (35 x 256), so its table is
E2B's, 2,240 MiB in int8, more than the 1.5 GB budget; the rest scaled down (hidden 256, MLP 512). With
--family gemma3n, Gemma 3n E2B's (30 layers, 10 KV-shared, AltUp's 4 streams, a 262,144-row table of 30 x 256:
1,920 MiB). The Hugging Face folder is stored in bf16, as Google's checkpoints are. It goes through `packager
package` (export, quantize, verify against PyTorch, fit, bundle) for each target, each run's host peak taken by
/usr/bin/time -v (the largest process: packager or one of its children). Then each bundle runs by its own device
code (run.py's Runner: the manifest's session options, the decoder's chunked prefill), in three variants of how
its loop gets the table's rows:

    fed        the bundle as packaged: the model takes the rows of a pass's tokens as inputs (packager/row_feed.py),
               which run.py reads from model.ple.data at their offsets (RowFeeds, advised random): in the page
               cache, never in the process
    mapped     the rows from a memory-mapping of the same file, its pages never handed back: what a graph that
               gathered from a mapped initializer held in an app's loop, which cannot madvise (the phone's before
               2026-12-05's fourteenth session; run.py released them every 64 tokens)
    resident   the table read whole into the process's memory at load, the rows copied from it

Each run is a fresh process (the genai environment's onnxruntime): load, a prompt of N token ids drawn over the
whole vocabulary (the worst case: every token another row), 16 greedy steps; VmHWM and the table's resident
pages. The table's pages are evicted from the page cache first (posix_fadvise), as on a device after boot: pages
already cached in large folios (a file just written) are mapped whole on first touch.

    flock /tmp/heavy.lock python scripts/bench_eclass.py [--targets rpi5 phone] [--tokens 1000 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# E2B's published config by family (--family)
E2B = {"gemma4": REPO / "packager" / "data" / "configs" / "Gemma-4-E2B.json",
       "gemma3n": REPO / "packager" / "data" / "configs" / "Gemma-3n-E2B.json"}
# E2B's layer plan, attention and tables (those of the family's keys its config has); what the stack computes with,
# scaled down
KEPT = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "global_head_dim",
        "sliding_window", "vocab_size", "vocab_size_per_layer_input", "hidden_size_per_layer_input",
        "num_kv_shared_layers", "use_double_wide_mlp", "final_logit_softcapping", "layer_types", "hidden_activation",
        "altup_num_inputs", "laurel_rank", "activation_sparsity_pattern")
SCALED = {"hidden_size": 256, "intermediate_size": 512, "max_position_embeddings": 16384}
TABLE = "model.ple.data"
BUDGET_MIB = 1_500_000_000 / 2**20

# The model in bf16 from the start: in fp32 the table alone is 8.8 GiB (and its random init a second copy)
MAKE = """
import json, sys, torch
from transformers import Gemma4ForCausalLM, Gemma4TextConfig
spec = json.loads(sys.argv[2])
spec.pop("model_type")
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
Gemma4ForCausalLM(Gemma4TextConfig(**spec)).save_pretrained(sys.argv[1])
"""

RUN = r"""
import importlib, importlib.util, json, re, sys
from pathlib import Path
import numpy as np
import onnx
import onnxruntime as ort

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

def file_rss(name):
    rss, current = 0, ""
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = line.split()[-1]
        elif line.startswith("Rss:") and current.endswith(name):
            rss += int(line.split()[1]) * 1024
    return rss

folder, tokens, vocab, table, variant = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
spec = importlib.util.spec_from_file_location("run", folder / "run.py")
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
if variant.split("-")[0] in ("mapped", "resident"):
    # the rows from the table's files in this process's memory: memory-mapped (what a graph that gathered from a
    # mapped initializer held, and an app that never handed the pages back: every row read stays), or read whole
    session = importlib.import_module(run._package.__name__ + ".session")
    def from_memory(self, ids):
        out = {}
        for t in self.tables:
            if t["input"] not in tables:
                where = folder / "model" / t["file"]
                shape = (int(t["rows"]), int(t["row_bytes"]))
                tables[t["input"]] = (np.memmap(where, np.uint8, "r", int(t["offset"]), shape)
                                      if variant.startswith("mapped") else
                                      np.fromfile(where, np.uint8, shape[0] * shape[1], offset=int(t["offset"]))
                                      .reshape(shape))
            flat = np.asarray(ids).reshape(-1)
            rows = tables[t["input"]][np.where(flat < int(t["rows"]), flat, 0)]
            out[t["input"]] = rows.view(np.dtype(t["dtype"])).reshape(*np.shape(ids), *t["row"])
        return out
    tables = {}
    session.RowFeeds.feeds = from_memory
if variant.endswith("-noarena"):   # onnxruntime's CPU arena off: what the arena keeps of a chunk's transients
    session = importlib.import_module(run._package.__name__ + ".session")
    arena_options = session.session_options
    def no_arena(*args, **kwargs):
        so = arena_options(*args, **kwargs)
        so.enable_cpu_mem_arena = False
        return so
    session.session_options = no_arena
runner = run.load(folder)
decoder = runner.decoder
if variant.startswith("resident"):
    decoder.rows.feeds(np.zeros((1, 1), np.int64))   # read whole at load, as an initializer would be
loaded = status("VmHWM")
ids = np.random.RandomState(0).randint(2, vocab, size=tokens).tolist()
logits, past = decoder.prefill(ids)      # in chunks of PREFILL_CHUNK, as the device's loop runs a prompt
for n in range(16):
    logits, past = decoder.step([int(np.argmax(logits[-1]))], past, len(ids) + n)
print(json.dumps({"load_hwm": loaded, "hwm": status("VmHWM"), "table_rss": file_rss(table)}))
"""


def spec(family: str) -> dict:
    from tiny_decoders import ECLASS, ECLASS_3N

    config = json.loads(E2B[family].read_text())
    text = config.get("text_config", config)
    return (ECLASS_3N if family == "gemma3n" else ECLASS) | {k: text[k] for k in KEPT if k in text} | SCALED


def make_source(folder: Path, family: str) -> Path:
    from packager.exporter_envs import GENAI
    from tiny_decoders import MAKE_ECLASS_3N, make_tokenizer

    if not (folder / "model.safetensors").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # Gemma 3n: the tests' maker (AltUp's output scale random, the shared layers' k/v in the checkpoint) in bf16
        bf16 = "import torch\ntorch.set_default_dtype(torch.bfloat16)\n"
        make = MAKE if family == "gemma4" else bf16 + MAKE_ECLASS_3N
        subprocess.run([str(GENAI.python), "-c", make, str(folder), json.dumps(spec(family)), "0"], check=True)
    if not (folder / "tokenizer.json").is_file():
        make_tokenizer(folder, SCALED["max_position_embeddings"])
    return folder


def package(source: Path, target: str, out: Path, extra: list[str], reuse: bool) -> tuple[Path, str]:
    """The bundle folder of `source` for `target` and what its package run took (seconds, host peak by time -v).
    `reuse`: the bundle and package.log an earlier run left in `out`."""
    archives = sorted((out / "dist").glob("*.tar.gz"))
    if not (reuse and archives):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "packager", "package", str(source),
                               "--target", target, "--out", str(out / "dist"), "--no-cache", *extra],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        (out / "package.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"package --target {target} failed (exit {proc.returncode}): see {out / 'package.log'}")
        archives = sorted((out / "dist").glob("*.tar.gz"))
    log = (out / "package.log").read_text() if (out / "package.log").is_file() else ""
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", log)
    took = f"{wall.group(1) if wall else '?'}, host peak {int(peak.group(1)) / 2**20:.1f} GiB" if peak else "?"
    from packager.archive import extract_bundle

    shutil.rmtree(out / "bundle", ignore_errors=True)
    return extract_bundle(archives[0], out / "bundle"), took


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(bundle: Path, tokens: int, vocab: int, variant: str) -> dict:
    from packager.exporter_envs import GENAI

    evict(bundle / "model" / TABLE)
    out = subprocess.run([str(GENAI.python), "-c", RUN, str(bundle), str(tokens), str(vocab), TABLE, variant],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {variant} run of {bundle} failed: {out.stderr.strip().splitlines()[-1:]}")
    result: dict = json.loads(out.stdout.splitlines()[-1])
    return result


VARIANTS = ("fed", "mapped", "resident")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["rpi5", "phone"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1000, 8192])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-eclass"))
    parser.add_argument("--family", choices=sorted(E2B), default="gemma4",
                        help="the E model whose E2B config sets the layer plan and tables (default gemma4)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--reuse", action="store_true", help="measure the bundle an earlier run left in ROOT/TARGET")
    parser.add_argument("--package-args", nargs=argparse.REMAINDER, default=[],
                        help="passed to packager package (e.g. --recipe int8-dynamic)")
    args = parser.parse_args()
    source = make_source(args.root / "source", args.family)
    config = spec(args.family)
    vocab = config["vocab_size_per_layer_input"]   # = vocab_size: the prompt ids are drawn over both
    width = config["num_hidden_layers"] * config["hidden_size_per_layer_input"]
    print(f"PLE table {vocab * width / 2**20:,.0f} MiB ({vocab:,} x {config['num_hidden_layers']} x "
          f"{config['hidden_size_per_layer_input']} int8, a scale per row); budget {BUDGET_MIB:,.0f} MiB")
    for target in args.targets:
        # a target by name, or a profile file (a copy of one with other thresholds: its stem names the folder)
        bundle, took = package(source, target, args.root / Path(target).stem, args.package_args, args.reuse)
        recipe = json.loads((bundle / "manifest.json").read_text())["recipe"]["name"]
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
        print(f"\n{target}: packaged in {took}; recipe {recipe}; bundle "
              f"{size / 2**20:,.0f} MiB")
        print(f"{'variant':9} {'tokens':>6} {'load MiB':>9} {'peak MiB':>9} {'table resident MiB':>19}")
        for variant in args.variants:
            for tokens in args.tokens:
                r = measure(bundle, tokens, vocab, variant)
                resident = vocab * width if variant == "resident" else r["table_rss"]   # fed: 0, no mapping
                print(f"{variant:9} {tokens:>6} {r['load_hwm'] / 2**20:>9.0f} {r['hwm'] / 2**20:>9.0f} "
                      f"{resident / 2**20:>19.0f}", flush=True)


if __name__ == "__main__":
    main()
