"""Peak resident memory of load and run, as the deployment would see it."""

import json
import platform
from pathlib import Path
from typing import Any

from .compare import load_samples
from .manifest import HERE, SAMPLE_TEXTS, members
from .media import sample_media
from .on_demand import mode_peaks
from .peak import peak_bytes, reset_peak, rss_bytes
from .session import Runner, load, start_ids

# ---------------------------------------------------------------- memory

def measure(bundle: Path = HERE, context: int | None = None) -> dict[str, Any]:
    """Load the model and run the bundle's samples, measuring peak resident memory of each phase.
    Decoders then take one generation step with a full KV cache of `context` tokens (default:
    the context the bundle was built for), so the cache is real, as at the end of a long chat.
    A bundle of several models loads them all, then runs each one's samples: all resident together.

    Call it in a fresh process: the peak covers everything resident, the interpreter and the
    runtime included, as it will be on the device.
    """
    import onnxruntime  # noqa: F401  (the runtime's own import is part of the baseline)

    baseline = rss_bytes()
    resettable = reset_peak()
    folders = members(bundle) or {"": bundle}
    runners: dict[str, Runner] = {}
    resident: dict[str, int] = {}    # what each model added as it loaded (a shared component: its first)
    sessions: dict[str, Any] = {}
    for name, folder in folders.items():
        before = rss_bytes()
        runners[name] = load(folder, sessions)
        resident[name] = max(0, rss_bytes() - before)
    load_peak = peak_bytes()
    resettable = reset_peak() and resettable
    results = {name: exercise(folders[name], runner, context) for name, runner in runners.items()}
    first = next(iter(runners.values()))
    if "" in results:
        run_peak = results[""].pop("text_peak_bytes", None) or peak_bytes()
        return _measured(first, baseline, load_peak, run_peak, resettable, **results[""])
    return _measured(first, baseline, load_peak, peak_bytes(), resettable, resident="all models together, loaded up "
                     "front; a component they share is loaded once",
                     members={name: {"load_bytes": resident[name], **results[name]} for name in runners})


def exercise(bundle: Path, runner: Runner, context: int | None) -> dict[str, Any]:
    """Run the bundle's samples through a loaded model, as measure() does: its context, and an
    encoder-decoder's per-component figures."""
    context = context or runner.runtime.get("context")
    if runner.family.media:
        return _exercise_seq2seq(bundle, runner, context)
    if runner.family.sentences:
        texts = json.loads((bundle / SAMPLE_TEXTS).read_text(encoding="utf-8"))
        feeds = [runner.encode(t) for t in texts]
    else:
        feeds = load_samples(bundle)
    for f in feeds:
        runner.run(f)
    if runner.decoder is not None and context:
        # The largest pass at this context: a prompt that fills it prefills in chunks where the graph gives the last
        # position's logits, and its last chunk meets the longest cache (the estimate's largest_pass, the same rule)
        tokens = runner.decoder.chunk_at(int(context))
        past = int(context) - tokens
        _, cache = runner.decoder.step([0] * tokens, runner.decoder.empty_past(past), past)
        if (runner.io.get("soft") or {}).get("encoders"):
            # then each encoder's mode with that cache held (runtime/on_demand.py): the text run's peak first
            text_peak = peak_bytes()
            modes = mode_peaks(runner)
            del cache
            return {"context": context, "text_peak_bytes": text_peak,
                    "modes": {mode: {"peak_bytes": b} for mode, b in modes.items()}}
    return {"context": context}


def _measured(runner: Runner, baseline: int, load_peak: int, run_peak: int, resettable: bool,
              **extra: Any) -> dict[str, Any]:
    """measure()'s result: the phases' peaks, how they were taken, where."""
    modes = [m["peak_bytes"] for m in extra.get("modes", {}).values()]   # an encoder loaded on demand: its mode's
    return {
        "baseline_bytes": baseline,
        "load_peak_bytes": load_peak,
        "run_peak_bytes": run_peak,
        "peak_bytes": max(load_peak, run_peak, *modes),
        **extra,
        "method": "VmHWM after clear_refs" if resettable else "ru_maxrss (process lifetime)",
        "providers": runner.providers,
        "missing_providers": runner.missing_providers,
        "host": f"{platform.machine()} Python {platform.python_version()}",
    }


# Tokens each sample generates in the measurement: a short answer, then the long-context step.
MEASURE_TOKENS = 8


def _exercise_seq2seq(bundle: Path, runner: Runner, context: int | None) -> dict[str, Any]:
    """exercise() for an encoder-decoder: the raw samples through the pre-processing and the encoder (its
    phase's peak), then the decoder's loop on each, and one step on a full KV cache of `context` tokens.
    Per component: the resident memory its session added at load, and the encoder phase's peak."""
    assert runner.decoder is not None
    feeds = [runner.encoder_feeds(raw) for raw in sample_media(bundle)]
    decoders = [runner.encoded(f) for f in feeds]
    encoder_peak = peak_bytes()
    for decoder in decoders:
        decoder.generate(start_ids(runner.io), MEASURE_TOKENS)
    if context:
        last = decoders[-1]
        last.step([0], last.empty_past(int(context) - 1), int(context) - 1)
    components = {name: {"load_bytes": runner.load_bytes[name],
                         **({"encode_peak_bytes": encoder_peak} if name == "encoder" else {})}
                  for name in runner.sessions}
    return {"context": context, "components": components, "resident": "all components together, loaded up front"}
