"""The notes under `packager plan`'s table: how the runtime holds the model, what is mapped or shared, and why
nothing fits where the weights alone do not."""

from __future__ import annotations

from packager.gpu import uses_gpu
from packager.labels import human_count
from packager.plan_types import Architecture, Row
from packager.profiles import Profile, builtin_profiles
from packager.runtimes import DecoderMemory, runtime_for


def notes(a: Architecture, profile: Profile, mem: DecoderMemory, rows: list[Row], kv_bits: int | None) -> list[str]:
    """The notes of a plan of `a` on `profile` (the profile as packaged: plan.as_packaged), `mem` the runtime's
    holding of its first precision."""
    notes = list(mem.notes)
    if kv_bits and kv_bits != mem.kv_bits and kv_bits in mem.runnable_kv_bits:
        notes.append(f"KV cache planned at {kv_bits} bits (--kv-bits), which {profile.runtime.package} runs")
    if rows and rows[0].planning_only:
        runnable = " or ".join(map(str, mem.runnable_kv_bits))
        notes.append(f"a {rows[0].kv_bits}-bit KV cache is planning-only: {profile.runtime.package} "
                     f"{profile.runtime.version} runs this target's decoders with a KV cache of {runnable} bits")
    if not a.decoder:
        notes.append(f"{a.name} is not a decoder: no KV cache; context is the sequence length")
    elif not mem.logits_positions:
        notes.append(f"activations assume a prompt of {mem.prefill_tokens} tokens processed in one pass")
    if a.mapped_parameters:
        notes.append(f"{human_count(a.mapped_parameters)} parameters of per-layer embeddings stay in storage, not "
                     f"resident: the loop reads the rows of a pass's tokens (at most {mem.prefill_tokens}) and feeds "
                     "them to the model, on every device")
    floor = _weights_alone_overflow(rows, profile)
    if floor:
        notes.append(floor + cpu_only_hint(profile))
    if a.on_demand:
        notes.append(f"{' and '.join(e.mode for e in a.on_demand)}: the encoder is loaded on demand, at the profile's "
                     f"encoder recipe ({profile.recipe}), beside the decoder's weights and its KV cache at the "
                     "context, on one input at the processor's largest size; `fits` is the worst mode's. A bundle "
                     "ships Gemma 4's and Gemma 3n's encoders, and run.py loads each for its input (--image, "
                     "--audio); `package` measures each mode and judges the worst")
    if a.unplanned_encoders:
        notes.append(f"{a.name}: no rule counts its {', '.join(a.unplanned_encoders)} encoder; the mode it serves is "
                     "not planned")
    elif a.attention and a.name.endswith("ForConditionalGeneration") and not a.on_demand:
        notes.append(f"{a.name}: the text decoder only; its config names no encoder")
    if any(not layer.owns_cache for layer in a.attention):
        notes.append("layers that share an earlier layer's keys and values own no cache")
    if any(layer.window for layer in a.attention) and not mem.windowed_kv:
        notes.append(f"{profile.runtime.package} keeps a full-length cache on sliding-window layers (the export "
                     "holds no window)")
    if a.components:
        notes.append(f"{a.name} is an encoder-decoder: both components are resident together (weights summed); the "
                     f"KV cache holds the context and the encoder's {a.encoder_positions} positions of cross-attention")
    gpu_context = runtime_for(profile).memory(profile, "text").gpu_context_bytes
    if gpu_context:
        notes.append(f"the runtime base includes the GPU providers' CUDA context on unified memory "
                     f"({gpu_context / 2**20:.0f} MiB, {profile.name}'s runtime.gpu_context_bytes)")
    return notes


def _weights_alone_overflow(rows: list[Row], profile: Profile) -> str:
    """Where even the smallest precision's resident weights and the runtime base exceed the budget, no context and no
    runtime setting fits it: say so, with the figures ("" otherwise)."""
    smallest = min(rows, key=lambda r: r.weights_bytes, default=None)
    if smallest is None or smallest.weights_bytes + smallest.runtime_base_bytes <= profile.budget.memory_bytes:
        return ""
    mib = 2**20
    return (f"at {smallest.precision}, the resident weights alone ({smallest.weights_bytes / mib:.0f} MiB) and the "
            f"runtime base ({smallest.runtime_base_bytes / mib:.0f} MiB) exceed the budget "
            f"({profile.budget.memory_bytes / mib:.0f} MiB) by "
            f"{(smallest.weights_bytes + smallest.runtime_base_bytes - profile.budget.memory_bytes) / mib:.0f} MiB "
            "before any KV cache: no context fits")


def cpu_only_hint(profile: Profile) -> str:
    """Where the base counts a GPU's CUDA context, the built-in profiles of the same device on its CPU cores only,
    which hold none ("" where there are none)."""
    if not uses_gpu(profile):
        return ""
    names = [p.name for p in builtin_profiles().values() if p.device == profile.device and not uses_gpu(p)]
    return f"; on the CPU cores only there is no CUDA context: --target {' or '.join(names)}" if names else ""
