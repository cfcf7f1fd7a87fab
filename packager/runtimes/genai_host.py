"""verify's two sides for onnxruntime-genai, each a child process in the `genai` environment that answers
generate/score requests, a JSON line each: the packaged side is the bundle's own device code (that environment has
the pinned onnxruntime-genai); the reference is the source model in PyTorch (TorchReference). The build host's own
environment needs neither onnxruntime-genai nor transformers 5.x.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from packager.errors import ExitCode, PackagerError

# The child: the bundle's run.py from `code` (the device files), the model from the staged folder.
SERVER = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import run
spec = json.loads(Path(sys.argv[3]).read_text(encoding="utf-8"))
runner = run.Runner(Path(sys.argv[2]), spec, log_level=4)
decoder = runner.decoder
print("ready", flush=True)
for line in sys.stdin:
    q = json.loads(line)
    if q["op"] == "evaluate":
        out = run.evaluate(runner.session, runner.io, runner.tokenizer, q["cases"])
    elif q["op"] == "generate":
        tokens, first = decoder.generate(q["ids"], q["n"])
        out = {"tokens": tokens, "logits": first.tolist()}
    else:
        out = {"logits": decoder.score(q["ids"]).tolist()}
    print(json.dumps(out), flush=True)
"""


# The PyTorch reference verify judges the packaged model against (issue 19, item 6): the source folder's model in
# transformers, fp32, eager attention, greedy with its own KV cache, as run.py's Decoder.generate runs (the prompt's
# last logits; stop after an end-of-sequence token). Its own loop, not model.generate: a checkpoint's
# generation_config.json (sampling, repetition penalty) must not change the reference.
# With a third argument, the folder of the E-class exporter (runtimes/eclass_export.py): its `reference` loads the
# model, the per-layer embedding table mapped in its stored dtype (E2B's is 8.8 GiB in fp32).
TORCH_SERVER = """
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
if len(sys.argv) > 3:
    sys.path.insert(0, sys.argv[3])
    from eclass_export import reference
    model = reference(Path(sys.argv[1]))
else:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager").eval()
eos = set(json.loads(sys.argv[2]))
print("ready", flush=True)

def last(ids, past):
    out = model(input_ids=torch.tensor([ids]), past_key_values=past, use_cache=True)
    return out.logits[0, -1].float(), out.past_key_values

with torch.inference_mode():
    for line in sys.stdin:
        q = json.loads(line)
        if q["op"] == "generate":
            logits, past = last(q["ids"], None)
            first, tokens = logits, []
            while len(tokens) < q["n"]:
                tokens.append(int(torch.argmax(logits)))
                if tokens[-1] in eos or len(tokens) == q["n"]:
                    break
                logits, past = last(tokens[-1:], past)
            out = {"tokens": tokens, "logits": first.tolist()}
        elif q["op"] == "kv":   # each layer's largest |key| and |value| after the prompt (an int8 cache's scales)
            cache = model(input_ids=torch.tensor([q["ids"]]), use_cache=True).past_key_values
            out = {kind: [float(getattr(layer, kind + "s").abs().max()) for layer in cache.layers]
                   for kind in ("key", "value")}
        else:
            out = {"logits": model(input_ids=torch.tensor([q["ids"]])).logits[0].float().tolist()}
        print(json.dumps(out), flush=True)
"""


class ChildDecoder:
    """generate and score (what compare_decoder calls) answered by the child process."""

    what = "the onnxruntime-genai model"

    def __init__(self, python: str, code: Path, stage: Path, spec: dict[str, Any],
                 env: dict[str, str] | None = None) -> None:
        spec_file = code / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        self._start([python, "-c", SERVER, str(code), str(stage), str(spec_file)], code / "stderr.txt", env)

    def _start(self, argv: list[str], log_path: Path, env: dict[str, str] | None) -> None:
        """`env`: the exporter environment's (exporter_envs.child_environ, which the caller passes: the runtimes
        sit below the exporter environments)."""
        self.log = log_path   # a file, not a pipe: a chatty runtime cannot fill it and stall the child
        with self.log.open("w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=env)
        self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = (self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["no output"])[-1]
            raise PackagerError(f"{self.what} failed to load or run: {tail}", ExitCode.TOOL_FAILED)
        return None if line.strip() == "ready" else json.loads(line)

    def _ask(self, **query: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(query) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        out = self._ask(op="generate", ids=prompt_ids, n=max_new_tokens)
        return list(out["tokens"]), np.asarray(out["logits"], dtype=np.float32)

    def score(self, ids: list[int]) -> np.ndarray:
        return np.asarray(self._ask(op="score", ids=ids)["logits"], dtype=np.float32)

    def evaluate(self, cases: list[dict[str, Any]]) -> dict[str, Any]:
        """The eval cases scored by the bundle's own run.evaluate, as its smoke test scores them."""
        result: dict[str, Any] = self._ask(op="evaluate", cases=cases)
        return result

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class TorchReference(ChildDecoder):
    """verify's reference on the onnxruntime-genai path: the original model in PyTorch, in the exporter environment
    (transformers 5.x knows every family the builder makes), so that a builder bug fails the gate."""

    what = "the PyTorch reference"

    def __init__(self, python: str, source: Path, eos: list[int], work: Path, label: str,
                 env: dict[str, str] | None = None, loader: Path | None = None) -> None:
        """`loader`: the folder of the E-class exporter, whose `reference` loads an E-class model (TORCH_SERVER)."""
        self.label = label
        self._start([python, "-c", TORCH_SERVER, str(source), json.dumps(eos), *([str(loader)] if loader else [])],
                    work / "torch-stderr.txt", env)


    def kv_peaks(self, prompt_ids: list[int]) -> dict[str, list[float]]:
        """Each layer's largest |key| and |value| in the KV cache after the prompt ({"key": [...], "value": [...]})."""
        found: dict[str, list[float]] = self._ask(op="kv", ids=prompt_ids)
        return found


class ChildRunner:
    """What verify reads of a runner: `decoder` (generate, score) and `evaluate` (the eval cases), both answered
    by the child; there is no session in this process."""

    session = None

    def __init__(self, decoder: ChildDecoder) -> None:
        self.decoder = decoder
        self.evaluate = decoder.evaluate
