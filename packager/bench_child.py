"""What `packager bench` runs in the bundle's environment (host or emulated): the bundle's own run.py and
runtime/ package, loaded from the unpacked folder, timed, and its peak resident memory read from /proc. It
imports nothing of packager's (the device's Python has none); packager/bench.py passes it as `python -c`, and
it prints one JSON line.

    python -c CHILD FOLDER PROMPT_TOKENS NEW_TOKENS RUNS

Decoder LLMs: a prompt of PROMPT_TOKENS tokens (a sentence repeated) in one prefill, the first token from its
logits (time to first token), then NEW_TOKENS greedy steps (decode). Other models: the bundle's first sample,
once to warm up, then RUNS times (the median is the latency).
"""

CHILD = r'''
import importlib, importlib.util, json, statistics, sys, time
from pathlib import Path

folder, prompt_tokens, new_tokens, runs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("run", folder / "run.py")
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
def part(name):
    return importlib.import_module(run._package.__name__ + "." + name)
peak = part("peak")
import numpy as np

baseline = peak.rss_bytes()
resettable = peak.reset_peak()
start = time.perf_counter()
runner = run.load(folder)
out = {"load_s": time.perf_counter() - start, "load_peak_bytes": peak.peak_bytes(), "baseline_bytes": baseline,
       "method": "VmHWM" if resettable else "ru_maxrss"}

def prompt(n):
    sentence = "The quick brown fox jumps over the lazy dog, and the dog sleeps on. "
    once = len(runner.prompt_ids(sentence)) or 1
    ids = runner.prompt_ids(sentence * (n // once + 2))
    return (ids * (n // max(1, len(ids)) + 1))[:n]

dec = runner.decoder
if dec is not None and runner.family.prompted:
    ids = prompt(prompt_tokens)
    start = time.perf_counter()
    # as the device loop prefills: in chunks where the graph gives the last logits (a bundle's device code from
    # before Decoder.prefill has only step: one pass)
    prefill = getattr(dec, "prefill", None)
    logits, past = prefill(ids) if prefill else dec.step(ids, dec.empty_past(), 0)
    token = int(np.argmax(logits[-1]))
    ttft = time.perf_counter() - start
    length = len(ids)
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits, past = dec.step([token], past, length)
        token = int(np.argmax(logits[-1]))
        length += 1
    decode = time.perf_counter() - start
    out |= {"mode": "decoder", "prompt_tokens": len(ids), "new_tokens": new_tokens, "ttft_s": ttft,
            "prefill_tokens_per_s": len(ids) / ttft, "decode_s": decode, "decode_tokens_per_s": new_tokens / decode}
else:
    if runner.family.media:
        raw = part("media").sample_media(folder)[0]
        once = lambda: runner.generate_from(raw, 8)
    else:
        if runner.family.sentences:
            texts = json.loads((folder / part("manifest").SAMPLE_TEXTS).read_text(encoding="utf-8"))
            feed = runner.encode(texts[0])
        else:
            feed = part("compare").load_samples(folder)[0]
        once = lambda: runner.run(feed)
    once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    out |= {"mode": "model", "runs": runs, "latency_s": statistics.median(times), "latency_min_s": min(times),
            "latency_max_s": max(times)}
out["peak_bytes"] = peak.peak_bytes()
print(json.dumps(out), flush=True)
'''
