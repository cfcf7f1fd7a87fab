"""optimum-onnx's exporter run on one Hugging Face folder, in packager's process or in a child (export.py chooses,
by the model's size): the child's side, the progress it reports on a pipe, and its outcome. The exporters' chatter
is silenced here (`quiet`), for them and for the samples that packager builds with transformers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from packager.adapter import merge
from packager.context import Context
from packager.errors import ExitCode, PackagerError
from packager.onnx_rewrite import merge_external_data


def quiet() -> contextlib.ExitStack:
    """Silence the exporters' chatter (and keep stdout clean for --json)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("transformers", "optimum", "torch", "root"):
        logger = logging.getLogger(None if name == "root" else name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def run_export_child(ctx: Context, job: dict[str, Any]) -> dict[str, Any]:
    """Run _export_child(job) in a fresh interpreter; its outcome ({} when it exported). Its output
    goes to a log in the work folder, whose tail explains a crash."""
    import subprocess
    import sys

    read_fd, write_fd = os.pipe()
    log_path = ctx.work_dir / "export.log"
    root = str(Path(__file__).resolve().parents[1])   # the folder holding the packager package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "packager.export_process", str(write_fd), json.dumps(job)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,), env=env)
    os.close(write_fd)
    outcome: dict[str, Any] = {}
    try:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as messages:
            for line in messages:
                kind, _, text = line.rstrip("\n").partition(" ")
                if kind == "progress":
                    ctx.progress(text)
                elif kind == "outcome":
                    outcome = json.loads(text)
        code = child.wait()
    except BaseException:   # an interrupt: the child goes too, at once
        child.kill()
        child.wait()
        raise
    if code != 0 and not outcome:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        why = (f"killed by signal {-code}{' (out of memory?)' if code == -9 else ''}" if code < 0
               else f"exit code {code}")
        outcome = {"error": f"the export process ended with {why}: {tail[0][:300]}"}
    return outcome


def export_here(ctx: Context, job: dict[str, Any]) -> dict[str, Any]:
    """_export(job) in this process; its outcome ({} when it exported)."""
    outcome: dict[str, Any] = {}

    def say(kind: str, text: str) -> None:
        if kind == "progress":
            ctx.progress(text)
        elif kind == "outcome":
            outcome.update(json.loads(text))

    _export(job, say)
    return outcome


def _export_child(report_fd: int, job: dict[str, Any]) -> None:
    """The child's side: _export(job), telling the parent on `report_fd`."""
    report = os.fdopen(report_fd, "w", encoding="utf-8", buffering=1)
    _export(job, lambda kind, text: report.write(f"{kind} {text}\n"))


def _export(job: dict[str, Any], say: Callable[[str, str], object]) -> None:
    """main_export on the folder, saying which decoder layer the trace has reached ("progress TEXT") and
    how it ended ("outcome {json}", last: {} when it exported)."""

    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the model configs)
        import torch
        from optimum.exporters.onnx import main_export
    except ImportError:
        say("outcome", json.dumps({"missing": True}))
        return
    say("progress", "loading the weights")
    layers = 0
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        config = json.loads((Path(job["folder"]) / "config.json").read_text(encoding="utf-8"))
        layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    seen = 0

    def layer_reached(module: torch.nn.Module, args: Any) -> None:
        # The trace runs the model forward once: each decoder layer's entry is a step of it.
        nonlocal seen
        if type(module).__name__.endswith(("DecoderLayer", "Block")) and layers:
            seen += 1
            say("progress", f"tracing layer {(seen - 1) % layers + 1}/{layers}")
            if seen % layers == 0:
                say("progress", "writing the ONNX graph and its weights")

    hook = torch.nn.modules.module.register_module_forward_pre_hook(layer_reached)
    _stream_external_data_merge()
    try:
        with quiet():
            # no_post_process: optimum's only post-processing of a single decoder is the deduplication of
            # tied weights, which loads the whole ONNX model (weights and all) beside the torch model and
            # writes the lm_head as Transpose(embedding table), which fold_transposed_weights then writes
            # out again as its own table: packager keeps a tied pair tied itself (recipes.int4). An
            # encoder-decoder needs it: it merges the two decoders into decoder_model_merged.onnx.
            main_export(job["folder"], job["out"], task=job["task"], opset=job["opset"],
                        local_files_only=True, do_validation=False, device="cpu",
                        no_post_process=not job.get("post_process", False),
                        do_constant_folding=job.get("constant_folding", True))
    except Exception as e:
        say("outcome", json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}))
        return
    finally:
        hook.remove()
    say("outcome", "{}")


def _stream_external_data_merge() -> None:
    """Make optimum's merge of torch.onnx's per-tensor files into one model.onnx_data stream, in this
    (child) process. optimum-onnx 0.1.0 (exporters/onnx/convert.py, export_pytorch) merges them with
    onnx.load(load_external_data=True) and onnx.save while it still holds the torch model: for a 1B model
    5 GB of torch weights and 6 GB of protobuf at once. Here its module's `onnx` is the real one but for
    load (the graph only) and save (each tensor's file appended to the one data file, a tensor at a time)."""
    import types

    from optimum.exporters.onnx import convert

    real = convert.onnx
    if getattr(real, "packager_streaming", False):
        return
    proxy: Any = types.ModuleType("onnx")  # onnx, with attributes of packager's set below
    proxy.__dict__.update(real.__dict__)
    proxy.packager_streaming = True

    def load(f: Any, *args: Any, load_external_data: bool = True, **kwargs: Any) -> onnx.ModelProto:
        model: onnx.ModelProto = real.load(f, *args, load_external_data=False, **kwargs)
        return model

    def save(model: onnx.ModelProto, f: Any, *args: Any, save_as_external_data: bool = False,
             location: str | None = None, size_threshold: int = 1024, **kwargs: Any) -> None:
        if not save_as_external_data or location is None:
            real.save(model, f, *args, save_as_external_data=save_as_external_data, location=location,
                      size_threshold=size_threshold, **kwargs)
            return
        merge_external_data(model, Path(f), location, size_threshold)

    proxy.load, proxy.save = load, save
    convert.onnx = proxy


if __name__ == "__main__":   # the export's child process (run_export_child)
    import sys

    _export_child(int(sys.argv[1]), json.loads(sys.argv[2]))


def merged(ctx: Context, folder: Path, name: str = "merged") -> Path:
    """The base folder with the LoRA adapter merged into its weights, in the run's work dir (removed
    with it): what the exporter reads (and onnxruntime-genai's builder: packager/runtime_steps.py). `name`: the
    folder's, for a copy that outlives the builder's (the genai path's PyTorch reference)."""
    assert ctx.source is not None and ctx.source.adapter is not None
    dest = ctx.work_dir / name
    with quiet():
        try:
            merge(folder, ctx.source.adapter, dest, ctx.source.merge_method)
        except PackagerError:
            raise
        except Exception as e:
            raise PackagerError(
                f"merging the adapter {ctx.source.adapter.path} into {ctx.source.path} failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}); check that the adapter was trained on this base.",
                ExitCode.TOOL_FAILED,
            ) from e
    return dest
