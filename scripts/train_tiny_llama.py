#!/usr/bin/env python3
"""Train the sample decoder `sample:tiny-llama`: a small Llama (GQA, tied embeddings, RoPE)
trained for a few CPU minutes on English prose from the Python standard library, written as a
Hugging Face folder (fp16 weights, fp32 config) with its own byte-level BPE tokenizer.

    python scripts/train_tiny_llama.py [--out packager/data/tiny-llama] [--steps N | --minutes M]
                                       [--seed S] [--threads T] [--force]

The point of the model is a peaked, meaningful next-token distribution (unlike random weights),
so that greedy-token agreement between the fp32 model and a quantized copy measures fidelity.
Every Linear's input dimension and the vocabulary are multiples of 32 (int4 MatMulNBits, block
size 32).

Determinism: the corpus is collected from the running interpreter's standard library in sorted
order, tokenizer and model training use fixed seeds, and torch runs with deterministic
algorithms on one thread (--threads). The same Python version, library versions and thread
count give the same folder. `--steps` (the default) fixes the run; `--minutes` times the first
steps, picks the step count that fits, prints it and records it in the README, so the run can be
repeated with that `--steps`.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "packager" / "data" / "tiny-llama"

# Model shape. head_dim = 256 / 8 = 32; q/o are 8 x 32 = 256 wide, k/v 4 x 32 = 128.
# Linear input dims: 256 (q, k, v, o, gate, up, lm_head) and 512 (down), all multiples of 32.
VOCAB = 2048
HIDDEN = 256
LAYERS = 4
HEADS = 8
KV_HEADS = 4
INTERMEDIATE = 512
MAX_POSITIONS = 512
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0, 1, 2, 3

# Training.
SEQ_LEN = 128
BATCH = 4
LR = 2e-3
MIN_LR_FRACTION = 0.1
WARMUP = 30
WEIGHT_DECAY = 0.1
DEFAULT_STEPS = 800
VAL_EVERY = 50          # every 50th paragraph (after shuffling) is held out

PROMPTS = ["The function returns", "This module provides", "If the file does not exist,",
           "Return a list of", "The default value is"]

CORPUS_DESCRIPTION = (
    "English prose from the CPython {ver} standard library, read from the interpreter's own "
    "source files (no download): the docstrings of every module, class and function in "
    "{stdlib} (sorted file list; test/, tests/, idlelib/, lib2to3/, turtledemo/, ensurepip/, "
    "site-packages/ and config-* excluded), parsed with `ast` (nothing imported), plus the "
    "Python reference-manual topics in pydoc_data/topics.py. Docstrings are split into "
    "paragraphs and only prose paragraphs are kept: ASCII, at least 6 words and 30 characters, "
    "starting with a capital letter and ending in . ! ? or :, at most 1% code characters, no "
    "doctest or shell lines; whitespace is collapsed and exact duplicates dropped."
)


# ------------------------------------------------------------------------------------- corpus

CODE_CHARS = set("{}[]<>=|\\`#@$~*_")
SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo", "__pycache__",
             "ensurepip"}


def _prose(paragraph: str) -> str | None:
    lines = paragraph.split("\n")
    if any(line.lstrip().startswith((">>>", "...", "$ ", "%")) for line in lines):
        return None
    text = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines)).strip()
    if len(text) < 30 or not text.isascii():
        return None
    if not text[0].isupper() or text[-1] not in ".!?:":
        return None
    if len(text.split()) < 6:
        return None
    if sum(c in CODE_CHARS for c in text) > 0.01 * len(text):
        return None
    if sum(c.isalpha() or c == " " for c in text) / len(text) < 0.88:
        return None
    return text


def collect_corpus() -> tuple[list[str], Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py")
        if not (set(p.relative_to(stdlib).parts[:-1]) & SKIP_DIRS)
        and not p.relative_to(stdlib).parts[0].startswith("config-")
    )
    docs: list[str] = []
    for f in files:
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):  # breadth-first, in source order: deterministic
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    docs.append(doc)
    topics_file = stdlib / "pydoc_data" / "topics.py"
    for stmt in ast.parse(topics_file.read_text(encoding="utf-8")).body:
        if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "topics":
            topics = ast.literal_eval(stmt.value)
            docs += [topics[k] for k in sorted(topics)]
    paragraphs, seen = [], set()
    for doc in docs:
        for para in re.split(r"\n\s*\n", doc):
            text = _prose(para)
            if text and text not in seen:
                seen.add(text)
                paragraphs.append(text)
    return paragraphs, stdlib


# ---------------------------------------------------------------------------------- tokenizer

def train_tokenizer(paragraphs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, min_frequency=2, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(paragraphs, trainer=trainer, length=len(paragraphs))
    if tok.get_vocab_size() != VOCAB:
        raise SystemExit(f"tokenizer vocabulary is {tok.get_vocab_size()}, expected {VOCAB}")
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    # <s> in front of every sequence: Tokenizer.encode(prompt).ids is the model's prompt.
    # trim_offsets=False keeps character offsets of the text as they are.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                      special_tokens=[("<s>", 1)]),
    ])
    return tok


def write_tokenizer_files(tok, out: Path) -> None:
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, s in enumerate(SPECIALS)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "model_max_length": MAX_POSITIONS,
        "padding_side": "left",   # decoder: pad on the left for batched generation
        "model_input_names": ["input_ids", "attention_mask"],   # no token_type_ids
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# -------------------------------------------------------------------------------------- model

def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=HIDDEN // HEADS, hidden_act="silu", max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, initializer_range=0.02, use_cache=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
        architectures=["LlamaForCausalLM"],
    )


def make_chunks(tok, paragraphs: list[str], eos: int):
    import torch

    ids: list[int] = []
    for enc in tok.encode_batch(paragraphs):
        ids.extend(enc.ids)   # starts with <s>
        ids.append(eos)
    n = len(ids) // SEQ_LEN
    return torch.tensor(ids[: n * SEQ_LEN], dtype=torch.long).view(n, SEQ_LEN), len(ids)


def lr_at(step: int, total: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, total - WARMUP))
    return LR * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, chunks) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), 32):
            batch = chunks[i:i + 32]
            total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
            count += len(batch)
    model.train()
    return total / count


def greedy(model, tok, prompt: str, new_tokens: int = 24) -> str:
    import torch

    ids = tok.encode(prompt).ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, pad_token_id=3)
    return tok.decode(out[0].tolist(), skip_special_tokens=True)


# --------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default %(default)s)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {DEFAULT_STEPS})")
    g.add_argument("--minutes", type=float, default=None,
                   help="train for about this long: times the first steps and picks the step count")
    ap.add_argument("--seed", type=int, default=0)
    # One thread by default: the result then does not depend on the machine's core count, and on a
    # shared 2-core machine one thread trains faster than two fighting over the cores.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; changes the bits)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out folder")
    args = ap.parse_args(argv)

    out: Path = args.out.resolve()
    if out.exists() and not out.is_dir():
        print(f"{out} exists and is not a folder", file=sys.stderr)
        return 1
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"{out} exists and is not empty; pass --force to overwrite it", file=sys.stderr)
        return 1

    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM
    from transformers import logging as hf_logging

    t_start = time.monotonic()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    # Corpus.
    paragraphs, stdlib = collect_corpus()
    corpus_text = "\n".join(paragraphs)
    corpus_sha = hashlib.sha256(corpus_text.encode()).hexdigest()
    print(f"corpus: {len(paragraphs)} paragraphs, {len(corpus_text)} characters, sha256 {corpus_sha[:16]}")
    order = list(range(len(paragraphs)))
    random.Random(args.seed).shuffle(order)
    val_paras = [paragraphs[i] for k, i in enumerate(order) if k % VAL_EVERY == 0]
    train_paras = [paragraphs[i] for k, i in enumerate(order) if k % VAL_EVERY != 0]

    # Tokenizer (trained on the training paragraphs only, in corpus order).
    held_out = set(val_paras)
    tok = train_tokenizer([p for p in paragraphs if p not in held_out])
    tokenizer_sha = hashlib.sha256(tok.to_str().encode()).hexdigest()
    train_chunks, train_tokens = make_chunks(tok, train_paras, eos=2)
    val_chunks, val_tokens = make_chunks(tok, val_paras, eos=2)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, sha256 {tokenizer_sha[:16]}; "
          f"{train_tokens} training tokens ({len(train_chunks)} x {SEQ_LEN}), "
          f"{val_tokens} held-out tokens ({len(val_chunks)} x {SEQ_LEN}); "
          f"{len(corpus_text) / (train_tokens + val_tokens):.2f} characters per token")

    # Model.
    config = llama_config()
    model = LlamaForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once
    print(f"model: {n_params} parameters ({n_params / 1e6:.2f}M)")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)
    print(f"initial held-out loss {evaluate(model, val_chunks):.3f} (ln {VOCAB} = {math.log(VOCAB):.3f})")

    gen = torch.Generator().manual_seed(args.seed)
    perm, pos = torch.randperm(len(train_chunks), generator=gen), 0
    total = args.steps if args.steps is not None else (None if args.minutes else DEFAULT_STEPS)
    t_train = time.monotonic()
    ema = None
    step = 0
    losses: list[float] = []
    while total is None or step < total:
        if pos + BATCH > len(perm):
            perm, pos = torch.randperm(len(train_chunks), generator=gen), 0
        batch = train_chunks[perm[pos:pos + BATCH]]
        pos += BATCH
        lr = lr_at(step, total or 10**9)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if total is None and step == 10:
            per_step = (time.monotonic() - t_train) / step
            total = max(WARMUP + 10, int(args.minutes * 60 / per_step))
            print(f"{per_step:.2f} s/step: {total} steps fit in {args.minutes} minutes "
                  f"(repeat with --steps {total})")
        if step % 10 == 0 or step == total:
            print(f"step {step:4d}/{total}  loss {loss.item():.3f}  avg {ema:.3f}  lr {lr:.2e}  "
                  f"{time.monotonic() - t_train:.0f}s", flush=True)
    train_seconds = time.monotonic() - t_train
    final_train = sum(losses[-20:]) / len(losses[-20:])
    val_fp32 = evaluate(model, val_chunks)
    print(f"trained {total} steps in {train_seconds:.0f}s; training loss (mean of last 20 steps) "
          f"{final_train:.3f}, held-out loss {val_fp32:.3f} (perplexity {math.exp(val_fp32):.1f})")

    # Write the folder: fp16 weights, config says float32 so transformers loads fp32.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config_dict = config.to_diff_dict()      # what save_pretrained writes
    config_dict["torch_dtype"] = "float32"   # read by older transformers
    config_dict["dtype"] = "float32"         # transformers >= 4.56
    config_dict["architectures"] = ["LlamaForCausalLM"]
    (out / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}   # tied to model.embed_tokens.weight
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)
    gen_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    gen_config_dict = gen_config.to_diff_dict()
    (out / "generation_config.json").write_text(json.dumps(gen_config_dict, indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(tok, out)

    # Reload the written folder the way users will, and check it.
    hf_logging.set_verbosity_warning()
    loaded, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"reloading {out} reported {bad}")
    assert next(loaded.parameters()).dtype == torch.float32
    loaded.eval()
    val_fp16 = evaluate(loaded, val_chunks)
    examples = [greedy(loaded, tok, p) for p in PROMPTS]
    print(f"held-out loss of the written (fp16-stored) weights: {val_fp16:.3f}")
    for e in examples:
        print(f"  greedy: {e!r}")

    files = sorted(p for p in out.iterdir())
    sizes = {p.name: p.stat().st_size for p in files}
    command = "python scripts/train_tiny_llama.py --force" + (
        f" --steps {total}" if total != DEFAULT_STEPS else "") + (
        f" --seed {args.seed}" if args.seed != 0 else "") + (
        f" --threads {args.threads}" if args.threads != 1 else "")
    write_readme(out, dict(
        n_params=n_params, paragraphs=len(paragraphs), chars=len(corpus_text), corpus_sha=corpus_sha,
        stdlib=stdlib, tokenizer_sha=tokenizer_sha, train_tokens=train_tokens, val_tokens=val_tokens,
        steps=total, seconds=train_seconds, final_train=final_train, val_fp32=val_fp32,
        val_fp16=val_fp16, examples=examples, sizes=sizes, command=command, seed=args.seed,
        threads=args.threads, torch=torch.__version__,
    ))
    total_bytes = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total_bytes / 2**20:.2f} MiB) in {time.monotonic() - t_start:.0f}s")
    return 0


def write_readme(out: Path, r: dict) -> None:
    import textwrap

    import tokenizers
    import transformers

    corpus = textwrap.fill(CORPUS_DESCRIPTION.format(ver=platform.python_version(), stdlib=r["stdlib"]), 96)
    weights = r["sizes"]["model.safetensors"]
    ex = "\n".join(f"    {e!r}" for e in r["examples"])
    text = f"""# tiny-llama: the sample decoder `sample:tiny-llama`

A small Llama decoder ({r['n_params']:,} parameters) trained for a few CPU minutes on English
prose from the Python standard library. It is not useful for anything but testing: its next-token
distribution is peaked and meaningful (unlike random weights), so greedy-token agreement between
this fp32 model and a quantized copy is a meaningful fidelity measure.

## Shape

LlamaForCausalLM: hidden {HIDDEN}, {LAYERS} layers, {HEADS} attention heads of {HIDDEN // HEADS},
{KV_HEADS} key/value heads (grouped-query attention), intermediate {INTERMEDIATE} (SiLU gated MLP),
vocabulary {VOCAB}, RoPE (theta 10000), max_position_embeddings {MAX_POSITIONS}, tied input/output
embeddings. Every Linear's input dimension ({HIDDEN}, {INTERMEDIATE}) and the vocabulary are
multiples of 32 (int4 MatMulNBits, block size 32).

The weights are stored in float16 ({weights:,} bytes) to keep the committed file small;
config.json says float32, so `AutoModelForCausalLM.from_pretrained` loads them as float32.

## Tokenizer

Byte-level BPE (`tokenizers`), vocabulary {VOCAB}, trained on the training paragraphs of the
same corpus. Special tokens: `<unk>` 0 (never produced by a byte-level model), `<s>` 1 (bos),
`</s>` 2 (eos), `<pad>` 3. The post-processor puts `<s>` in front of every encoding, so
`tokenizers.Tokenizer.from_file("tokenizer.json").encode(prompt).ids` is the model's prompt; the
byte-level decoder turns generated ids back into text. tokenizer_config.json names
PreTrainedTokenizerFast, model_max_length {MAX_POSITIONS}.

## Corpus

{corpus}

{r['paragraphs']:,} paragraphs, {r['chars']:,} characters; sha256 of the paragraphs joined by
newlines: `{r['corpus_sha']}`.
Every {VAL_EVERY}th paragraph after a seeded shuffle is held out: {r['train_tokens']:,} training
and {r['val_tokens']:,} held-out tokens. Each paragraph is `<s> text </s>`, packed into
{SEQ_LEN}-token sequences.

License of the corpus: the Python standard library's docstrings and pydoc topics are part of
CPython, distributed under the Python Software Foundation License Version 2 (PSF-2.0).

## Training

AdamW (betas 0.9/0.95, weight decay {WEIGHT_DECAY} on matrices), peak learning rate {LR},
{WARMUP} warm-up steps then cosine to {MIN_LR_FRACTION:g} x peak, gradient clipping 1.0, batch
{BATCH} x {SEQ_LEN} tokens, {r['steps']} steps ({r['steps'] * BATCH * SEQ_LEN:,} tokens), seed {r['seed']},
{r['threads']} torch thread(s), deterministic algorithms: {r['seconds']:.0f} s of training on the
build machine's CPU (2 cores shared with other work).

- final training loss (mean of the last 20 steps): {r['final_train']:.3f}
- held-out loss: {r['val_fp32']:.3f} (perplexity {math.exp(r['val_fp32']):.1f}) in fp32,
  {r['val_fp16']:.3f} with the fp16-stored weights as written (uniform over {VOCAB} would be
  {math.log(VOCAB):.3f})

Greedy continuations of the written model (up to 24 new tokens; they stop at `</s>`):

{ex}

## Reproducing

    HF_HUB_OFFLINE=1 {r['command']}

Built with Python {platform.python_version()}, torch {r['torch']}, transformers
{transformers.__version__}, tokenizers {tokenizers.__version__}. The corpus comes from the running
interpreter's standard library, so another Python version gives another corpus; the same
versions and thread count give the same files, apart from the training time in this README
(tokenizer.json sha256 starts `{r['tokenizer_sha'][:16]}`).
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
