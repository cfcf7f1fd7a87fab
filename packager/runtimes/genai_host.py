"""verify's packaged side for onnxruntime-genai: the bundle's own device code, run in the `genai` environment
(which has the pinned onnxruntime-genai) as a child process that answers generate/score requests, a JSON line
each. The build host's own environment need not have onnxruntime-genai.
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


class ChildDecoder:
    """generate and score (what compare_decoder calls) answered by the child process."""

    def __init__(self, python: str, code: Path, stage: Path, spec: dict[str, Any]) -> None:
        spec_file = code / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        self.log = code / "stderr.txt"   # a file, not a pipe: a chatty runtime cannot fill it and stall the child
        with self.log.open("w", encoding="utf-8") as log:
            self.proc = subprocess.Popen([python, "-c", SERVER, str(code), str(stage), str(spec_file)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = (self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["no output"])[-1]
            raise PackagerError(f"the onnxruntime-genai model failed to load or run: {tail}", ExitCode.TOOL_FAILED)
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


class ChildRunner:
    """What verify reads of a runner: `decoder` (generate, score) and `evaluate` (the eval cases), both answered
    by the child; there is no session in this process."""

    session = None

    def __init__(self, decoder: ChildDecoder) -> None:
        self.decoder = decoder
        self.evaluate = decoder.evaluate
