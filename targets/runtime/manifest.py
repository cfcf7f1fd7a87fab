"""The bundle's layout: where its files are, its manifest, and the members of a bundle of several models."""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# The bundle folder: this package sits in it, as runtime/.
HERE = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
SAMPLE_INPUTS = "samples/inputs.npz"
SAMPLE_EXPECTED = "samples/expected.npz"
SAMPLE_TEXTS = "samples/texts.json"
SAMPLE_EVAL = "samples/eval.jsonl"   # --eval: the first of the user's cases, rerun by the smoke test
SIGNATURE = "manifest.sig"           # base64 Ed25519 signature over the exact bytes of manifest.json
PUBLIC_KEY_ENV = "PACKAGER_PUBLIC_KEY"
SAMPLE_MEDIA = "samples/media.json"   # encoder-decoders: the raw sample inputs (files in samples/, or texts)
SUITE = "suite"                      # manifest kind of a bundle of several models (models/<name>/, blobs/)


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


SUMS = "SHA256SUMS"


def configured_public_key(option: Path | None = None) -> Path | None:
    """The public key this device trusts: --public-key, else $PACKAGER_PUBLIC_KEY, else none."""
    if option is not None:
        return option
    env = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return Path(env) if env else None
