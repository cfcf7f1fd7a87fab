"""`packager bench BUNDLE`: speed and peak memory of a bundle, by its own device code (packager/bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from packager.cli_common import DebugOpt, JsonOpt, VerboseOpt, _guarded, _say, _timing, err

GiB = 2**30


@_timing("bench")
def bench(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A bundle archive (.tar.gz) or an unpacked bundle "
                                  "folder."),
    prompt_tokens: int = typer.Option(128, "--prompt-tokens", metavar="N", help="Decoder LLMs: tokens in the "
                                      "prompt, prefilled as the bundle's run.py does (in chunks where its graph "
                                      "gives the last position's logits)."),
    new_tokens: int = typer.Option(32, "--new-tokens", metavar="M", help="Decoder LLMs: tokens decoded after the "
                                   "first one."),
    runs: int = typer.Option(10, "--runs", metavar="N", help="Other models: timed runs of the first sample (the "
                             "median is the latency), after one to warm up."),
    python: str | None = typer.Option(None, "--python", metavar="PYTHON", help="Interpreter to run it with "
                                      "[default: the one its runtime runs on here]."),
    emulate: bool = typer.Option(False, "--emulate", help="Run it on the device's arm64 Debian userland under qemu "
                                 "(needs qemu-user-static; the speeds are qemu's, not the device's)."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Time a bundle's model on this host (or emulated) and read its peak memory: time to first token, prefill and
    decode tokens/s beside the memory-bandwidth bound (decoder LLMs), or the latency of a run (other models)."""
    from packager.bench import BenchSettings, run_bench

    settings = BenchSettings(prompt_tokens, new_tokens, runs, emulate, python)
    _say(verbose, as_json, f"bench   = {bundle}  ({'emulated' if emulate else 'this host'})")
    result = _guarded(lambda: run_bench(bundle, settings), debug=debug, as_json=as_json)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    for line in lines(result):
        print(line)
    for note in result.notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)


def lines(result: object) -> list[str]:
    """The result as a human reads it."""
    from packager.bench import BenchResult

    assert isinstance(result, BenchResult)
    m = result.measured
    out = [f"{result.bundle}: {result.target} ({result.runtime}), {result.where}, load average "
           f"{' '.join(f'{x:.1f}' for x in result.loadavg)}"]
    out.append(f"  load        {m['load_s']:.2f} s, peak {m['load_peak_bytes'] / GiB:.3f} GiB")
    if m["mode"] == "decoder":
        out += [f"  prompt      {m['prompt_tokens']} tokens: time to first token {m['ttft_s']:.3f} s, prefill "
                f"{m['prefill_tokens_per_s']:.1f} tokens/s",
                f"  decode      {m['new_tokens']} tokens: {m['decode_tokens_per_s']:.2f} tokens/s"]
        for name, bound in result.bounds.items():
            share = f", {result.host_ratio:.2f} of it reached" if name == "host" and result.host_ratio else ""
            out.append(f"  bound       {name}: {bound.tokens_per_s:.1f} tokens/s at {bound.bandwidth_gbs:.1f} GB/s "
                       f"over {(bound.weight_bytes + bound.kv_bytes) / 2**20:.1f} MiB a token{share}")
    else:
        out.append(f"  latency     {m['latency_s'] * 1000:.2f} ms a run (median of {m['runs']}; "
                   f"{m['latency_min_s'] * 1000:.2f}-{m['latency_max_s'] * 1000:.2f})")
    out.append(f"  peak        {m['peak_bytes'] / GiB:.3f} GiB ({m['method']}, load and run)")
    return out
