"""The model's sessions: providers, session options, the runner, the decoder loop with its KV cache, and an
encoder-decoder's encoder inputs.
"""

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .families import family
from .manifest import HERE, read_runtime
from .media import audio_features, image_pixels, read_image, read_wav
from .peak import fix_mmap_threshold, rss_bytes
from .soft import Soft, soft_feeds, soft_spec

# ---------------------------------------------------------------- session

ROWS_KEY = "packager.rows"   # packager/row_tables.py's: the metadata naming the tables a model takes as inputs


class RowFeeds:
    """The lookup tables the model takes as inputs (packager/row_feed.py: an E-class model's per-layer embeddings,
    a tied embedding's copy), filled for each pass with its tokens' rows, read from the tables' files at their
    offsets. A row read sits in the kernel's page cache, which reclaims it as it needs, never in this process: a
    pass holds its tokens' rows and nothing more, where a memory-mapped table kept every page it had read (E2B at
    8K: 202 MiB). The files are advised random: a read fetches its row's pages, not a readahead window around them."""

    def __init__(self, session: Any, folder: "Path | None") -> None:
        meta = session.get_modelmeta().custom_metadata_map if session is not None else {}
        self.tables: list[dict[str, Any]] = json.loads(meta.get(ROWS_KEY) or "[]")
        self.files: dict[str, Any] = {}
        if self.tables and folder is None:
            raise ValueError("this model takes its tables' rows as inputs: load it with the folder of its files")
        for t in self.tables:
            if t["file"] not in self.files:
                f = self.files[t["file"]] = open(Path(folder or ".") / t["file"], "rb", buffering=0)
                if hasattr(os, "posix_fadvise"):   # Linux, Android; macOS has none, and reads ahead less
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)

    def feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Each table's input for the tokens `ids` ([batch, sequence]): row t for token t, row 0 past the table."""
        out = {}
        flat = np.asarray(ids).reshape(-1)
        for t in self.tables:
            size, f = int(t["row_bytes"]), self.files[t["file"]]
            rows = np.empty(size * len(flat), dtype=np.uint8)
            for n, token in enumerate(flat.tolist()):
                f.seek(int(t["offset"]) + (token if 0 <= token < int(t["rows"]) else 0) * size)
                if f.readinto(memoryview(rows)[n * size:(n + 1) * size]) != size:
                    raise ValueError(f"{t['file']} ends before row {token} of {t['input']}: the bundle's files "
                                     "are incomplete; copy the bundle again")
            out[t["input"]] = rows.view(np.dtype(t["dtype"])).reshape(*np.shape(ids), *t["row"])
        return out

    def complete(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` with the tables' inputs it lacks, for its input_ids."""
        if not self.tables or "input_ids" not in feeds:
            return feeds
        return {**self.feeds(feeds["input_ids"]), **feeds}


# Prompt tokens a pass for a graph that gives the last position's logits: plan and the estimate count a chunk's
# activations with it (packager/decoder_config.py's LAST_ONLY_CHUNK, the same figure, and why it is 64)
PREFILL_CHUNK = 64
CHUNK_SCORES, MIN_CHUNK = PREFILL_CHUNK * 4096, 16   # decoder_config's: smaller chunks at a longer context


def prefill_chunk(context: int) -> int:
    """The prompt tokens of the pass that fills `context` positions: PREFILL_CHUNK, halved while its scores against
    the context pass CHUNK_SCORES (32 at 8K), never below MIN_CHUNK (packager/decoder_config.py prefill_chunk)."""
    chunk = PREFILL_CHUNK
    while chunk > MIN_CHUNK and chunk * context > CHUNK_SCORES:
        chunk //= 2
    return chunk

_GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                 "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def choose_providers(wanted: list[str], available: list[str]) -> tuple[list[str], list[str]]:
    """The wanted providers this runtime has, in priority order, and those it lacks."""
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, missing


def session_options(spec: dict[str, Any], log_level: int = 3) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(spec["intra_op_threads"])
    so.inter_op_num_threads = int(spec["inter_op_threads"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[spec["graph_optimization"]])
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if spec["execution_mode"] == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.enable_cpu_mem_arena = bool(spec["cpu_mem_arena"])
    so.enable_mem_pattern = bool(spec["mem_pattern"])
    so.log_severity_level = log_level
    # The profile's session config entries (the ARM kernel options, thread-pool spinning ...); a key this
    # runtime does not know is ignored by it, as the profile's comments say where that matters.
    for key, value in spec.get("config", {}).items():
        so.add_session_config_entry(str(key), str(value))
    return so


def provider_options(chosen: list[str], options: dict[str, dict[str, Any]], cache_dir: Path) -> list[dict[str, str]]:
    result = []
    for name in chosen:
        opts = {k: str(v) for k, v in options.get(name, {}).items()}
        if name == "TensorrtExecutionProvider" and opts.get("trt_engine_cache_enable") == "True":
            # Engines are built on first load and reused; the bundle may sit on a read-only path.
            opts.setdefault("trt_engine_cache_path", str(cache_dir / "trt-engines"))
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        result.append(opts)
    return result


class Runner:
    """The packaged model in an onnxruntime session, with the bundle's pre-processing."""

    def __init__(self, bundle: Path, runtime: dict[str, Any], log_level: int = 3,
                 sessions: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        fix_mmap_threshold()
        self.bundle = bundle
        self.runtime = runtime
        self.io = runtime["io"]
        self.providers, self.missing_providers = choose_providers(
            list(runtime["providers"]), ort.get_available_providers())
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "packager-bundle"

        # A bundle of several models stores a component they share once (blobs/<sha256>/): the models loaded
        # together (`sessions`, by file, session options and providers) share its session too, as an app would.
        shared = {} if sessions is None else sessions

        self.log_level, self.cache = log_level, cache

        def session(file: str) -> Any:
            key = json.dumps([str((bundle / file).resolve()), runtime["session"], self.providers,
                              runtime.get("provider_options", {})], sort_keys=True)
            if key not in shared:
                shared[key] = self.open_session(file)
            return shared[key]

        # Every component is loaded up front and stays resident together (none is loaded lazily): the
        # resident memory each one added as it loaded, for the per-component breakdown (--measure).
        self.load_bytes: dict[str, int] = {}
        self.sessions: dict[str, Any] = {}
        # The encoder first: the first session also carries the runtime's one-time initialisation.
        files = runtime.get("components") or {"model": runtime["model"]}
        for name, file in sorted(files.items(), key=lambda kv: kv[0] != "encoder"):
            before = rss_bytes()
            self.sessions[name] = session(file)
            self.load_bytes[name] = max(0, rss_bytes() - before)
        self.session = self.sessions.get("decoder", next(iter(self.sessions.values())))
        self.rows = RowFeeds(self.session, (bundle / runtime["model"]).parent)
        self.encoder = self.sessions.get("encoder")
        self.family = family(self.io)
        self.tokenizer = load_tokenizer(bundle, self.io) if self.family.tokenizer else None
        self.decoder = Decoder(self.session, self.io, self.rows) if self.family.decodes else None

    def open_session(self, file: str) -> Any:
        """A session of the bundle's `file` with its session options and providers (not kept: an encoder loaded on
        demand is released after its input, runtime/on_demand.py)."""
        import onnxruntime as ort

        return ort.InferenceSession(
            str(self.bundle / file), sess_options=session_options(self.runtime["session"], self.log_level),
            providers=self.providers,
            provider_options=provider_options(self.providers, self.runtime.get("provider_options", {}), self.cache))

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, self.rows.complete(feeds))))

    def encode(self, text: str) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            raise ValueError("this bundle's model takes tensors, not text: use --inputs FILE.npz")
        return encode(self.tokenizer, text, self.input_names)

    def run_texts(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        return [self.run(self.encode(t)) for t in texts]

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.decoder is None or self.tokenizer is None:
            raise ValueError("this bundle's model is not a text generator: give texts or --inputs FILE.npz")
        return list(self.tokenizer.encode(prompt).ids)

    def generate_text(self, prompt: str, max_new_tokens: int) -> tuple[str, list[int]]:
        """The greedy continuation of `prompt` (text and token ids), up to an end-of-sequence token."""
        assert self.decoder is not None and self.tokenizer is not None
        tokens, _ = self.decoder.generate(self.prompt_ids(prompt), max_new_tokens)
        return self.tokenizer.decode(tokens), tokens

    def generate_with(self, prompt: str, paths: list[Path], max_new_tokens: int) -> tuple[str, list[int], list[int]]:
        """The greedy continuation of `prompt` after the images and clips in `paths`, each read by its encoder,
        loaded for it and released (runtime/on_demand.py): text, tokens, and the prompt's ids with the placeholders."""
        from .on_demand import prompt_with

        if self.decoder is None or self.tokenizer is None or not (self.io.get("soft") or {}).get("encoders"):
            raise ValueError("this bundle's model reads no images or audio: --image and --audio are for a decoder "
                             "packaged with its encoders (a multimodal Gemma 4); give it text")
        ids, soft = prompt_with(self, prompt, paths)
        tokens, _ = self.decoder.generate(ids, max_new_tokens, soft=soft)
        return self.tokenizer.decode(tokens), tokens, ids

    # Encoder-decoders: raw input (audio, image or text) -> the encoder -> the decoder's loop.

    def encoder_feeds(self, raw: Any) -> dict[str, np.ndarray]:
        """The encoder's inputs for one raw input: a path to a .wav or .png (or the decoded waveform or
        pixels), or a text for text-to-text models."""
        return encoder_feeds(self.io, self.tokenizer, raw)

    def encoded(self, feeds: dict[str, np.ndarray]) -> "Decoder":
        """The decoder reading the encoder's output for `feeds`."""
        assert self.encoder is not None and self.decoder is not None
        return encoded(self.encoder, self.decoder, feeds)

    def generate_from(self, raw: Any, max_new_tokens: int) -> tuple[str, list[int]]:
        """Tokens (and their text) generated for one raw input, greedy, with the KV cache carried."""
        assert self.tokenizer is not None
        tokens, _ = self.encoded(self.encoder_feeds(raw)).generate(start_ids(self.io), max_new_tokens)
        return self.tokenizer.decode(tokens), tokens


class Decoder:
    """Greedy generation with the KV cache (past_key_values.N.key/value in, present.N.key/value
    out), batch 1, for decoder LLMs exported with past (optimum's text-generation-with-past)."""

    def __init__(self, session: Any, io: dict[str, Any], rows: "RowFeeds | None" = None) -> None:
        self.session = session
        self.io = io
        self.rows = rows or RowFeeds(session, None)   # the tables whose rows the model takes as inputs
        # An encoder-decoder's decoder (optimum's merged decoder: `use_cache_branch` picks the first step's
        # graph or the cached steps') also reads the encoder's output, and caches the cross-attention's keys
        # and values (past_key_values.N.encoder.*), computed once at the first step from that output.
        self.inputs = [i["name"] for i in io.get("components", {}).get("decoder", io)["inputs"]]
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.cross = {n for n in self.past if ".encoder." in n}
        self.presents = [n.replace("past_key_values.", "present.", 1) for n in self.past]
        kv = io["kv"]
        self.kv_shape = (1, int(kv["heads"]), 0, int(kv["head_dim"]))
        self.kv_dtype = np.dtype(kv["dtype"])
        # The E-class exporter's graph (io.kv.appends) lays its pasts out positions first, [batch, positions, KV
        # heads, size], and returns the new tokens' keys and values alone: step() writes them after the past in a
        # buffer this loop holds (appended), so that no step holds the cache twice. Others: [batch, KV heads,
        # positions, size], and the present they return is the whole cache again.
        self.appends = bool(kv.get("appends"))
        self.positions_axis, heads_axis = (1, 2) if self.appends else (2, 1)
        self.capacity = int(io.get("max_length") or 0)   # the positions a full layer's buffer is made for
        inputs = io.get("components", {}).get("decoder", io)["inputs"]
        # Layers of other head counts or sizes than io.kv's (Gemma 4's global layers): their inputs' own shapes
        self.layer_shapes = {i["name"]: (int(i["shape"][heads_axis]), int(i["shape"][3])) for i in inputs
                             if i["name"] in self.past and isinstance(i["shape"][heads_axis], int)
                             and isinstance(i["shape"][3], int)}
        # A graph that returns the last position's logits only (the E-class exporter's): score a token at a time
        self.last_only = io.get("logits") == "last"
        self.prefill_chunk = PREFILL_CHUNK if self.last_only else 0   # 0: a prompt in one pass
        # Sliding layers whose past's length axis is the window (packager/decoder_config.py WINDOW_AXIS, the E-class
        # exporter's): the graph returns the last window - 1 positions of their cache, never more
        window = int(kv.get("window") or 0)
        self.windows = {i["name"]: window - 1 for i in inputs
                        if i["name"] in self.past and window and i["shape"][self.positions_axis] == "window"}
        self.eos = set(io.get("eos_token_ids", []))
        self.soft = soft_spec(io, self.inputs)   # (width, pad id) where the graph takes soft tokens (soft.py)
        self.context_feeds: dict[str, np.ndarray] = {}   # encoder-decoders: the encoder's output, bound
        self.encoder_length = 0

    def bind(self, hidden: np.ndarray, mask: "np.ndarray | None" = None) -> "Decoder":
        """This decoder reading one input's encoder output (`hidden`, [1, length, size]; `mask` for
        text encoders, whose padding the decoder must not attend to)."""
        bound = copy.copy(self)
        columns = {"encoder_hidden_states": hidden,
                   "encoder_attention_mask": mask if mask is not None else np.ones(hidden.shape[:2], dtype=np.int64)}
        bound.context_feeds = {k: v for k, v in columns.items() if k in self.inputs}
        bound.encoder_length = int(hidden.shape[1])
        return bound

    def empty_past(self, length: int = 0) -> dict[str, np.ndarray]:
        """A KV cache of `length` positions (zeros): empty to start, or full to measure a long context
        (the cross-attention's then holds the encoder's length). Written, not np.zeros: untouched pages
        all map the kernel's one zero page, never resident, and a measurement would miss the cache it is
        there to hold."""
        def shape(name: str) -> tuple[int, ...]:
            positions = (self.encoder_length if length else 0) if name in self.cross else \
                min(length, self.windows.get(name, length))
            heads, size = self.layer_shapes.get(name, (self.kv_shape[1], self.kv_shape[3]))
            return (1, positions, heads, size) if self.appends else (1, heads, positions, size)

        if self.appends:   # a buffer with room for a chunk more, or the context: only the positions held are written
            room = self.prefill_chunk or PREFILL_CHUNK
            return {n: cache_buffer(shape(n), self.kv_dtype, self.windows[n] + room if n in self.windows
                                    else max(length + room, self.capacity)) for n in self.past}
        return {n: np.full(shape(n), 0, dtype=self.kv_dtype) for n in self.past}

    def feeds(self, ids: list[int], past: dict[str, np.ndarray], past_length: int,
              soft: "Soft | None" = None) -> dict[str, np.ndarray]:
        """The pass's inputs; a graph that takes soft tokens gets `soft`'s at this pass's positions (zeros without),
        the pad token in input_ids where they go."""
        extra: dict[str, np.ndarray] = {}
        if self.soft is not None:
            ids, extra = soft_feeds(ids, past_length, soft, self.soft)
        elif soft is not None:
            raise ValueError("this model's graph takes no soft tokens (a text decoder's, or its export predates them)")
        n = len(ids)
        columns = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past_length + n), dtype=np.int64),
            "position_ids": np.arange(past_length, past_length + n, dtype=np.int64)[None, :],
            "use_cache_branch": np.asarray([past_length > 0]),
        }
        return {**{k: v for k, v in columns.items() if k in self.inputs}, **self.rows.feeds(columns["input_ids"]),
                **extra, **self.context_feeds, **past}

    def step(self, ids: list[int], past: dict[str, np.ndarray], past_length: int,
             soft: "Soft | None" = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [len(ids), vocab] for the new tokens, and the cache that now holds them; `soft`: the prompt's soft
        tokens (soft.py), of which the pass takes those at its positions."""
        outputs = self.session.run(["logits", *self.presents], self.feeds(ids, past, past_length, soft))
        if self.appends:   # the new tokens' keys and values after the past; a sliding layer keeps its window
            return outputs[0][0], {n: appended(past[n], new, self.windows.get(n, 0))
                                   for n, new in zip(self.past, outputs[1:])}
        cache = dict(zip(self.past, outputs[1:]))
        if past_length:
            # The cross-attention's cache is the first step's, for good: the merged decoder's cached branch
            # returns placeholders for it (optimum's decoder_with_past has no such outputs).
            cache |= {n: past[n] for n in self.cross}
        return outputs[0][0], cache

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 soft: "Soft | None" = None) -> tuple[list[int], np.ndarray]:
        """Greedy tokens after the prompt (stopping after an end-of-sequence token), and the logits
        of the prompt's last position (the first prediction); `soft`: the prompt's soft tokens."""
        logits, past = self.prefill(prompt_ids, soft)
        first = logits[-1]
        tokens: list[int] = []
        length = len(prompt_ids)
        while len(tokens) < max_new_tokens:
            token = int(np.argmax(logits[-1]))
            tokens.append(token)
            if token in self.eos or len(tokens) == max_new_tokens:
                break
            logits, past = self.step([token], past, length)
            length += 1
        return tokens, first

    def prefill(self, ids: list[int], soft: "Soft | None" = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The prompt's pass: in chunks (pass_tokens: smaller as the cache grows) where the graph gives the last
        position's logits (the E-class exporter's), so that a long prompt's attention scores are a chunk's against
        the cache, not the whole prompt's against itself (8K tokens: 256 MiB a head in one pass); in one pass
        otherwise. `soft`: the prompt's soft tokens, each chunk taking those at its positions."""
        extra = [] if soft is None else [soft]   # passed only when given: a step wrapped with three arguments serves
        if not self.last_only:
            return self.step(ids, self.empty_past(), 0, *extra)
        past = self.empty_past()
        start = 0
        while start < len(ids):
            n = self.pass_tokens(start)
            logits, past = self.step(ids[start:start + n], past, start, *extra)
            start += n
        return logits, past

    def pass_tokens(self, start: int) -> int:
        """The tokens of the prompt's pass after `start`: prefill_chunk, halved while the pass's scores (its tokens
        x the positions it attends to) pass CHUNK_SCORES, never below MIN_CHUNK. The pass that ends at the context
        takes prefill_chunk(context) tokens, as the estimate counts; an earlier, larger pass holds as many scores
        against a shorter cache."""
        n = self.prefill_chunk
        while n > MIN_CHUNK and n * (start + n) > CHUNK_SCORES:
            n //= 2
        return n

    def chunk_at(self, context: int) -> int:
        """The tokens of the pass that fills a cache of `context` positions (runtime/measure.py measures it)."""
        return min(context, prefill_chunk(context)) if self.last_only else context

    def score(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids` in one pass (no cache): the teacher-forced predictions."""
        if not self.last_only:
            return self.step(ids, self.empty_past(), 0)[0]
        rows, past = [], self.empty_past()
        for n, token in enumerate(ids):
            logits, past = self.step([token], past, n)
            rows.append(logits[-1])
        return np.stack(rows)


def cache_buffer(shape: tuple[int, ...], dtype: np.dtype, room: int) -> np.ndarray:
    """A past of `shape` (positions on axis 1, zeros) at the front of a buffer of `room` positions or more: a view,
    which step() appends to in place. Only the positions held are written: the rest of a large buffer stays
    untouched memory, no resident page (and a measurement of a long context holds the pages of its cache)."""
    buffer = np.empty((shape[0], max(room, shape[1]), *shape[2:]), dtype=dtype)
    buffer[:, :shape[1]] = 0
    return buffer[:, :shape[1]]


def appended(past: np.ndarray, new: np.ndarray, keep: int = 0) -> np.ndarray:
    """`past` (positions on axis 1) and then `new`, written after it in the buffer `past` is a view of (cache_buffer)
    where it has room, in a larger one otherwise; with `keep` (a sliding layer's window), the last `keep` positions
    only: a view that slides along its buffer, the window moved back to the buffer's front only when no room is left
    after it (once in a buffer's spare positions, 64 steps of decode, where a copy each step moved the whole window).
    An older view may then read another step's positions: a past is read once, by the step that extends it."""
    length, n = past.shape[1], new.shape[1]
    buffer, start = holder(past)
    if buffer is None or start + length + n > buffer.shape[1]:
        if buffer is not None and length + n <= buffer.shape[1]:
            buffer[:, :length] = buffer[:, start:start + length]   # through a temporary where they overlap
        else:
            buffer = np.empty((past.shape[0], max(length + n, 2 * length), *past.shape[2:]), dtype=past.dtype)
            buffer[:, :length] = past
        start = 0
    end = start + length + n
    buffer[:, start + length:end] = new
    return buffer[:, max(start, end - keep) if keep else start:end]


def holder(past: np.ndarray) -> "tuple[np.ndarray | None, int]":
    """The buffer `past` is a run of positions of (appended, cache_buffer), and the position it starts at; (None,
    0) for an array of its own."""
    buffer = past.base
    if not isinstance(buffer, np.ndarray) or buffer.ndim != past.ndim or buffer.shape[2:] != past.shape[2:] \
            or buffer.strides != past.strides or not buffer.flags.c_contiguous:
        return None, 0
    offset = past.ctypes.data - buffer.ctypes.data
    start, rest = divmod(offset, buffer.strides[1])
    if rest or start < 0 or start + past.shape[1] > buffer.shape[1]:
        return None, 0
    return buffer, start


def encode(tokenizer: Any, text: str, input_names: list[str]) -> dict[str, np.ndarray]:
    """Tokenize one text into the model's inputs (batch of one)."""
    enc = tokenizer.encode(text)
    columns = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
    return {name: np.asarray([columns[name]], dtype=np.int64) for name in input_names}


def load_tokenizer(bundle: Path, io: dict[str, Any]) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise RuntimeError("this bundle's model takes text and needs the `tokenizers` package: "
                           "pip install -r requirements.txt") from None
    tok = Tokenizer.from_file(str(bundle / io["tokenizer"]))
    tok.no_padding()
    tok.enable_truncation(max_length=int(io["max_length"]))
    return tok


def load(bundle: Path = HERE, sessions: dict[str, Any] | None = None) -> Runner:
    """The model of `bundle`; `sessions` (a dict, shared between the calls that pass it) loads a file that
    several models name once."""
    return Runner(bundle, read_runtime(bundle).to_dict(), sessions=sessions)


# ---------------------------------------------------------------- encoder-decoders: raw input
#
# A user on the device has audio or an image, not the encoder's tensors: the runner reads WAV and PNG
# with the standard library and numpy, and computes what the model's pre-processor would (Whisper's
# log-mel spectrogram, a ViT's resized and normalised pixels), from the figures in runtime.io.preprocess.



def start_ids(io: dict[str, Any]) -> list[int]:
    """The tokens an encoder-decoder's generation starts from (config.json's decoder_start_token_id)."""
    return [int(t) for t in io["decoder_start_ids"]]


def encoded(encoder: Any, decoder: Decoder, feeds: dict[str, np.ndarray]) -> Decoder:
    """`decoder` bound to the output of `encoder` (an onnxruntime session) on `feeds`."""
    hidden = encoder.run(None, feeds)[0]
    return decoder.bind(hidden, feeds.get("attention_mask"))


def encoder_feeds(io: dict[str, Any], tokenizer: Any, raw: Any) -> dict[str, np.ndarray]:
    """The encoder's inputs for one raw input: audio (a .wav path, or samples at the model's rate), an
    image (a .png path, or [height, width, channels] uint8 pixels) or a text."""
    modality, pre = io["modality"], io["preprocess"]
    name = io["components"]["encoder"]["inputs"][0]["name"]
    if modality == "audio":
        wave = read_wav(Path(raw), int(pre["sampling_rate"])) if isinstance(raw, (str, Path)) else np.asarray(raw)
        return {name: audio_features(wave, pre)[None]}
    if modality == "image":
        pixels = read_image(Path(raw)) if isinstance(raw, (str, Path)) else np.asarray(raw)
        return {name: image_pixels(pixels, pre)[None]}
    names = [i["name"] for i in io["components"]["encoder"]["inputs"]]
    return encode(tokenizer, str(raw), names)
