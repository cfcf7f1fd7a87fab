"""The user's eval cases (`packager package --eval`), scored the same way on the build host and on the device."""

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .compare import _cosine
from .families import family
from .session import Decoder, encode

# ---------------------------------------------------------------- eval cases (packager package --eval)
#
# The user's own cases, one JSON object a line. Decoders: {"prompt", "expected", "match"?,
# "max_new_tokens"?}: the greedy continuation of the prompt (special tokens dropped, surrounding
# whitespace stripped) must equal ("exact", the default), start with ("prefix"), contain
# ("contains") or match (`re.search`, "regex") `expected`. Encoders: {"anchor", "positive",
# "negative"? | "negatives"?}: the positive must be more similar (cosine of the embeddings) to the
# anchor than every negative, or, with none given, than every other case's positive. The score is
# the share of cases that pass.

EVAL_MATCHES = ("exact", "prefix", "contains", "regex")
EVAL_DEFAULT_TOKENS = 16


def read_eval(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_passes(case: dict[str, Any], text: str) -> bool:
    got, expected = text.strip(), str(case["expected"])
    match = case.get("match", "exact")
    if match == "exact":
        return got == expected.strip()
    if match == "prefix":
        return got.startswith(expected.strip())
    if match == "contains":
        return expected in got
    return re.search(expected, got) is not None


def _embedder(session: Any, tokenizer: Any) -> Any:
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    output = "sentence_embedding" if "sentence_embedding" in outputs else outputs[0]
    cache: dict[str, np.ndarray] = {}

    def embed(text: str) -> np.ndarray:
        if text not in cache:
            feeds = encode(tokenizer, text, names)
            value = np.asarray(session.run([output], feeds)[0], dtype=np.float64)
            if value.ndim == 3:  # token states: mean over the real tokens
                mask = feeds.get("attention_mask", np.ones(value.shape[:2], dtype=np.int64)).astype(np.float64)
                value = (value * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
            cache[text] = value.ravel()
        return cache[text]

    return embed


def evaluate(session: Any, io: dict[str, Any], tokenizer: Any, cases: list[dict[str, Any]],
             decoder: Any = None) -> dict[str, Any]:
    """Run the eval cases on a model (an onnxruntime session of the packaged or the reference model):
    the score (the share of cases that pass) and each case's output and verdict. `decoder`: a prompted model's
    generator other than a Decoder of `session` (the host's PyTorch reference: packager/runtimes/genai_host.py)."""
    results: list[dict[str, Any]] = []
    if family(io).prompted:
        decoder = decoder or Decoder(session, io)
        for case in cases:
            tokens, _ = decoder.generate(list(tokenizer.encode(case["prompt"]).ids),
                                         int(case.get("max_new_tokens", EVAL_DEFAULT_TOKENS)))
            text = tokenizer.decode(tokens)
            results.append({"output": text, "passed": eval_passes(case, text)})
    else:
        embed = _embedder(session, tokenizer)
        for i, case in enumerate(cases):
            negatives = case.get("negatives") or ([case["negative"]] if "negative" in case else
                                                  [c["positive"] for j, c in enumerate(cases)
                                                   if j != i and c["positive"] != case["positive"]])
            anchor = embed(case["anchor"])
            positive = _cosine(anchor, embed(case["positive"]))
            best = max((_cosine(anchor, embed(n)) for n in negatives), default=-1.0)
            results.append({"positive": round(positive, 6), "best_negative": round(best, 6),
                            "passed": bool(positive > best)})
    passed = sum(r["passed"] for r in results)
    return {"score": passed / len(cases) if cases else 1.0, "passed": passed, "cases": len(cases), "results": results}
