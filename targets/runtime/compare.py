"""The samples a bundle carries, and the comparison of the packaged model's outputs with the fp32 reference's."""

from pathlib import Path
from typing import Any

import numpy as np

from .manifest import HERE, SAMPLE_INPUTS
from .session import Decoder

# ---------------------------------------------------------------- samples and comparison

def load_samples(bundle: Path = HERE, name: str = SAMPLE_INPUTS) -> list[dict[str, np.ndarray]]:
    """Per-sample feeds (or outputs) stored as '<index>/<tensor name>' keys of an .npz."""
    samples: dict[int, dict[str, np.ndarray]] = {}
    with np.load(bundle / name, allow_pickle=False) as npz:
        for key in npz.files:
            index, tensor = key.split("/", 1)
            samples.setdefault(int(index), {})[tensor] = npz[key]
    return [samples[i] for i in sorted(samples)]


# Every member of a samples .npz carries this date (the zip format's earliest), so the same arrays
# give the same bytes whenever they are written: bundles are reproducible.
NPZ_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def save_samples(path: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """An .npz as np.savez writes it (stored, zip64 members '<index>/<tensor name>.npy'), with a fixed
    date, mode and order: the same samples give the same bytes, run after run."""
    import zipfile

    arrays = {f"{i}/{name}": value for i, sample in enumerate(samples) for name, value in sample.items()}
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=NPZ_DATE_TIME)
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def compare_decoder(expected: list[dict[str, np.ndarray]], decoder: Decoder | list[Decoder]) -> dict[str, Any]:
    """How closely `decoder` follows the reference's greedy generations (`expected`: per prompt,
    its `prompt_ids`, the reference's `tokens` and its first-prediction `logits`). Encoder-decoders
    give one decoder per sample, bound to that sample's encoder output (Decoder.bind): the figures
    are then the whole model's, encoder included.

    Token agreement is teacher-forced: the decoder reads the prompt and the reference's tokens
    and must predict each next one. Free-running generation would stop counting after the first
    different token (every later one follows from it), measuring luck more than fidelity; how
    often the free-running generations match in full is reported too.
    """
    agreements, cosines, identical = [], [], 0
    decoders = decoder if isinstance(decoder, list) else [decoder] * len(expected)
    for sample, decoder in zip(expected, decoders):
        prompt = [int(t) for t in sample["prompt_ids"]]
        reference = [int(t) for t in sample["tokens"]]
        agreement, cosine = followed(score_from(decoder, prompt + reference, len(prompt)), reference, sample["logits"])
        agreements.append(agreement)
        cosines.append(cosine)
        generated, _ = decoder.generate(prompt, len(reference))
        identical += generated == reference
    return {
        "token_agreement": float(np.mean(agreements)),
        "min_token_agreement": min(agreements),
        "min_logits_cosine": min(cosines),
        "mean_logits_cosine": float(np.mean(cosines)),
        "identical_generations": identical,
        "prompts": len(expected),
        "per_prompt": [{"token_agreement": a, "logits_cosine": c} for a, c in zip(agreements, cosines)],
    }


def followed(logits: np.ndarray, reference: list[int], first: np.ndarray) -> tuple[float, float]:
    """From score_from's logits: the share of the `reference` tokens predicted, and the cosine of the first
    prediction's logits with the reference's (`first`)."""
    predicted = np.argmax(logits[:len(reference)], axis=-1)
    agreement = float(np.mean(predicted == np.asarray(reference))) if reference else 1.0
    return agreement, _cosine(logits[0].astype(np.float64), np.asarray(first, np.float64))


def score_from(decoder: Decoder, ids: list[int], start: int, soft: Any = None) -> np.ndarray:
    """The logits at positions start - 1 .. len(ids) - 1 of `ids` read teacher-forced (`decoder.score(ids)[start -
    1:]`: the predictions of ids[start:] and of the token after them). A graph that gives the last position's logits
    only (io.logits "last") has its prompt ids[:start] prefilled in chunks, then a pass a token: a token-at-a-time
    score would run a pass for each prompt token too. `soft`: the prompt's soft tokens (runtime/soft.py)."""
    if not getattr(decoder, "last_only", False):
        return np.asarray(decoder.score(ids)[start - 1:])
    logits, past = decoder.prefill(ids[:start], *([soft] if soft is not None else []))
    rows = [logits[-1]]
    for n in range(start, len(ids)):
        logits, past = decoder.step([ids[n]], past, n)
        rows.append(logits[-1])
    return np.stack(rows)


def reference_generations(decoder: Decoder | list[Decoder], prompts: list[list[int]],
                          max_new_tokens: int) -> list[dict[str, np.ndarray]]:
    """What compare_decoder measures against: the reference model's greedy generations."""
    result = []
    decoders = decoder if isinstance(decoder, list) else [decoder] * len(prompts)
    for ids, decoder in zip(prompts, decoders):
        tokens, first = decoder.generate(ids, max_new_tokens)
        result.append({"prompt_ids": np.asarray(ids, dtype=np.int64), "tokens": np.asarray(tokens, dtype=np.int64),
                       "logits": first.astype(np.float32)})
    return result


def compare(expected: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]],
            outputs: list[str]) -> dict[str, Any]:
    """Cosine similarity and max-abs difference of `actual` against `expected`, per output.

    Each sample's output is compared on its own when it has at least 8 values (an embedding,
    a hidden state); smaller outputs (a probability, a logit pair) are concatenated across the
    samples first, since the cosine of two 1-element vectors says only whether the signs agree.
    Non-float outputs count the fraction of equal elements.
    """
    per_output = {}
    for name in outputs:
        exp = [np.asarray(s[name]).ravel() for s in expected]
        act = [np.asarray(s[name]).ravel() for s in actual]
        if any(e.shape != a.shape for e, a in zip(exp, act)):
            per_output[name] = {"cosine": 0.0, "max_abs_diff": float("inf"), "note": "shape differs"}
            continue
        if not np.issubdtype(exp[0].dtype, np.floating):
            agree = float(np.mean(np.concatenate([e == a for e, a in zip(exp, act)])))
            per_output[name] = {"cosine": agree, "max_abs_diff": 0.0 if agree == 1.0 else float("inf")}
            continue
        groups = list(zip(exp, act)) if exp[0].size >= 8 else [(np.concatenate(exp), np.concatenate(act))]
        cosines = [_cosine(e.astype(np.float64), a.astype(np.float64)) for e, a in groups]
        diff = max(float(np.max(np.abs(e.astype(np.float64) - a))) if e.size else 0.0 for e, a in zip(exp, act))
        per_output[name] = {"cosine": min(cosines), "max_abs_diff": diff}
    return {
        "min_cosine": min(m["cosine"] for m in per_output.values()),
        "max_abs_diff": max(m["max_abs_diff"] for m in per_output.values()),
        "outputs": per_output,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    if not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return float(np.dot(a, b) / (na * nb))
