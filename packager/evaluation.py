"""--eval FILE: the user's own cases, a regression gate in verify and a check in the smoke test.

The file is JSONL, one case a line (targets/run.py runs them, on the build host and on the device):

    {"prompt": "The capital of Zorbia is", "expected": "Velk.", "match": "exact"}      decoder LLMs
    {"anchor": "a cat sat", "positive": "a kitten sat", "negative": "stock prices"}    encoders

Decoder cases: the greedy continuation (up to `max_new_tokens`, default 16, stopping at an
end-of-sequence token; special tokens dropped, whitespace around it stripped) must equal
`expected` (`match` "exact", the default), start with it ("prefix"), contain it ("contains") or
match it as a regular expression (`re.search`, "regex"). Encoder cases: the positive must be more
similar (cosine of the embeddings: `sentence_embedding`, else the mean of the token states) to the
anchor than the negative, than each of `negatives`, or, with neither, than every other case's
positive (retrieval among the file's own cases). The score is the share of cases that pass.

Verify runs every case on the fp32 reference and on the packaged model, and fails (exit 4) when the
packaged model's score is more than the profile's `accuracy.eval_tolerance` below the reference's.
The first SMOKE_CASES cases ship in the bundle (samples/eval.jsonl) with the packaged model's score
on them, which the device's smoke test must reach within the same tolerance.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from packager.errors import ExitCode, PackagerError
from packager.recipes import remedy

SMOKE_CASES = 8          # cases the bundle carries for the device's smoke test
LISTED = 20              # disagreeing cases the manifest lists
WORST = 5                # of them, the worst: the reference passes, the packaged model fails
MATCHES = ("exact", "prefix", "contains", "regex")
DECODER_KEYS = {"prompt", "expected", "match", "max_new_tokens", "id"}
ENCODER_KEYS = {"anchor", "positive", "negative", "negatives", "id"}


def _bad(message: str) -> PackagerError:
    return PackagerError(message, ExitCode.BAD_INPUT)


def read_cases(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The file's cases and their kind ("decoder" or "encoder"); refused (exit 5) with the first bad line."""
    if not path.is_file():
        raise _bad(f"--eval {path}: no such file; give a JSONL file of cases (docs/llms.md, \"Eval cases\").")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(f"--eval {path}: cannot read it ({e}); give a UTF-8 JSONL file.") from None
    cases: list[dict[str, Any]] = []
    kinds = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--eval {path}, line {number}"
        try:
            case = json.loads(line)
        except ValueError as e:
            raise _bad(f"{where}: not JSON ({e}); one JSON object a line.") from None
        if not isinstance(case, dict):
            raise _bad(f"{where}: not a JSON object; one case a line, e.g. {{\"prompt\": ..., \"expected\": ...}}.")
        kinds.add(_check_case(case, where))
        cases.append(case)
    if not cases:
        raise _bad(f"--eval {path}: no cases in it; one JSON object a line.")
    if len(kinds) > 1:
        raise _bad(f"--eval {path}: mixes decoder cases (prompt, expected) and encoder cases (anchor, positive); "
                   "one kind a file.")
    return kinds.pop(), cases


def _check_case(case: dict[str, Any], where: str) -> str:
    if "prompt" in case:
        unknown = sorted(set(case) - DECODER_KEYS)
        if unknown:
            raise _bad(f"{where}: unknown key {unknown[0]!r}; decoder cases have prompt, expected, match, "
                       "max_new_tokens.")
        if not isinstance(case["prompt"], str) or not isinstance(case.get("expected"), str):
            raise _bad(f"{where}: a decoder case needs a \"prompt\" and an \"expected\" string.")
        match = case.get("match", "exact")
        if match not in MATCHES:
            raise _bad(f"{where}: match {match!r} is not one of {', '.join(MATCHES)}.")
        if match == "regex":
            try:
                re.compile(case["expected"])
            except re.error as e:
                raise _bad(f"{where}: \"expected\" is not a regular expression ({e}).") from None
        tokens = case.get("max_new_tokens", 1)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= 4096:
            raise _bad(f"{where}: max_new_tokens must be a whole number from 1 to 4096, got {tokens!r}.")
        return "decoder"
    if "anchor" in case:
        unknown = sorted(set(case) - ENCODER_KEYS)
        if unknown:
            raise _bad(f"{where}: unknown key {unknown[0]!r}; encoder cases have anchor, positive, negative or "
                       "negatives.")
        negatives = case.get("negatives", [])
        if not all(isinstance(case.get(k, ""), str) for k in ("anchor", "positive", "negative")) \
                or "positive" not in case or not isinstance(negatives, list) \
                or not all(isinstance(n, str) for n in negatives):
            raise _bad(f"{where}: an encoder case needs \"anchor\" and \"positive\" strings, and optionally a "
                       "\"negative\" string or a \"negatives\" list of strings.")
        return "encoder"
    raise _bad(f"{where}: neither a decoder case (prompt, expected) nor an encoder case (anchor, positive).")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shown(case: dict[str, Any], index: int, ref: dict[str, Any], pkg: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"case": index + 1}
    if "prompt" in case:
        entry |= {"prompt": case["prompt"], "expected": case["expected"], "match": case.get("match", "exact"),
                  "reference_output": ref["output"], "packaged_output": pkg["output"]}
    else:
        entry |= {"anchor": case["anchor"], "positive": case["positive"],
                  "reference_margin": round(ref["positive"] - ref["best_negative"], 6),
                  "packaged_margin": round(pkg["positive"] - pkg["best_negative"], 6)}
    return entry | {"reference_passed": ref["passed"], "packaged_passed": pkg["passed"]}


def summarize(path: Path, cases: list[dict[str, Any]], reference: dict[str, Any], packaged: dict[str, Any],
              tolerance: float, subset: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """accuracy.eval of the manifest and the --json summary: both scores, the cases they disagree on, the
    worst, and what the smoke test holds the device to."""
    pairs = list(zip(reference["results"], packaged["results"]))
    disagree = [i for i, (r, p) in enumerate(pairs) if r["passed"] != p["passed"]]
    lost = [i for i in disagree if pairs[i][0]["passed"]]
    if cases and "anchor" in cases[0]:   # encoders: the worst have the lowest margin left
        lost.sort(key=lambda i: pairs[i][1]["positive"] - pairs[i][1]["best_negative"])
    sub_ref, sub_pkg = subset
    return {
        "file": path.name,
        "sha256": sha256(path),
        "kind": "decoder" if cases and "prompt" in cases[0] else "encoder",
        "cases": len(cases),
        "reference_score": reference["score"],
        "packaged_score": packaged["score"],
        "reference_passed": reference["passed"],
        "packaged_passed": packaged["passed"],
        "tolerance": tolerance,
        "passed": packaged["score"] >= reference["score"] - tolerance - 1e-9,
        "disagreements": len(disagree),
        "disagreeing_cases": [_shown(cases[i], i, *pairs[i]) for i in disagree[:LISTED]],
        "worst": [_shown(cases[i], i, *pairs[i]) for i in lost[:WORST]],
        "smoke": {"file": "samples/eval.jsonl", "cases": sub_pkg["cases"], "packaged_score": sub_pkg["score"],
                  "reference_score": sub_ref["score"], "tolerance": tolerance,
                  "min_score": max(0.0, sub_pkg["score"] - tolerance)},
    }


def write_smoke_cases(cases: list[dict[str, Any]], dest: Path) -> None:
    dest.write_text("".join(json.dumps(c, sort_keys=True, ensure_ascii=False) + "\n" for c in cases),
                    encoding="utf-8")


def percent(share: float) -> str:
    return f"{share * 100:.4g}%"


def failure(ctx_recipe: str, target: str, record: dict[str, Any]) -> str:
    return (f"recipe {ctx_recipe} loses the fine-tune on your eval cases: the packaged model passes "
            f"{record['packaged_passed']}/{record['cases']} ({record['packaged_score']:.1%}) where the fp32 reference "
            f"passes {record['reference_passed']}/{record['cases']} ({record['reference_score']:.1%}), more than "
            f"{target}'s eval tolerance of {percent(record['tolerance'])} below it; try {remedy(ctx_recipe)}, or "
            "--fit auto.")
