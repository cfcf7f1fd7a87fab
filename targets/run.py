#!/usr/bin/env python3
"""Run the packaged model on the device.

Depends on what the device has: onnxruntime, numpy, the standard library (and `tokenizers`
for text models); Python 3.10 to 3.13. It never imports packager.

    python run.py "some sentence" ["another one" ...]   text models: prints the output as JSON
    python run.py --prompt "Once" [--max-new-tokens 32]  decoder LLMs: greedy generation with the KV cache
    python run.py clip.wav | photo.png | "a text"        encoder-decoders (speech, image, text to text):
                                                        the generated tokens and text, the KV cache carried
    python run.py --inputs feeds.npz [--output out.npz]  any model: runs one set of inputs
    python run.py --measure                             peak resident memory of load and run
    python run.py --model NAME ...                      a bundle of several models (`packager package A B`):
                                                        the member to run; --measure loads them all together

Importable too (smoke_test.py does):

    import run
    runner = run.load()                 # the bundle this file sits in
    runner.run_texts(["hello"])         # {output name: array}
    runner.generate_text("Once", 16)    # decoders: the continuation

Signed bundles (`packager package --sign`): with a public key configured (`--public-key PATH` or
$PACKAGER_PUBLIC_KEY), the CLI refuses a bundle that is unsigned, signed with another key or
altered after signing. An importer checks with `run.check_signature(bundle, key)` before `load()`.
"""

# No `from __future__ import annotations`: it imports the module `__future__` at run time, before the
# lines below could take the bundle's folder off sys.path (SECURITY.md, "What runs before the check").
import sys

if __name__ == "__main__" and sys.path and not getattr(sys.flags, "safe_path", False):
    # `python run.py` puts this file's folder first on sys.path, so a file dropped beside it (numpy.py,
    # json.py) would be imported instead of the real module, before any check could see it. The bundle
    # imports nothing from its own folder: take the folder off the path before the first import.
    del sys.path[0]

import argparse
import base64
import copy
import hashlib
import json
import os
import platform
import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
SAMPLE_INPUTS = "samples/inputs.npz"
SAMPLE_EXPECTED = "samples/expected.npz"
SAMPLE_TEXTS = "samples/texts.json"
SAMPLE_EVAL = "samples/eval.jsonl"   # --eval: the first of the user's cases, rerun by the smoke test
SIGNATURE = "manifest.sig"           # base64 Ed25519 signature over the exact bytes of manifest.json
PUBLIC_KEY_ENV = "PACKAGER_PUBLIC_KEY"
SUITE = "suite"                      # manifest kind of a bundle of several models (models/<name>/, blobs/)

_GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                 "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def sha256_file(path: Path) -> str:
    """The checksum SHA256SUMS and the manifest record for each bundle file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: Path = HERE) -> dict[str, Any]:
    """The bundle's manifest.json; ValueError (one sentence) when it is not a JSON object."""
    try:
        with open(bundle / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested past the parser's depth
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{MANIFEST} is not valid JSON ({reason}); re-download or rebuild the bundle") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{MANIFEST} holds a JSON {type(manifest).__name__}, not an object; re-download or rebuild "
                         "the bundle")
    return manifest


# ---------------------------------------------------------------- signature
#
# SHA256SUMS proves integrity, not origin: whoever can rewrite a model can rewrite its checksums.
# The publisher's Ed25519 signature over manifest.json, which records every other file's sha256,
# ties the whole bundle to the publisher's key. `cryptography` is imported only here, so unsigned
# bundles run without it (a signed bundle's requirements.txt pins it).


class SignatureError(ValueError):
    """The bundle fails its signature check, or the public key cannot be used: refuse to run it."""


def configured_public_key(option: Path | None = None) -> Path | None:
    """The public key this device trusts: --public-key, else $PACKAGER_PUBLIC_KEY, else none."""
    if option is not None:
        return option
    env = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return Path(env) if env else None


def load_public_key(path: Path) -> Any:
    """The Ed25519 public key in the PEM file `path` (SignatureError, one sentence, when it is not one)."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise SignatureError("checking the bundle's signature needs the `cryptography` package, which is not "
                             "installed; pip install -r requirements.txt (a signed bundle pins it)") from None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SignatureError(f"cannot read the public key {path} ({e.strerror or e}); point --public-key or "
                             f"{PUBLIC_KEY_ENV} at the publisher's .pub file") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise SignatureError(f"{path} is a private key; install only the publisher's public key (the .pub file) "
                                 "on the device") from None
        raise SignatureError(f"{path} is not a PEM public key; use the .pub file that `packager keygen` "
                             "wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key; bundles are signed with Ed25519 keys from "
                             "`packager keygen`")
    return key


def key_fingerprint(public_key: Any) -> str:
    """sha256 (hex) of the raw 32-byte public key: what manifest.json's signature.public_key_sha256 records."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def verify_signature(bundle: Path, public_key_path: Path) -> str:
    """Refuse (SignatureError) unless manifest.sig is the key's signature over the exact bytes of
    manifest.json and every file the manifest lists still has the sha256 it records; the key's
    fingerprint when both hold."""
    from cryptography.exceptions import InvalidSignature

    if not (bundle / SIGNATURE).is_file():  # first: an unsigned bundle needs no key (nor cryptography) to refuse
        raise SignatureError(f"the bundle is not signed (no {SIGNATURE}) and a public key is configured; refusing it: "
                             "ask its publisher for a bundle made with `packager package --sign`")
    key = load_public_key(public_key_path)
    trusted = key_fingerprint(key)
    try:
        manifest_bytes = (bundle / MANIFEST).read_bytes()
    except OSError as e:
        raise SignatureError(f"cannot read {MANIFEST} ({e.strerror or e}); re-download the bundle from its "
                             "publisher") from None
    try:
        key.verify(_read_signature(bundle / SIGNATURE), manifest_bytes)
    except InvalidSignature:
        claimed = _claimed_fingerprint(manifest_bytes)
        if claimed and claimed != trusted:
            raise SignatureError(f"the bundle is signed with another key (sha256 {claimed[:16]}...), not the "
                                 f"configured one ({trusted[:16]}...); refusing it: get the bundle from its publisher, "
                                 "or configure the publisher's public key") from None
        raise SignatureError(f"{MANIFEST} does not match its signature: the bundle was altered after signing; refusing "
                             "it: re-download it from its publisher") from None
    _check_signed_files(bundle, manifest_bytes)
    return trusted


def _read_signature(path: Path) -> bytes:
    # Exactly as `packager package --sign` writes it, base64 and one newline: a bundle with any byte
    # changed is refused, even one that would not change the signature's meaning.
    try:
        text = path.read_text(encoding="ascii")
        signature = base64.b64decode(text.removesuffix("\n"), validate=True) if text.endswith("\n") else b""
    except (UnicodeDecodeError, ValueError):
        signature = b""
    if len(signature) != 64 or text != base64.b64encode(signature).decode("ascii") + "\n":  # RFC 8032: 64 bytes
        raise SignatureError(f"{SIGNATURE} is not a base64 Ed25519 signature; re-download the bundle from its "
                             "publisher")
    return signature


def _claimed_fingerprint(manifest_bytes: bytes) -> str:
    """The signing key's fingerprint as the (unverified) manifest states it, for a clearer refusal."""
    try:
        claimed = json.loads(manifest_bytes)["signature"]["public_key_sha256"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return ""
    return claimed if isinstance(claimed, str) else ""


def _check_signed_files(bundle: Path, manifest_bytes: bytes) -> None:
    """Each file the signed manifest lists is inside the bundle and unchanged, and no other file is
    there (SHA256SUMS, which is not signed, is no list of what may be)."""
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, RecursionError):
        manifest = None
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                                and isinstance(e.get("sha256"), str) for e in entries):
        raise SignatureError(f"the signed {MANIFEST} lists no files to check; rebuild the bundle with `packager "
                             "package --sign`")
    try:
        refuse_unlisted(bundle, {e["path"] for e in entries} | {MANIFEST, SIGNATURE, SUMS}, f"the signed {MANIFEST}")
    except IntegrityError as e:
        raise SignatureError(str(e)) from None
    root = bundle.resolve()
    for entry in entries:
        path = (bundle / entry["path"]).resolve()
        if root not in path.parents:
            raise SignatureError(f"the signed {MANIFEST} names a path outside the bundle ({entry['path']!r}); "
                                 "refusing it")
        if not path.is_file():
            raise SignatureError(f"{entry['path']} is missing; re-download the bundle from its publisher")
        if sha256_file(path) != entry["sha256"]:
            raise SignatureError(f"{entry['path']} does not match the signed {MANIFEST}: it was altered after "
                                 "signing; refusing the bundle: re-download it from its publisher")


# ---------------------------------------------------------------- the files present
#
# Checked before anything of the bundle's is loaded: every file present must be one the manifest
# lists, with its recorded sha256. A file added beside them (a numpy.py, a sitecustomize.py, a .pth,
# a cached .pyc) is never listed, so it is refused whatever SHA256SUMS claims: that file is not signed.

SUMS = "SHA256SUMS"


class IntegrityError(ValueError):
    """A bundle file is missing, altered, or not listed: refuse to run the bundle."""


def unlisted_entries(bundle: Path, expected: set[str]) -> list[str]:
    """What lies in `bundle` besides the regular files `expected` (relative POSIX paths) and the
    folders that hold them: added files, links, devices, empty or stray folders (folders end in /)."""
    wanted = {posixpath.normpath(p) for p in expected}
    folders = {str(parent) for p in wanted for parent in PurePosixPath(p).parents if str(parent) != "."}
    found: list[str] = []
    stack = [""]
    while stack:  # no recursion: a folder nested ten thousand deep is just more entries
        rel = stack.pop()
        with os.scandir(bundle / rel if rel else bundle) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False) and not entry.is_symlink():
                    if path in folders:
                        stack.append(path)
                    else:
                        found.append(path + "/")
                elif entry.is_symlink() or not entry.is_file(follow_symlinks=False) or path not in wanted:
                    found.append(path)
    return sorted(found)


def refuse_unlisted(bundle: Path, expected: set[str], where: str) -> None:
    """IntegrityError naming the first entry of `bundle` that `where` (the list it should be in) lacks."""
    extra = unlisted_entries(bundle, expected)
    if not extra:
        return
    name = extra[0]
    if "__pycache__" in name.split("/"):
        hint = "Python's bytecode cache, which the bundle never writes: delete the __pycache__ folder"
    elif name.endswith("/") and (bundle / name / "pyvenv.cfg").is_file() or name.split("/")[0] in (".venv", "venv"):
        hint = "a virtual environment: make it outside the bundle folder (python3 -m venv ~/venvs/NAME)"
    else:
        hint = "added after packaging: remove it, or re-download the bundle from its publisher"
    more = f", nor are {len(extra) - 1} other entries" if len(extra) > 1 else ""
    raise IntegrityError(f"{name} is in the bundle but not in {where}{more}; {hint}; refusing to run it")


def read_sums(bundle: Path) -> dict[str, str]:
    """SHA256SUMS as path -> sha256."""
    try:
        text = (bundle / SUMS).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntegrityError(f"{SUMS} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{SUMS} cannot be read ({e})") from None
    # Exactly the lines `packager package` writes ("<sha256>  <path>\n", sorted): split on "\n" alone, so
    # that no other line break (a vertical tab, a form feed) makes a changed file read the same.
    lines = text.split("\n")
    listed: dict[str, str] = {}
    for line in lines[:-1]:
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64 or digest.strip("0123456789abcdef") or name in listed:
            raise IntegrityError(f"malformed line in {SUMS}: {line!r}")
        listed[name] = digest
    if lines[-1] != "" or list(listed) != sorted(listed):
        raise IntegrityError(f"{SUMS} is not as packager writes it (lines sorted by path, each ending in a newline)")
    return listed


def manifest_files(manifest: dict[str, Any], what: str = MANIFEST) -> dict[str, str]:
    """The files a manifest lists, path -> sha256 (IntegrityError when `files` is not such a list)."""
    entries = manifest.get("files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                                and isinstance(e.get("sha256"), str) for e in entries):
        raise IntegrityError(f"{what} lists no files to check; rebuild the bundle")
    return {e["path"]: e["sha256"] for e in entries}


def check_files(bundle: Path, manifest: dict[str, Any]) -> int:
    """An unsigned bundle's integrity: every file SHA256SUMS lists is present, inside the bundle and
    unchanged; SHA256SUMS and the manifest list the same files with the same sha256 (a bundle of
    several: each model's manifest too); nothing else is in the folder. The number of files checked."""
    listed = read_sums(bundle)
    root = bundle.resolve()
    for name, digest in sorted(listed.items()):
        path = (bundle / name).resolve()
        if root not in path.parents:
            raise IntegrityError(f"{SUMS} names a path outside the bundle: {name}")
        if not path.is_file():
            raise IntegrityError(f"missing file: {name}")
        if sha256_file(path) != digest:
            raise IntegrityError(f"checksum mismatch: {name} was modified after packaging")
    recorded = manifest_files(manifest)
    for path, digest in recorded.items():
        if listed.get(path) != digest:
            raise IntegrityError(f"manifest and {SUMS} disagree about {path}")
    for name in sorted(set(listed) - set(recorded) - {MANIFEST, SIGNATURE}):
        raise IntegrityError(f"{name} is in {SUMS} but not in {MANIFEST}; refusing to run it (rebuild the bundle)")
    for name, folder in (members(bundle) or {}).items():
        # each member's manifest names its files from its own folder (blobs by ../../blobs/<sha256>/...)
        for entry_path, digest in manifest_files(read_manifest(folder), f"{name}'s {MANIFEST}").items():
            path = posixpath.normpath(posixpath.join(folder.relative_to(bundle).as_posix(), entry_path))
            if listed.get(path) != digest:
                raise IntegrityError(f"{name}'s manifest and {SUMS} disagree about {path}")
    refuse_unlisted(bundle, set(listed) | {SUMS}, SUMS)
    return len(listed)


def check_signature(bundle: Path, public_key_path: Path | None) -> dict[str, Any]:
    """What the runner and the smoke test act on: verified with the configured key (or
    SignatureError), or, with no key configured, unchecked, with a note when the bundle is signed."""
    if public_key_path is not None:
        return {"signed": True, "checked": True, "public_key_sha256": verify_signature(bundle, public_key_path)}
    signed = (bundle / SIGNATURE).is_file()
    note = (f"this bundle is signed, but its signature was not checked: install the publisher's public key and "
            f"set {PUBLIC_KEY_ENV} or pass --public-key") if signed else ""
    return {"signed": signed, "checked": False, "note": note}


# ---------------------------------------------------------------- session

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

        self.bundle = bundle
        self.runtime = runtime
        self.io = runtime["io"]
        self.providers, self.missing_providers = choose_providers(
            list(runtime["providers"]), ort.get_available_providers())
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "packager-bundle"

        # A bundle of several models stores a component they share once (blobs/<sha256>/): the models loaded
        # together (`sessions`, by file, session options and providers) share its session too, as an app would.
        shared = {} if sessions is None else sessions

        def session(file: str) -> Any:
            key = json.dumps([str((bundle / file).resolve()), runtime["session"], self.providers,
                              runtime.get("provider_options", {})], sort_keys=True)
            if key not in shared:
                shared[key] = ort.InferenceSession(
                    str(bundle / file),
                    sess_options=session_options(runtime["session"], log_level),
                    providers=self.providers,
                    provider_options=provider_options(self.providers, runtime.get("provider_options", {}), cache),
                )
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
        self.encoder = self.sessions.get("encoder")
        self.tokenizer = load_tokenizer(bundle, self.io) if self.io["kind"] in ("text", "decoder", "seq2seq") else None
        self.decoder = Decoder(self.session, self.io) if self.io["kind"] in ("decoder", "seq2seq") else None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))

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

    def __init__(self, session: Any, io: dict[str, Any]) -> None:
        self.session = session
        self.io = io
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
        self.eos = set(io.get("eos_token_ids", []))
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
            positions = (self.encoder_length if length else 0) if name in self.cross else length
            return (*self.kv_shape[:2], positions, self.kv_shape[3])

        return {n: np.full(shape(n), 0, dtype=self.kv_dtype) for n in self.past}

    def feeds(self, ids: list[int], past: dict[str, np.ndarray], past_length: int) -> dict[str, np.ndarray]:
        n = len(ids)
        columns = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past_length + n), dtype=np.int64),
            "position_ids": np.arange(past_length, past_length + n, dtype=np.int64)[None, :],
            "use_cache_branch": np.asarray([past_length > 0]),
        }
        return {**{k: v for k, v in columns.items() if k in self.inputs}, **self.context_feeds, **past}

    def step(self, ids: list[int], past: dict[str, np.ndarray],
             past_length: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [len(ids), vocab] for the new tokens, and the cache that now holds them."""
        outputs = self.session.run(["logits", *self.presents], self.feeds(ids, past, past_length))
        cache = dict(zip(self.past, outputs[1:]))
        if past_length:
            # The cross-attention's cache is the first step's, for good: the merged decoder's cached branch
            # returns placeholders for it (optimum's decoder_with_past has no such outputs).
            cache |= {n: past[n] for n in self.cross}
        return outputs[0][0], cache

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy tokens after the prompt (stopping after an end-of-sequence token), and the logits
        of the prompt's last position (the first prediction)."""
        logits, past = self.step(prompt_ids, self.empty_past(), 0)
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

    def score(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids` in one pass (no cache): the teacher-forced predictions."""
        return self.step(ids, self.empty_past(), 0)[0]


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
    return Runner(bundle, read_manifest(bundle)["runtime"], sessions=sessions)


def members(bundle: Path = HERE) -> dict[str, Path] | None:
    """A bundle of several models: each member's folder (its manifest, samples and tokenizer; the
    component files it loads sit in blobs/, by hash) by name. None for a bundle of one model."""
    manifest = read_manifest(bundle)
    if manifest.get("kind") != SUITE:
        return None
    return {m["name"]: bundle / m["path"] for m in manifest["models"]}


def member(bundle: Path, name: str | None) -> Path:
    """The folder of the model to run: `bundle` itself, or, in a bundle of several, the member `name`."""
    found = members(bundle)
    if found is None:
        if name is not None:
            raise ValueError(f"this bundle holds one model; drop --model {name}")
        return bundle
    if name not in found:
        raise ValueError(f"this bundle holds several models ({', '.join(found)}); pick one with --model NAME"
                         if name is None else f"no model {name!r} in this bundle; it holds {', '.join(found)}")
    return found[name]


# ---------------------------------------------------------------- encoder-decoders: raw input
#
# A user on the device has audio or an image, not the encoder's tensors: the runner reads WAV and PNG
# with the standard library and numpy, and computes what the model's pre-processor would (Whisper's
# log-mel spectrogram, a ViT's resized and normalised pixels), from the figures in runtime.io.preprocess.

SAMPLE_MEDIA = "samples/media.json"   # encoder-decoders: the raw sample inputs (files in samples/, or texts)


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


def read_wav(path: Path, rate: int) -> np.ndarray:
    """A PCM WAV file (8, 16 or 32 bits, any channels: averaged) as float32 samples in [-1, 1] at `rate`
    (another rate is resampled linearly: good enough for speech recognition, not for music)."""
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            width, channels, source_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path} is not a PCM WAV file ({e}); convert it, e.g. ffmpeg -i IN -ar {rate} -ac 1 "
                         "OUT.wav") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    if width not in kinds:
        raise ValueError(f"{path} has {width * 8}-bit samples; give 8, 16 or 32-bit PCM (ffmpeg -i IN -ar {rate} "
                         "-ac 1 -sample_fmt s16 OUT.wav)")
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(data, dtype=dtype).astype(np.float64) - offset) / scale
    samples = samples.reshape(-1, channels).mean(axis=1)
    if source_rate != rate and len(samples):
        times = np.arange(int(len(samples) * rate / source_rate)) / rate
        samples = np.interp(times, np.arange(len(samples)) / source_rate, samples)
    return samples.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Mono 16-bit PCM: the samples' format, written with the standard library (the same bytes every time)."""
    import wave

    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def mel_filters(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[1 + n_fft // 2, n_mels] triangular filters on the Slaney mel scale with Slaney's area
    normalisation, 0 Hz to rate / 2: what Whisper's feature extractor uses (librosa's defaults)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        hz = np.asarray(hz, dtype=np.float64)
        mel = 3.0 * hz / 200.0
        log = hz >= 1000.0
        return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4), mel)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        hz = 200.0 * mel / 3.0
        return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)

    freqs = np.linspace(0, rate / 2, 1 + n_fft // 2)
    points = to_hz(np.linspace(to_mel(0.0), to_mel(rate / 2), n_mels + 2))
    widths = np.diff(points)
    slopes = points[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (points[2:n_mels + 2] - points[:n_mels]))[None, :]


def audio_features(samples: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """Whisper's log-mel spectrogram [mels, frames] of mono samples at the model's rate: padded (or cut)
    to the model's window, a periodic Hann STFT centred with reflection, power through the mel filters,
    log10 floored at 1e-10, clamped to 8 below its maximum and scaled to (x + 4) / 4."""
    n, n_fft, hop = int(pre["n_samples"]), int(pre["n_fft"]), int(pre["hop_length"])
    wave = np.full(n, float(pre.get("padding_value", 0.0)), dtype=np.float64)
    clip = np.asarray(samples, dtype=np.float64).ravel()[:n]
    wave[:len(clip)] = clip
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(padded[index] * window, axis=-1)) ** 2
    mel = power @ mel_filters(int(pre["sampling_rate"]), n_fft, int(pre["feature_size"]))
    log = np.log10(np.maximum(mel, 1e-10)).T[:, :-1]
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def read_image(path: Path) -> np.ndarray:
    """[height, width, channels] uint8 pixels of an 8-bit PNG (any colour type but palette, not
    interlaced), read with zlib; other formats (JPEG ...) through Pillow where it is installed."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        try:
            from PIL import Image
        except ImportError:
            raise ValueError(f"{path} is not a PNG file, and Pillow (which reads other formats) is not installed; "
                             "convert it to PNG or pip install pillow") from None
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    import struct
    import zlib

    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path} is a damaged PNG file (no header)")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path} is a PNG this runner does not decode (8-bit grey, RGB or RGBA, not interlaced); "
                         "re-save it as 8-bit RGB, or pip install pillow")
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(height, 1 + width * channels)
    rows = np.zeros((height, width * channels), dtype=np.int32)
    for y in range(height):  # undo each row's filter (PNG spec, section 9)
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        above = rows[y - 1] if y else np.zeros_like(line)
        if kind in (0, 2):
            rows[y] = (line + (above if kind == 2 else 0)) & 255
            continue
        out = np.zeros_like(line)
        for x in range(len(line)):
            left = out[x - channels] if x >= channels else 0
            upper_left = above[x - channels] if x >= channels else 0
            if kind == 1:
                guess = left
            elif kind == 3:
                guess = (left + above[x]) // 2
            else:
                p = left + above[x] - upper_left
                pa, pb, pc = abs(p - left), abs(p - above[x]), abs(p - upper_left)
                guess = left if pa <= pb and pa <= pc else (above[x] if pb <= pc else upper_left)
            out[x] = (line[x] + guess) & 255
        rows[y] = out
    pixels = rows.astype(np.uint8).reshape(height, width, channels)
    return pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """[height, width, 3] uint8 as an 8-bit RGB PNG (no filtering): the samples' format, the same bytes every time."""
    import struct
    import zlib

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def _resize_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis, pixel centres aligned (half-pixel), as PIL's bilinear when enlarging."""
    n = image.shape[axis]
    if n == size:
        return image
    where = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(where).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = (where - low).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    return np.take(image, low, axis=axis) * (1 - weight) + np.take(image, high, axis=axis) * weight


def image_pixels(pixels: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """[channels, height, width] float32 for a ViT-style encoder: resized (bilinear) to the model's size,
    rescaled (1/255) and normalised with the model's mean and standard deviation."""
    image = np.asarray(pixels, dtype=np.float64)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = _resize_axis(_resize_axis(image[..., :3], int(pre["height"]), 0), int(pre["width"]), 1)
    image = image * float(pre["rescale_factor"])
    image = (image - np.asarray(pre["mean"])) / np.asarray(pre["std"])
    return image.transpose(2, 0, 1).astype(np.float32)


def sample_media(bundle: Path = HERE) -> list[Any]:
    """The raw sample inputs of an encoder-decoder bundle: file paths (audio, images) or texts."""
    entries = json.loads((bundle / SAMPLE_MEDIA).read_text(encoding="utf-8"))
    return [bundle / e["file"] if "file" in e else e["text"] for e in entries]


# ---------------------------------------------------------------- samples and comparison

def load_samples(bundle: Path = HERE, name: str = SAMPLE_INPUTS) -> list[dict[str, np.ndarray]]:
    """Per-sample feeds (or outputs) stored as '<index>/<tensor name>' keys of an .npz."""
    samples: dict[int, dict[str, np.ndarray]] = {}
    with np.load(bundle / name, allow_pickle=False) as npz:
        for key in npz.files:
            index, tensor = key.split("/", 1)
            samples.setdefault(int(index), {})[tensor] = npz[key]
    return [samples[i] for i in sorted(samples)]


# Every member of a samples .npz carries this date (the zip format's earliest), so the same arrays
# give the same bytes whenever they are written: bundles are reproducible.
NPZ_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def save_samples(path: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """An .npz as np.savez writes it (stored, zip64 members '<index>/<tensor name>.npy'), with a fixed
    date, mode and order: the same samples give the same bytes, run after run."""
    import zipfile

    arrays = {f"{i}/{name}": value for i, sample in enumerate(samples) for name, value in sample.items()}
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=NPZ_DATE_TIME)
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def compare_decoder(expected: list[dict[str, np.ndarray]], decoder: Decoder | list[Decoder]) -> dict[str, Any]:
    """How closely `decoder` follows the reference's greedy generations (`expected`: per prompt,
    its `prompt_ids`, the reference's `tokens` and its first-prediction `logits`). Encoder-decoders
    give one decoder per sample, bound to that sample's encoder output (Decoder.bind): the figures
    are then the whole model's, encoder included.

    Token agreement is teacher-forced: the decoder reads the prompt and the reference's tokens
    and must predict each next one. Free-running generation would stop counting after the first
    different token (every later one follows from it), measuring luck more than fidelity; how
    often the free-running generations match in full is reported too.
    """
    agreements, cosines, identical = [], [], 0
    decoders = decoder if isinstance(decoder, list) else [decoder] * len(expected)
    for sample, decoder in zip(expected, decoders):
        prompt = [int(t) for t in sample["prompt_ids"]]
        reference = [int(t) for t in sample["tokens"]]
        logits = decoder.score(prompt + reference)
        predicted = np.argmax(logits[len(prompt) - 1:len(prompt) - 1 + len(reference)], axis=-1)
        agreements.append(float(np.mean(predicted == np.asarray(reference))) if reference else 1.0)
        cosines.append(_cosine(logits[len(prompt) - 1].astype(np.float64), sample["logits"].astype(np.float64)))
        generated, _ = decoder.generate(prompt, len(reference))
        identical += generated == reference
    return {
        "token_agreement": float(np.mean(agreements)),
        "min_token_agreement": min(agreements),
        "min_logits_cosine": min(cosines),
        "mean_logits_cosine": float(np.mean(cosines)),
        "identical_generations": identical,
        "prompts": len(expected),
        "per_prompt": [{"token_agreement": a, "logits_cosine": c} for a, c in zip(agreements, cosines)],
    }


def reference_generations(decoder: Decoder | list[Decoder], prompts: list[list[int]],
                          max_new_tokens: int) -> list[dict[str, np.ndarray]]:
    """What compare_decoder measures against: the reference model's greedy generations."""
    result = []
    decoders = decoder if isinstance(decoder, list) else [decoder] * len(prompts)
    for ids, decoder in zip(prompts, decoders):
        tokens, first = decoder.generate(ids, max_new_tokens)
        result.append({"prompt_ids": np.asarray(ids, dtype=np.int64), "tokens": np.asarray(tokens, dtype=np.int64),
                       "logits": first.astype(np.float32)})
    return result


def compare(expected: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]],
            outputs: list[str]) -> dict[str, Any]:
    """Cosine similarity and max-abs difference of `actual` against `expected`, per output.

    Each sample's output is compared on its own when it has at least 8 values (an embedding,
    a hidden state); smaller outputs (a probability, a logit pair) are concatenated across the
    samples first, since the cosine of two 1-element vectors says only whether the signs agree.
    Non-float outputs count the fraction of equal elements.
    """
    per_output = {}
    for name in outputs:
        exp = [np.asarray(s[name]).ravel() for s in expected]
        act = [np.asarray(s[name]).ravel() for s in actual]
        if any(e.shape != a.shape for e, a in zip(exp, act)):
            per_output[name] = {"cosine": 0.0, "max_abs_diff": float("inf"), "note": "shape differs"}
            continue
        if not np.issubdtype(exp[0].dtype, np.floating):
            agree = float(np.mean(np.concatenate([e == a for e, a in zip(exp, act)])))
            per_output[name] = {"cosine": agree, "max_abs_diff": 0.0 if agree == 1.0 else float("inf")}
            continue
        groups = list(zip(exp, act)) if exp[0].size >= 8 else [(np.concatenate(exp), np.concatenate(act))]
        cosines = [_cosine(e.astype(np.float64), a.astype(np.float64)) for e, a in groups]
        diff = max(float(np.max(np.abs(e.astype(np.float64) - a))) if e.size else 0.0 for e, a in zip(exp, act))
        per_output[name] = {"cosine": min(cosines), "max_abs_diff": diff}
    return {
        "min_cosine": min(m["cosine"] for m in per_output.values()),
        "max_abs_diff": max(m["max_abs_diff"] for m in per_output.values()),
        "outputs": per_output,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    if not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# ---------------------------------------------------------------- eval cases (packager package --eval)
#
# The user's own cases, one JSON object a line. Decoders: {"prompt", "expected", "match"?,
# "max_new_tokens"?}: the greedy continuation of the prompt (special tokens dropped, surrounding
# whitespace stripped) must equal ("exact", the default), start with ("prefix"), contain
# ("contains") or match (`re.search`, "regex") `expected`. Encoders: {"anchor", "positive",
# "negative"? | "negatives"?}: the positive must be more similar (cosine of the embeddings) to the
# anchor than every negative, or, with none given, than every other case's positive. The score is
# the share of cases that pass.

EVAL_MATCHES = ("exact", "prefix", "contains", "regex")
EVAL_DEFAULT_TOKENS = 16


def read_eval(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_passes(case: dict[str, Any], text: str) -> bool:
    got, expected = text.strip(), str(case["expected"])
    match = case.get("match", "exact")
    if match == "exact":
        return got == expected.strip()
    if match == "prefix":
        return got.startswith(expected.strip())
    if match == "contains":
        return expected in got
    return re.search(expected, got) is not None


def _embedder(session: Any, tokenizer: Any) -> Any:
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    output = "sentence_embedding" if "sentence_embedding" in outputs else outputs[0]
    cache: dict[str, np.ndarray] = {}

    def embed(text: str) -> np.ndarray:
        if text not in cache:
            feeds = encode(tokenizer, text, names)
            value = np.asarray(session.run([output], feeds)[0], dtype=np.float64)
            if value.ndim == 3:  # token states: mean over the real tokens
                mask = feeds.get("attention_mask", np.ones(value.shape[:2], dtype=np.int64)).astype(np.float64)
                value = (value * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
            cache[text] = value.ravel()
        return cache[text]

    return embed


def evaluate(session: Any, io: dict[str, Any], tokenizer: Any, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the eval cases on a model (an onnxruntime session of the packaged or the reference model):
    the score (the share of cases that pass) and each case's output and verdict."""
    results: list[dict[str, Any]] = []
    if io["kind"] == "decoder":
        decoder = Decoder(session, io)
        for case in cases:
            tokens, _ = decoder.generate(list(tokenizer.encode(case["prompt"]).ids),
                                         int(case.get("max_new_tokens", EVAL_DEFAULT_TOKENS)))
            text = tokenizer.decode(tokens)
            results.append({"output": text, "passed": eval_passes(case, text)})
    else:
        embed = _embedder(session, tokenizer)
        for i, case in enumerate(cases):
            negatives = case.get("negatives") or ([case["negative"]] if "negative" in case else
                                                  [c["positive"] for j, c in enumerate(cases)
                                                   if j != i and c["positive"] != case["positive"]])
            anchor = embed(case["anchor"])
            positive = _cosine(anchor, embed(case["positive"]))
            best = max((_cosine(anchor, embed(n)) for n in negatives), default=-1.0)
            results.append({"positive": round(positive, 6), "best_negative": round(best, 6),
                            "passed": bool(positive > best)})
    passed = sum(r["passed"] for r in results)
    return {"score": passed / len(cases) if cases else 1.0, "passed": passed, "cases": len(cases), "results": results}


# ---------------------------------------------------------------- memory

def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """Peak resident memory of this process since the last reset_peak()."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # ru_maxrss: kilobytes on Linux, bytes on macOS; never reset

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def rss_bytes() -> int:
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else peak_bytes()


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
        return _measured(first, baseline, load_peak, peak_bytes(), resettable, **results[""])
    return _measured(first, baseline, load_peak, peak_bytes(), resettable, resident="all models together, loaded up "
                     "front; a component they share is loaded once",
                     members={name: {"load_bytes": resident[name], **results[name]} for name in runners})


def exercise(bundle: Path, runner: Runner, context: int | None) -> dict[str, Any]:
    """Run the bundle's samples through a loaded model, as measure() does: its context, and an
    encoder-decoder's per-component figures."""
    context = context or runner.runtime.get("context")
    if runner.io["kind"] == "seq2seq":
        return _exercise_seq2seq(bundle, runner, context)
    if runner.io["kind"] == "text":
        texts = json.loads((bundle / SAMPLE_TEXTS).read_text(encoding="utf-8"))
        feeds = [runner.encode(t) for t in texts]
    else:
        feeds = load_samples(bundle)
    for f in feeds:
        runner.run(f)
    if runner.decoder is not None and context:
        runner.decoder.step([0], runner.decoder.empty_past(int(context) - 1), int(context) - 1)
    return {"context": context}


def _measured(runner: Runner, baseline: int, load_peak: int, run_peak: int, resettable: bool,
              **extra: Any) -> dict[str, Any]:
    """measure()'s result: the phases' peaks, how they were taken, where."""
    return {
        "baseline_bytes": baseline,
        "load_peak_bytes": load_peak,
        "run_peak_bytes": run_peak,
        "peak_bytes": max(load_peak, run_peak),
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


# ---------------------------------------------------------------- CLI

def read_inputs(path: Path, names: list[str]) -> list[dict[str, np.ndarray]]:
    """One set of inputs (an .npz with one array per model input), or several in the samples'
    '<index>/<name>' layout (samples/inputs.npz)."""
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.files)
    if keys and all("/" in k for k in keys):
        feeds = load_samples(path.parent, path.name)
    else:
        with np.load(path, allow_pickle=False) as npz:
            feeds = [{k: npz[k] for k in keys}]
    for feed in feeds:
        if set(feed) != set(names):
            raise ValueError(f"{path} must hold one array per model input ({', '.join(names)}); "
                             f"it holds {', '.join(sorted(feed)) or 'nothing'}")
    return feeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this bundle's model.")
    parser.add_argument("texts", nargs="*", help="texts to run (text models); encoder-decoders: .wav or .png files, "
                        "or texts, to generate from")
    parser.add_argument("--prompt", help="decoder LLMs: the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="decoder LLMs and encoder-decoders: tokens to "
                        "generate (default 32)")
    parser.add_argument("--json", action="store_true", help="with --prompt (or an encoder-decoder's inputs): print the "
                        "text and token ids as JSON")
    parser.add_argument("--inputs", type=Path, help=".npz of input tensors, one per model input")
    parser.add_argument("--output", type=Path, help="write the outputs to this .npz instead of printing them")
    parser.add_argument("--measure", action="store_true", help="print peak memory of load and run as JSON")
    parser.add_argument("--context", type=int, help="with --measure, decoders: tokens of KV cache to hold "
                        "(default: the bundle's)")
    parser.add_argument("--public-key", type=Path, help=f"refuse the bundle unless this Ed25519 public key signed it "
                        f"(default: ${PUBLIC_KEY_ENV})")
    parser.add_argument("--model", help="a bundle of several models: the one to run (`manifest.json` lists them)")
    parser.add_argument("--bundle", type=Path, default=HERE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not (args.measure or args.inputs or args.texts or args.prompt is not None):
        parser.error("give texts to run, --prompt TEXT (decoders), or --inputs FILE.npz")
    if args.max_new_tokens < 1 or (args.context is not None and args.context < 1):
        parser.error("--max-new-tokens and --context take a positive number of tokens")
    try:
        if args.measure:
            # The build host's measurement of a bundle being assembled (packager's fit stage runs
            # it before the bundle is signed): no signature to check yet.
            print(json.dumps(measure(member(args.bundle, args.model) if args.model else args.bundle, args.context)))
            return 0
        signature = check_signature(args.bundle, configured_public_key(args.public_key))
        if signature.get("note"):
            print(f"note: {signature['note']}", file=sys.stderr)
        runner = load(member(args.bundle, args.model))
        for p in runner.missing_providers:
            print(f"note: {p} is not available here; running on {', '.join(runner.providers)}", file=sys.stderr)
        if runner.io["kind"] == "seq2seq":
            if not args.texts:
                raise ValueError(f"give the {runner.io['modality']} to read: "
                                 + {"audio": "a .wav file", "image": "a .png file"}.get(
                                     runner.io["modality"], "a text"))
            answers = []
            for raw in args.texts:
                text, tokens = runner.generate_from(raw, args.max_new_tokens)
                answers.append({"input": raw, "text": text, "tokens": tokens})
            print(json.dumps(answers) if args.json else "\n".join(a["text"] for a in answers))
            return 0
        if args.prompt is not None:
            text, tokens = runner.generate_text(args.prompt, args.max_new_tokens)
            print(json.dumps({"prompt": args.prompt, "text": text, "tokens": tokens}) if args.json
                  else args.prompt + text)
            return 0
        results = [runner.run(f) for f in read_inputs(args.inputs, runner.input_names)] if args.inputs \
            else runner.run_texts(args.texts)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        save_samples(args.output, results)
        return 0
    shown = runner.io["primary_outputs"]
    print(json.dumps([{k: r[k].tolist() for k in shown} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
