"""How each `packager` command's result shows on a terminal: tables and lines on stdout, failures on stderr
(`--json` prints none of this: the commands print the result's dict instead)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from packager.cli_common import MiB, err
from packager.labels import memory_label, provider_name, recipe_label


def _print_packaged(result: Any) -> None:
    """One target's bundle among several: its lines, and the smoke test's failure if it failed."""
    _print_package(result)
    if not result.ok:
        _print_smoke_failure(result)


def _print_many(rows: list[dict[str, Any]]) -> None:
    table = Table("target", "recipe", "result", "archive", box=box.SIMPLE_HEAD)
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["target"]), "", f"[red]exit {r['exit_code']}[/]", escape(r["error"]))
            continue
        cached = ", ".join(f"{stage} cached" for stage, status in r["cache"].items() if status == "hit")
        result = "[green]ok[/]" if r["exit_code"] == 0 else f"[red]smoke failed (exit {r['exit_code']})[/]"
        table.add_row(r["target"], r["recipe"], result + (f" ({cached})" if cached else ""), escape(r["archive"]))
    _summary_console().print(table)


def _print_smoke_failure(result: Any) -> None:
    _print_smoke(result.smoke_result)
    err.print(f"[red]error:[/] the bundle's smoke test failed: {escape(result.smoke['verdict'])}; the archive "
              f"{escape(str(result.archive))} is kept for inspection.", soft_wrap=True)


def _print_package(r: Any) -> None:
    if hasattr(r, "models"):
        _print_suite(r)
        return
    mem = r.memory
    acc = r.accuracy
    if acc["metric"] == "token agreement":
        err.print(f"accuracy  {acc['token_agreement']:.1%} of fp32's greedy tokens, "
                  f"logits cosine {acc['min_logits_cosine']:.4f}, "
                  f"{acc['identical_generations']}/{acc['samples']} continuations identical (thresholds "
                  f"{acc['threshold']['token_agreement']:.0%}, {acc['threshold']['logits_cosine']})")
    else:
        err.print(f"accuracy  min cosine {acc['min_cosine']:.5f} vs fp32 (threshold {acc['threshold']})")
    if "media" in acc:   # a multimodal decoder's sample files through the packaged encoders (soft_verification.py)
        err.print("media     " + ", ".join(f"{name} {m['token_agreement']:.1%} / {m['logits_cosine']:.4f}"
                                           for name, m in acc["media"].items())
                  + " of the fp32 export's tokens / cosine, the encoder and decoder packaged", soft_wrap=True)
    if "eval" in acc:
        ev = acc["eval"]
        err.print(f"eval      {ev['packaged_passed']}/{ev['cases']} of {escape(ev['file'])} pass "
                  f"({ev['packaged_score']:.1%}; fp32 {ev['reference_passed']}/{ev['cases']}, "
                  f"tolerance {ev['tolerance'] * 100:.4g}%), "
                  f"{ev['disagreements']} case(s) disagree")
    _print_memory(mem)
    err.print(f"model     {r.sizes['model_bytes'] / MiB:.1f} MiB ({escape(recipe_label(r.recipe, r.coverage))})")
    if r.fit and r.fit.get("mode") == "default":   # the profile's recipe did not keep the answers: say so
        err.print(f"recipe    {escape(r.fit['why'])}", soft_wrap=True)
    if r.mixed:
        from packager.report_view import mixed_text

        err.print(f"mixed     {escape(mixed_text(r.mixed).removeprefix('int4-mixed: '))}", soft_wrap=True)
    if r.signature:
        err.print(f"signed    ed25519, public key sha256 {r.signature['public_key_sha256']}", soft_wrap=True)
    if r.smoke:
        err.print(f"smoke     {r.smoke['mode']}: {escape(r.smoke['verdict'])}")
    print(r.archive)


def mode_figures(mode: str, measured: dict[str, Any] | None, est: dict[str, Any] | None) -> str:
    """'image 974 MiB (estimate 728-1074)': an encoder's mode, measured and estimated, or either."""
    span = f"{est['low_bytes'] / MiB:.0f}-{est['high_bytes'] / MiB:.0f}" if est else ""
    if measured is None:
        return f"{mode} estimate {span} MiB"
    return f"{mode} {measured['peak_bytes'] / MiB:.0f} MiB" + (f" (estimate {span})" if span else "")


def _print_memory(mem: dict[str, Any], what: str = "") -> None:
    est = mem["estimate"]
    err.print(f"memory    {what}peak {mem['measured_peak_bytes'] / MiB:.0f} MiB "
              f"(load {mem['load_peak_bytes'] / MiB:.0f}, run {mem['run_peak_bytes'] / MiB:.0f}; "
              f"estimate {est['low_bytes'] / MiB:.0f}-{est['high_bytes'] / MiB:.0f}) "
              f"of {mem['budget_bytes'] / MiB:.0f} MiB budget", soft_wrap=True)
    if est.get("mapped_bytes"):   # an E-class model's per-layer embeddings: on storage, out of the peak
        err.print(f"mapped    {est['mapped_bytes'] / MiB:.0f} MiB of lookup tables read from storage a row at a time "
                  "(not in the peak but for the rows of a pass)", soft_wrap=True)
    if mem.get("on_demand"):   # a multimodal decoder's encoders: files loaded for an input of their mode
        files = ", ".join(f"{mode} {e['size_bytes'] / MiB:.0f} MiB ({e['file']})"
                          for mode, e in mem["on_demand"].items())
        err.print(f"on demand {files}: loaded for an input of their mode, released after", soft_wrap=True)
    if mem.get("modes") or est.get("modes"):   # a multimodal decoder's encoders, each loaded on demand
        peaks = ", ".join(mode_figures(mode, (mem.get("modes") or {}).get(mode), (est.get("modes") or {}).get(mode))
                          for mode in {**(est.get("modes") or {}), **(mem.get("modes") or {})})
        err.print(f"modes     {peaks}: an encoder loaded for one input beside the decoder and its cache; the peak "
                  "is the worst mode's, the figures above the text mode's", soft_wrap=True)


def _print_suite(r: Any) -> None:
    """A bundle of several models: one line per model, the shared components, the memory of the whole."""
    for name, m in r.models.items():
        acc, alone = m["accuracy"], m["memory_alone"]
        figure = (f"{acc['token_agreement']:.1%} of fp32's greedy tokens" if acc["metric"] == "token agreement"
                  else f"min cosine {acc['min_cosine']:.5f}")
        err.print(f"model     {escape(name)}: {escape(m['recipe'])}, {figure}, alone peak "
                  f"{alone['measured_peak_bytes'] / MiB:.0f} MiB", soft_wrap=True)
    for b in r.blobs:
        if len(b["used_by"]) > 1:
            err.print(f"shared    {', '.join(b['used_by'])}: one copy, {b['bytes'] / MiB:.1f} MiB "
                      f"(blobs/{b['key'][:12]}...)", soft_wrap=True)
    _print_memory(r.memory, f"all {len(r.models)} together: ")
    err.print(f"size      {r.sizes['model_bytes'] / MiB:.1f} MiB loaded, "
              f"archive {r.sizes['archive_bytes'] / MiB:.1f} MiB")
    if r.signature:
        err.print(f"signed    ed25519, public key sha256 {r.signature['public_key_sha256']}", soft_wrap=True)
    if r.smoke:
        err.print(f"smoke     {r.smoke['mode']}: {escape(r.smoke['verdict'])}")
    print(r.archive)


def _print_checks(rows: list[dict[str, Any]]) -> None:
    """Several targets' verdicts, one row each."""
    table = Table("target", "recipe", "verdict", "peak MiB", "budget MiB", box=box.SIMPLE_HEAD)
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["target"]), "", f"[red]exit {r['exit_code']}[/]", escape(r["error"]), "")
            continue
        verdict = "[green]fits[/]" if r["fits"] else "[red]does not fit[/]"
        table.add_row(r["target"], escape(r["recipe"]), verdict,
                      f"{(r['budget_bytes'] - r['headroom_bytes']) / MiB:.0f} ({r['verdict_basis']})",
                      f"{r['budget_bytes'] / MiB:.0f}")
    _summary_console().print(table)


def _summary_console() -> Console:
    out = Console(stderr=True)
    if not out.is_terminal:
        out = Console(stderr=True, width=160)  # a CI log: no terminal width to fit, so do not cut the paths
    return out


def _print_components(components: dict[str, Any], models: bool = False) -> None:
    """Per component of a multi-component model: its own share of the whole above (the runtime, shared,
    is counted once there), all resident together; or per model of several, likewise."""
    table = Table("model" if models else "model component", "recipe", "file MiB", "estimate MiB",
                  "measured load MiB", "largest parts (MiB)", box=box.SIMPLE_HEAD,
                  title="per model, all resident together (runtime counted once, above)" if models else
                  "per component, all resident together (runtime counted once, above)")
    for column in table.columns[2:5]:
        column.justify = "right"
    for name, c in components.items():
        est = c["estimate"]
        top = sorted(est["breakdown"].items(), key=lambda kv: -kv[1])[:3]
        measured = c.get("measured_load_bytes")
        table.add_row(name, c["recipe"], f"{c['size_bytes'] / MiB:.2f}",
                      f"{est['low_bytes'] / MiB:.1f} - {est['high_bytes'] / MiB:.1f}",
                      "-" if measured is None else f"{measured / MiB:.1f}",
                      ", ".join(f"{memory_label(k)} {v / MiB:.1f}" for k, v in top))
    Console(stderr=True).print(table)
    if any("measured_load_bytes" in c for c in components.values()):
        err.print(f"note: the {'first model' if models else 'encoder'} loads first: its measured load also holds the "
                  "runtime's one-time initialisation, which the whole's runtime base counts")


def _print_check(result: Any) -> None:
    r = result.to_dict()
    table = Table("memory for", "estimate MiB", box=box.SIMPLE_HEAD)
    table.columns[1].justify = "right"
    for name, size in r["estimate"]["breakdown"].items():
        table.add_row(memory_label(name), f"{size / MiB:.1f}")
    est = r["estimate"]
    table.add_row("[b]peak (low - high)[/]" + (", text mode" if est.get("modes") else ""),
                  f"[b]{est['low_bytes'] / MiB:.0f} - {est['high_bytes'] / MiB:.0f}[/]")
    for mode, e in (est.get("modes") or {}).items():   # each encoder loaded on demand beside the decoder
        table.add_row(f"[b]peak (low - high)[/], {mode} mode",
                      f"{e['low_bytes'] / MiB:.0f} - {e['high_bytes'] / MiB:.0f}")
    if r["measured"]:
        m = r["measured"]
        table.add_row("[b]measured peak[/] (load / run)",
                      f"[b]{m['peak_bytes'] / MiB:.0f}[/] "
                      f"({m['load_peak_bytes'] / MiB:.0f} / {m['run_peak_bytes'] / MiB:.0f})")
        for mode, peak in (m.get("modes") or {}).items():   # an encoder loaded on demand beside the decoder
            table.add_row(f"measured peak, {mode} mode", f"{peak['peak_bytes'] / MiB:.0f}")
    for mode, e in (r.get("on_demand") or {}).items():
        table.add_row(f"{mode} encoder, loaded on demand ({e['file']})", f"{e['size_bytes'] / MiB:.1f}")
    Console(stderr=True).print(table)
    if r.get("components"):
        _print_components(r["components"], models="shared" in r)
    for s in r.get("shared", []):
        err.print(f"shared: {', '.join(s['used_by'])} load one copy ({s['bytes'] / MiB:.2f} MiB), counted once")
    for note in est["notes"]:
        err.print(f"note: {escape(note)}")
    word = "FITS" if r["fits"] else "DOES NOT FIT"
    margin = abs(r["headroom_bytes"]) / MiB
    context = f", {r['context']} tokens of context" if r["context"] else ""
    print(f"{word}: {r['model']} on {r['target']} ({recipe_label(r['recipe'], r.get('coverage'))}{context}), "
          f"{r['verdict_basis']} peak "
          f"{(r['budget_bytes'] - r['headroom_bytes']) / MiB:.0f} MiB against a budget of "
          f"{r['budget_bytes'] / MiB:.0f} MiB, "
          f"{margin:.0f} MiB {'to spare' if r['fits'] else 'over'}")


def _print_plan(p: Any) -> None:
    from packager.labels import human_context, human_count
    from packager.plan import BYTES_PER_PARAM

    a = p.architecture
    shape = f"{a.layers} layers, {a.kv_heads} KV heads x {a.head_dim}" if a.decoder else f"{a.layers} layers"
    err.print(escape(f"{a.name}: {human_count(a.parameters)} parameters ({a.parameters:,}), {shape}"), soft_wrap=True)
    if a.mapped_parameters:
        err.print(escape(f"  stored {human_count(a.parameters)}, effective {human_count(a.effective_parameters)}: "
                         f"{human_count(a.mapped_parameters)} of per-layer embeddings mapped from storage"),
                  soft_wrap=True)
    for line in _attention_lines(a):
        err.print(escape(f"  {line}"), soft_wrap=True)
    err.print(f"target {escape(p.target)}, budget {p.budget_bytes / MiB:.0f} MiB", soft_wrap=True)
    for name, count in a.components.items():
        err.print(f"  {name}: {count:,} parameters" + "".join(
            f", {precision} {count * bytes_per / MiB:.1f} MiB" for precision, bytes_per in BYTES_PER_PARAM.items()))
    for e in a.on_demand:
        err.print(escape(f"  {e.mode} encoder ({e.kind}): {human_count(e.parameters)} parameters, loaded on demand; "
                         f"{e.tokens} soft tokens an input at the processor's largest size"), soft_wrap=True)
    bound = any(r.decode_bound_tokens_per_s for r in p.rows)   # the device's bandwidth bound (decoders)
    mapped = any(r.mapped_bytes for r in p.rows)
    modes = [e.mode for e in a.on_demand]
    table = Table("precision", "context", "weights MiB", *(["mapped MiB"] if mapped else []), "KV cache MiB",
                  "peak MiB (low-high)" if not modes else "text peak MiB", *(f"{m} peak MiB" for m in modes),
                  "fits", *(["tok/s bound"] if bound else []), box=box.SIMPLE_HEAD)
    for r in p.rows:
        kv = f"{r.kv_cache_bytes / MiB:.0f}" + (f" ({r.kv_bits}-bit, planning only)" if r.planning_only else "")
        if len(r.kv_by_type) > 1:
            kv += " (" + ", ".join(f"{kind.removesuffix('_attention')} {b / MiB:.0f}"
                                   for kind, b in r.kv_by_type.items()) + ")"
        table.add_row(r.precision, human_context(r.context), f"{r.weights_bytes / MiB:.0f}",
                      *([f"{r.mapped_bytes / MiB:.0f}"] if mapped else []), kv,
                      f"{r.peak_low_bytes / MiB:.0f}-{r.peak_high_bytes / MiB:.0f}",
                      *(f"{r.modes[m][0] / MiB:.0f}-{r.modes[m][1] / MiB:.0f}" for m in modes),
                      "[green]yes[/]" if r.fits else "[red]no[/]",
                      *([f"{r.decode_bound_tokens_per_s:.1f}"] if bound else []))
    Console().print(table)
    for precision, tokens in p.max_context.items():
        if p.max_context_by_mode:
            print(f"{precision}: " + "; ".join(
                f"{mode} " + (f"fits up to {human_context(by[precision])} tokens" if by[precision] else "does not fit")
                for mode, by in p.max_context_by_mode.items()))
        elif a.decoder:
            smaller = p.max_context_smaller_kv.get(precision, 0)
            print(f"{precision}: "
                  + (f"fits up to {human_context(tokens)} tokens of context" if tokens else "does not fit")
                  + (f"; with an {p.smaller_kv} KV cache up to {human_context(smaller)} (--fit auto takes it)"
                     if smaller else ""))
    for note in p.notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)


def _attention_lines(a: Any) -> list[str]:
    """The KV cache's layers by type: how many own a cache, their KV heads, head size and window."""
    groups: dict[tuple[str, int, int, int], int] = {}
    shared = 0
    for layer in a.attention:
        if not layer.owns_cache:
            shared += 1
            continue
        key = (layer.kind, layer.kv_heads, layer.head_dim, layer.window)
        groups[key] = groups.get(key, 0) + 1
    if len(groups) <= 1 and not shared and not any(k[3] for k in groups):
        return []
    lines = [f"KV cache: {n} {kind} layers, {heads} KV heads x {dim}" + (f", window {window}" if window else "")
             for (kind, heads, dim, window), n in groups.items()]
    return lines + ([f"KV cache: {shared} layers share an earlier layer's (no cache of their own)"] if shared else [])


def _print_smoke(result: Any) -> None:
    r = result.report
    emu = result.emulation
    if emu:
        err.print(escape(f"emulated  {emu['emulated_cpu']} under {emu['qemu'].split(' (')[0]}, Debian {emu['debian']}, "
                         f"Python {emu['device_python']}, {emu['runtime']} {emu['runtime_version']}"), soft_wrap=True)
        if emu["cpu_note"]:
            err.print(escape(f"note: {emu['cpu_note']}"), soft_wrap=True)
    signature = r.get("signature", {})
    if signature.get("checked") and "public_key_sha256" in signature:
        err.print(f"signature verified, key sha256 {signature['public_key_sha256']}", soft_wrap=True)
    elif signature.get("note"):
        err.print(f"note: {escape(signature['note'])}", soft_wrap=True)
    for p in r.get("missing_providers", []):
        err.print(f"note: {provider_name(p)} ({p}) is not available on this host; ran on "
                  f"{', '.join(provider_name(q) for q in r['providers'])} (not exercised: {provider_name(p)})",
                  soft_wrap=True)
    if "files_checked" in r:
        err.print(f"checksums {r['files_checked']} files OK")
    for name, checked in (r.get("models") or {"": r}).items():   # a bundle of several models: each one's
        _print_smoke_model(f"{name}: " if name else "", checked)
    if "peak_bytes" in r:
        bound = " (upper bound: qemu's own memory included)" if emu else ""
        err.print(f"memory    peak {r['peak_bytes'] / MiB:.0f} MiB{bound} of {r['budget_bytes'] / MiB:.0f} MiB budget",
                  soft_wrap=True)
    print(result.verdict)


def _print_smoke_model(what: str, r: dict[str, Any]) -> None:
    acc = r.get("accuracy", {})
    if "token_agreement" in acc:   # decoders
        err.print(f"outputs   {escape(what)}{acc['token_agreement']:.1%} of the fp32 reference's greedy tokens, logits "
                  f"cosine {acc['min_logits_cosine']:.5f}", soft_wrap=True)
    elif "min_cosine" in acc:
        err.print(f"outputs   {escape(what)}min cosine {acc['min_cosine']:.5f} vs the fp32 reference", soft_wrap=True)
    if "eval" in r:
        err.print(f"eval      {escape(what)}{r['eval']['passed']}/{r['eval']['cases']} of the shipped eval cases pass "
                  f"(build host: {r['eval']['build_host_score']:.0%})", soft_wrap=True)


def _print_inspect(r: dict[str, Any], top: int) -> None:
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)
    opsets = ", ".join(f"{d} {v}" for d, v in r["opsets"].items())
    out.print(escape(f"{r['path']}: IR version {r['ir_version']}, opsets {opsets}; {r['parameters']:,} parameters, "
                     f"{r['size_bytes'] / MiB:.1f} MiB on disk"), soft_wrap=True)
    if r.get("bundle"):
        b = r["bundle"]
        out.print(escape(f"bundle {b['name']} for {b['target']} ({b['recipe']}, {b['runtime']})"), soft_wrap=True)
    io = Table("", "name", "dtype", "shape", box=box.SIMPLE_HEAD)
    for kind in ("inputs", "outputs"):
        for v in r[kind]:
            io.add_row(kind[:-1], escape(v["name"]), v["dtype"], escape(str(v["shape"])))
    out.print(io)
    for p in r.get("open_inputs", []):
        shape = ",".join(map(str, p["shape"]))
        out.print(escape(f"open input {p['name']}: packager runs it at {shape} ({p['why']}); --shape "
                         f"{p['name']}=... sets another"), soft_wrap=True)
    ops = Table("operator", "count", box=box.SIMPLE_HEAD)
    ops.columns[1].justify = "right"
    for row in r["operators"][:top]:
        name = row["op_type"] if row["domain"] == "ai.onnx" else f"{row['domain']}.{row['op_type']}"
        ops.add_row(escape(name), str(row["count"]))
    if len(r["operators"]) > top:
        ops.add_row(f"... {len(r['operators']) - top} more (--top, --json)", "")
    out.print(ops)
    compat = Table("target", "runtime", "verdict", "needs", box=box.SIMPLE_HEAD)
    verdicts = {"ok": "[green]runs[/]", "incompatible": "[red]does not run[/]", "unknown": "[yellow]unknown runtime[/]"}
    for c in r["compatibility"]:
        compat.add_row(c["target"], c["runtime"], verdicts[c["status"]], c["needs"] or "")
    out.print(compat)
    for c in r["compatibility"]:
        for line in [*c["problems"], *([c["reason"]] if c.get("reason") else [])]:
            out.print(escape(f"{c['target']}: {line}"), soft_wrap=True)
    notes = sorted({n for c in r["compatibility"] for n in c["notes"]})
    for note in notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)
