"""Signed bundles: the publisher's Ed25519 signature over manifest.json, which records every other file's sha256."""

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from .files import IntegrityError, refuse_unlisted
from .manifest import MANIFEST, PUBLIC_KEY_ENV, SIGNATURE, SUMS, sha256_file

# ---------------------------------------------------------------- signature
#
# SHA256SUMS proves integrity, not origin: whoever can rewrite a model can rewrite its checksums.
# The publisher's Ed25519 signature over manifest.json, which records every other file's sha256,
# ties the whole bundle to the publisher's key. `cryptography` is imported only here, so unsigned
# bundles run without it (a signed bundle's requirements.txt pins it).


class SignatureError(ValueError):
    """The bundle fails its signature check, or the public key cannot be used: refuse to run it."""


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


def check_signature(bundle: Path, public_key_path: Path | None) -> dict[str, Any]:
    """What the runner and the smoke test act on: verified with the configured key (or
    SignatureError), or, with no key configured, unchecked, with a note when the bundle is signed."""
    if public_key_path is not None:
        return {"signed": True, "checked": True, "public_key_sha256": verify_signature(bundle, public_key_path)}
    signed = (bundle / SIGNATURE).is_file()
    note = (f"this bundle is signed, but its signature was not checked: install the publisher's public key and "
            f"set {PUBLIC_KEY_ENV} or pass --public-key") if signed else ""
    return {"signed": signed, "checked": False, "note": note}
