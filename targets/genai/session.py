"""The model in onnxruntime-genai (bundles whose manifest names it ship this file as runtime/session.py, and
ONNX Runtime's session.py as runtime/ort_session.py for the helpers they share): the runner and the decoder loop.

Generation runs in genai's native code: the KV cache is its own buffer (past and present share it), the model
returns the logits of the last position only, and the prompt goes in chunks of the runtime's
`genai.prefill_chunk` tokens, so a long prompt never holds more than a chunk's activations.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .families import family
from .manifest import HERE, read_runtime
from .ort_session import (  # noqa: F401  (the package's names: runtime/__init__.py imports them from here)
    RowFeeds,
    choose_providers,
    encode,
    encoded,
    encoder_feeds,
    load_tokenizer,
    prefill_chunk,
    provider_options,
    session_options,
    start_ids,
)
from .peak import fix_mmap_threshold, rss_bytes

DEFAULT_CHUNK = 256


class Decoder:
    """Greedy generation in an onnxruntime-genai Generator, batch 1: the same calls as ONNX Runtime's Decoder
    (generate, score, step, empty_past), so the comparison and the measurement need no other code."""

    # The defaults: a Decoder made as ONNX Runtime's is, Decoder(model, io) (runtime/evaluation.py's, for the
    # eval cases), prefills in the default chunks.
    def __init__(self, model: Any, io: dict[str, Any], chunk: int = DEFAULT_CHUNK, context: int = 0,
                 window: int = 0) -> None:
        self.model, self.io, self.chunk, self.context = model, io, chunk, context
        self.prefill_chunk = chunk   # the prompt's passes (runtime/measure.py measures the last)
        self.window = window   # sliding-window layers: genai refuses a cache shorter than their window
        self.eos = set(io.get("eos_token_ids", []))

    def chunk_at(self, context: int) -> int:
        """The tokens of the pass that fills a cache of `context` positions (runtime/measure.py measures it)."""
        return min(context, self.chunk)

    def generator(self, length: int) -> Any:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max(length, self.window, 1), do_sample=False)
        return og.Generator(self.model, params)

    def append(self, generator: Any, ids: list[int]) -> np.ndarray:
        """`ids` appended in chunks; the logits of the last one [vocab]."""
        for start in range(0, len(ids), self.chunk):
            generator.append_tokens(ids[start:start + self.chunk])
        return np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1)

    def empty_past(self, length: int = 0) -> int:
        """The cache of `length` positions: genai keeps its own, so only its length (filled by step)."""
        return length

    def step(self, ids: list[int], past: Any, past_length: int) -> tuple[np.ndarray, Any]:
        """Logits [1, vocab] of the last new token, and the generator that now holds them. `past` is a previous
        step's generator, or a length (empty_past) to fill with token 0 first (a measurement's full cache)."""
        generator = past
        if isinstance(past, int):
            generator = self.generator(max(self.context, past_length + len(ids)))
            if past_length:
                self.append(generator, [0] * past_length)
        return self.append(generator, list(ids))[None], generator

    def prefill(self, ids: list[int]) -> tuple[np.ndarray, Any]:
        """The prompt's pass, as generate makes it (step appends in chunks already)."""
        return self.step(ids, self.empty_past(), 0)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy tokens after the prompt (stopping after an end-of-sequence token), and the logits of the
        prompt's last position."""
        first: list[np.ndarray] = []
        return list(self.stream(prompt_ids, max_new_tokens, first)), first[0]

    def stream(self, prompt_ids: list[int], max_new_tokens: int,
               first: list[np.ndarray] | None = None) -> Iterator[int]:
        """generate's tokens, each as soon as it is chosen; the prompt's last logits appended to `first`."""
        generator = self.generator(len(prompt_ids) + max_new_tokens)
        logits = self.append(generator, prompt_ids)
        if first is not None:
            first.append(logits)
        for count in range(1, max_new_tokens + 1):
            token = int(np.argmax(logits))
            yield token
            if token in self.eos or count == max_new_tokens:
                return
            logits = self.append(generator, [token])

    def score(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids` (teacher-forced): a token at a time, the model returning the last
        position's only."""
        generator = self.generator(len(ids))
        return np.stack([self.append(generator, [t]) for t in ids])


class Runner:
    """The packaged model in onnxruntime-genai, with the bundle's tokenizer."""

    def __init__(self, bundle: Path, runtime: dict[str, Any], log_level: int = 3,
                 sessions: dict[str, Any] | None = None) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise RuntimeError("this bundle's model runs with onnxruntime-genai: pip install -r requirements.txt") \
                from None
        fix_mmap_threshold()
        self.bundle, self.runtime, self.io = bundle, runtime, runtime["io"]
        self.providers, self.missing_providers = ["CPUExecutionProvider"], []
        before = rss_bytes()
        folder = (bundle / runtime["model"]).parent
        config = og.Config(str(folder))
        config.clear_providers()   # the CPU, as the profile's providers say
        self.session = og.Model(config)
        self.load_bytes = {"model": max(0, rss_bytes() - before)}
        self.sessions = {"model": self.session}
        self.encoder = None
        self.family = family(self.io)
        self.tokenizer = load_tokenizer(bundle, self.io)
        chunk = int(runtime["session"].get("config", {}).get("genai.prefill_chunk", DEFAULT_CHUNK))
        self.decoder = Decoder(self.session, self.io, chunk, int(runtime.get("context") or 0), window(folder))

    @property
    def input_names(self) -> list[str]:
        return ["input_ids"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The prompt's last logits (a decoder's sample: its input_ids)."""
        return {"logits": self.decoder.step([int(t) for t in feeds["input_ids"][0]], 0, 0)[0][None]}

    def encode(self, text: str) -> dict[str, np.ndarray]:
        return {"input_ids": np.asarray([self.prompt_ids(text)], dtype=np.int64)}

    def run_texts(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        return [self.run(self.encode(t)) for t in texts]

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt).ids)

    def generate_text(self, prompt: str, max_new_tokens: int) -> tuple[str, list[int]]:
        """The greedy continuation of `prompt` (text and token ids), up to an end-of-sequence token."""
        tokens, _ = self.decoder.generate(self.prompt_ids(prompt), max_new_tokens)
        return self.tokenizer.decode(tokens), tokens

    def stream_text(self, prompt: str, max_new_tokens: int) -> Iterator[str]:
        """generate_text's text in pieces, each as soon as its tokens are generated (run.py --prompt prints them
        as they come). The text so far is decoded whole and the new part given: a token may end inside a
        character (byte-level BPE), so a piece ending in an incomplete one waits for the next token."""
        tokens: list[int] = []
        shown = ""
        for token in self.decoder.stream(self.prompt_ids(prompt), max_new_tokens):
            tokens.append(token)
            text = self.tokenizer.decode(tokens)
            if len(text) > len(shown) and text.startswith(shown) and not text.endswith("\ufffd"):
                yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(tokens)
        if len(text) > len(shown):
            yield text[len(shown):]


def window(folder: Path) -> int:
    """The sliding window of the model's windowed layers (Gemma 2 and 3, Mistral), 0 for none."""
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    return max(0, int(config["model"]["decoder"].get("sliding_window", {}).get("window_size", 0)))


def load(bundle: Path = HERE, sessions: dict[str, Any] | None = None) -> Runner:
    """The model of `bundle`."""
    return Runner(bundle, read_runtime(bundle).to_dict(), sessions=sessions)
