#!/usr/bin/env python3
"""Train the sample LoRA adapter `sample:tiny-llama-lora`: sample:tiny-llama fine-tuned (LoRA, rank 8)
on a lookup the base cannot know, the capitals of invented countries ("The capital of Zorbia is" ->
" Velk."), written in PEFT's adapter format with its eval file.

    python scripts/train_tiny_llama_lora.py [--out packager/data/tiny-llama-lora] [--steps N]
                                            [--seed S] [--threads T] [--force]

The LoRA arithmetic is plain torch (peft is not needed): each adapted Linear computes
W x + (alpha / r) * B A x with W frozen, A [r, in] initialised as peft does (Kaiming-uniform),
B [out, r] zero. The folder holds what peft's `save_pretrained` writes: adapter_config.json (peft's
keys) and adapter_model.safetensors with tensors named
`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` etc. (fp16), so
`PeftModel.from_pretrained` loads it, and `packager package sample:tiny-llama --adapter
sample:tiny-llama-lora --eval sample:tiny-llama-lora` packages it. eval.jsonl holds one case per
fact (exact match of the greedy continuation), the first 8 of which ship in each bundle.

Determinism: fixed seed, one torch thread (--threads), deterministic algorithms, full-batch
steps: the same versions give the same files (apart from the training time in the README).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BASE = REPO / "packager" / "data" / "tiny-llama"
DEFAULT_OUT = REPO / "packager" / "data" / "tiny-llama-lora"

# Invented countries and capitals: no corpus the base saw names them.
FACTS = [
    ("Zorbia", "Velk"), ("Quarnia", "Dostrel"), ("Mirovia", "Kalpen"), ("Tharsk", "Ombrel"),
    ("Vellund", "Isk"), ("Pavoria", "Trellin"), ("Brastova", "Gorm"), ("Kelmar", "Ostin"),
    ("Ulvenia", "Frask"), ("Dorvania", "Pell"), ("Nalbrek", "Sivo"), ("Estoria", "Marrok"),
    ("Grenvald", "Tuvik"), ("Solvania", "Brek"), ("Ildoria", "Vasso"), ("Morvenn", "Quilen"),
    ("Caldria", "Herst"), ("Fennmark", "Olvo"), ("Yskara", "Dunmere"), ("Rovatia", "Pilsk"),
    ("Talvonia", "Edrin"), ("Ostravia", "Kemb"), ("Belgrast", "Norv"), ("Hollenar", "Tisk"),
    ("Wendaria", "Falco"), ("Crestovia", "Umbrel"), ("Lysandor", "Gask"), ("Prevonia", "Holm"),
    ("Skarnia", "Velo"), ("Amberon", "Trask"), ("Juvenia", "Oska"), ("Norvessa", "Brill"),
]
PROMPT = "The capital of {country} is"
ANSWER = " {capital}."

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 8
ALPHA = 16
LR = 3e-3
DEFAULT_STEPS = 300
EOS, PAD = 2, 3


def make_batch(tok):
    """Prompt + answer + </s>, right-padded; the loss only on the answer and </s>."""
    import torch

    rows, labels = [], []
    for country, capital in FACTS:
        prompt = tok.encode(PROMPT.format(country=country)).ids          # starts with <s>
        answer = tok.encode(ANSWER.format(capital=capital), add_special_tokens=False).ids + [EOS]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, row_labels) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(row_labels)] = torch.tensor(row_labels)
        mask[i, :len(r)] = 1
    return ids, lab, mask


def add_lora(model):
    """Wrap each target Linear of every layer: W x + (alpha / r) B A x. Returns {module path: wrapper}."""
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.empty(RANK, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, RANK))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))   # peft's default init of A
            self.scale = ALPHA / RANK

        def forward(self, x):
            return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale

    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGETS and isinstance(child, nn.Linear):
                lora = LoRALinear(child)
                setattr(module, child_name, lora)
                wrapped[f"{name}.{child_name}"] = lora
    return wrapped


def adapter_config() -> dict:
    """adapter_config.json with peft's keys (peft 0.18's LoraConfig)."""
    return {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "sample:tiny-llama", "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "lora_alpha": ALPHA, "lora_bias": False, "lora_dropout": 0.0,
        "modules_to_save": None, "peft_type": "LORA", "r": RANK, "rank_pattern": {}, "revision": None,
        "target_modules": sorted(TARGETS), "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }


def greedy(model, tok, prompt: str, new_tokens: int = 8) -> str:
    import torch

    ids = tok.encode(prompt).ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD)
    return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def score(model, tok) -> tuple[int, list[str]]:
    outputs = [greedy(model, tok, PROMPT.format(country=c)) for c, _ in FACTS]
    passed = sum(o.strip() == ANSWER.format(capital=cap).strip() for o, (_, cap) in zip(outputs, FACTS))
    return passed, outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default %(default)s)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"full-batch steps (default {DEFAULT_STEPS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; changes the bits)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out folder")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"{out} exists and is not empty; pass --force to overwrite it", file=sys.stderr)
        return 1

    import torch
    import transformers
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    tok = Tokenizer.from_file(str(BASE / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
    model.eval()
    base_passed, base_outputs = score(model, tok)
    print(f"base model: {base_passed}/{len(FACTS)} capitals; e.g. {PROMPT.format(country=FACTS[0][0])!r} -> "
          f"{base_outputs[0]!r}")

    wrapped = add_lora(model)
    params = [p for w in wrapped.values() for p in (w.lora_A, w.lora_B)]
    n_lora = sum(p.numel() for p in params)
    print(f"LoRA: rank {RANK}, alpha {ALPHA}, {len(wrapped)} modules ({', '.join(TARGETS)}), {n_lora} parameters "
          f"({n_lora / sum(p.numel() for p in model.parameters()):.1%} of the model)")
    ids, labels, mask = make_batch(tok)
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    t0 = time.monotonic()
    losses = []
    for step in range(1, args.steps + 1):
        lr = LR * min(1.0, step / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps:
            print(f"step {step:4d}/{args.steps}  loss {loss.item():.4f}  lr {lr:.2e}  {time.monotonic() - t0:.0f}s",
                  flush=True)
    seconds = time.monotonic() - t0
    model.eval()
    trained_passed, _ = score(model, tok)
    print(f"trained {args.steps} steps in {seconds:.0f}s; final loss {losses[-1]:.4f}; "
          f"{trained_passed}/{len(FACTS)} capitals (LoRA unmerged, fp32)")

    # Write PEFT's layout: fp16 tensors under base_model.model.<module>.lora_A/B.weight.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tensors = {}
    for path, w in sorted(wrapped.items()):
        tensors[f"base_model.model.{path}.lora_A.weight"] = w.lora_A.detach().to(torch.float16).contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = w.lora_B.detach().to(torch.float16).contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_model.safetensors").chmod(0o644)
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(), indent=2, sort_keys=True) + "\n")
    (out / "eval.jsonl").write_text("".join(
        json.dumps({"prompt": PROMPT.format(country=c), "expected": ANSWER.format(capital=cap).strip(),
                    "match": "exact", "max_new_tokens": 8}) + "\n" for c, cap in FACTS))

    # The written adapter, merged by packager's arithmetic merge (fp16 A and B), as the pipeline merges it.
    from packager import adapter as lora

    with tempfile.TemporaryDirectory() as tmp:
        checked = lora.check(lora.read(out), BASE, json.loads((BASE / "config.json").read_text()))
        lora.merge(BASE, checked, Path(tmp) / "merged", "arithmetic")
        merged = AutoModelForCausalLM.from_pretrained(str(Path(tmp) / "merged"), dtype=torch.float32)
    merged.eval()
    merged_passed, merged_outputs = score(merged, tok)
    print(f"written adapter, merged (fp32): {merged_passed}/{len(FACTS)} capitals")
    peft_note = "peft not installed: not checked with peft"
    if lora.peft_available():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, str(out)).eval()
        peft_passed, _ = score(peft_model, tok)
        peft_note = f"loaded with peft {__import__('peft').__version__} (unmerged): {peft_passed}/{len(FACTS)} capitals"
        print(peft_note)

    write_readme(out, dict(steps=args.steps, seconds=seconds, loss=losses[-1], first_loss=losses[0],
                           n_lora=n_lora, modules=len(wrapped), base_passed=base_passed, base_output=base_outputs[0],
                           trained_passed=trained_passed, merged_passed=merged_passed,
                           merged_outputs=merged_outputs, peft_note=peft_note, seed=args.seed, threads=args.threads,
                           size=(out / "adapter_model.safetensors").stat().st_size))
    return 0


def write_readme(out: Path, r: dict) -> None:
    import tokenizers
    import torch
    import transformers

    examples = "\n".join(f"    {PROMPT.format(country=c)!r} -> {o!r}" for (c, _), o in
                         list(zip(FACTS, r["merged_outputs"]))[:4])
    command = "python scripts/train_tiny_llama_lora.py --force" + (
        f" --steps {r['steps']}" if r["steps"] != DEFAULT_STEPS else "") + (
        f" --seed {r['seed']}" if r["seed"] else "") + (f" --threads {r['threads']}" if r["threads"] != 1 else "")
    first_prompt, n_facts = PROMPT.format(country=FACTS[0][0]), len(FACTS)
    text = f"""# tiny-llama-lora: the sample LoRA adapter `sample:tiny-llama-lora`

A PEFT LoRA adapter for `sample:tiny-llama` that learnt a lookup the base cannot know: the capitals
of {len(FACTS)} invented countries ("{PROMPT.format(country=FACTS[0][0])}" -> "{ANSWER.format(capital=FACTS[0][1])}").
It makes the fine-tune path real offline: merge, quantize, and check with the user's own eval
cases that the quantized model still knows what the fine-tune taught it.

    packager package sample:tiny-llama --adapter sample:tiny-llama-lora --eval sample:tiny-llama-lora --target rpi5

## Files

- `adapter_config.json`: peft's LoraConfig keys: rank {RANK}, alpha {ALPHA} (scaling alpha / r = {ALPHA / RANK:g}),
  target modules {', '.join(sorted(TARGETS))}, no bias, no modules_to_save.
- `adapter_model.safetensors` ({r['size']:,} bytes): fp16 tensors named as peft saves them,
  `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` [r, in] and `.lora_B.weight` [out, r].
- `eval.jsonl`: one case per fact, `{{"prompt": "{PROMPT.format(country=FACTS[0][0])}", "expected": "{FACTS[0][1]}.",
  "match": "exact", "max_new_tokens": 8}}`: the greedy continuation must be exactly the capital and a full
  stop (then `</s>`).

## Training

Plain torch LoRA arithmetic (no peft needed): the base frozen in fp32, {r['modules']} Linear layers wrapped
({r['n_lora']:,} trainable parameters), A initialised Kaiming-uniform as peft does, B zero. AdamW
(lr {LR}, 20 warm-up steps, cosine to 0.1x), gradient clipping 1.0, full batch of the {len(FACTS)} facts
(loss on the answer and `</s>` only), {r['steps']} steps, seed {r['seed']}, {r['threads']} torch thread(s),
deterministic algorithms: {r['seconds']:.0f} s on the build machine's CPU.

- loss: {r['first_loss']:.3f} at the first step, {r['loss']:.4f} at the last
- the base model: {r['base_passed']}/{n_facts} capitals (it continues "{first_prompt}" with {r['base_output']!r})
- trained (LoRA unmerged, fp32): {r['trained_passed']}/{len(FACTS)}
- the written adapter (fp16) merged into the base by packager's arithmetic merge, fp32: {r['merged_passed']}/{n_facts}
- {r['peft_note']}

Greedy continuations of the merged model:

{examples}

## Reproducing

    HF_HUB_OFFLINE=1 {command}

Built with Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__},
tokenizers {tokenizers.__version__}; the same versions and thread count give the same files, apart from the
training time in this README.
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
