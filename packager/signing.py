"""Signed bundles: Ed25519 key pairs (`packager keygen`) and the signature over a bundle's manifest.

SHA256SUMS proves a bundle's integrity, not its origin: whoever can rewrite the model can rewrite
the checksums. `packager package --sign KEY` signs the exact bytes of manifest.json, which records
every other file's sha256, so one signature covers the whole bundle. The signature is a new bundle
file, manifest.sig (base64 of the 64-byte Ed25519 signature), written before SHA256SUMS so that
SHA256SUMS lists it too.

Verification is targets/run.py's `verify_signature`, the code that ships in every bundle: the host
(`packager smoke --public-key`) runs its own installed copy of it, so the host and the device
cannot disagree about what a valid signature is.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from packager.device_code import runner
from packager.errors import ExitCode, PackagerError

ALGORITHM = "ed25519"


# ---------------------------------------------------------------- keygen


def default_public_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def keygen(private: Path, public: Path | None = None) -> tuple[Path, Path, str]:
    """A new Ed25519 key pair: the private key as PKCS8 PEM (mode 0600), the public key as
    SubjectPublicKeyInfo PEM. Never overwrites a file. Returns both paths and the key's fingerprint."""
    public = public or default_public_path(private)
    if private.absolute() == public.absolute():
        raise PackagerError(f"--public {public} is the private key's own path; give the public key another path.",
                            ExitCode.USAGE)
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise _exists(path)
    key = Ed25519PrivateKey.generate()
    _write_new(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600)
    try:
        _write_new(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    except PackagerError:
        private.unlink(missing_ok=True)  # half a key pair is of no use: leave nothing behind
        raise
    return private, public, runner().key_fingerprint(key.public_key())


def _exists(path: Path) -> PackagerError:
    # OUTPUT, not USAGE: the command line is well formed; its destination is taken, and overwriting a
    # key would orphan every bundle signed with it.
    return PackagerError(f"{path} already exists; keygen never overwrites a key: pick another path or move the old "
                         "key away first.", ExitCode.OUTPUT)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (O_EXCL: no window where the key is readable by
    others, and no race with a file appearing after the existence check)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as e:
        raise PackagerError(f"{path}: cannot write the key there ({e.strerror or e}); pick another path.",
                            ExitCode.OUTPUT) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise PackagerError(f"{path}: cannot write the key there ({e.strerror or e}); free some space or pick "
                            "another path.", ExitCode.OUTPUT) from None


# ---------------------------------------------------------------- signing


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file `path`; BAD_INPUT (one sentence) when it is not one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackagerError(f"{path}: no such key file; make a key pair with `packager keygen {path}` or fix the "
                            "--sign path.", ExitCode.BAD_INPUT) from None
    except OSError as e:
        raise PackagerError(f"{path}: cannot read the signing key ({e.strerror or e}); check the path and its "
                            "permissions.", ExitCode.BAD_INPUT) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise PackagerError(f"{path}: the signing key is protected by a passphrase, which packager cannot prompt for; "
                            "use an unencrypted key from `packager keygen` and protect the file instead.",
                            ExitCode.BAD_INPUT) from None
    except (ValueError, UnsupportedAlgorithm):
        if b"PUBLIC KEY" in data:
            raise PackagerError(f"{path} is a public key; --sign takes the private key (the file without .pub).",
                                ExitCode.BAD_INPUT) from None
        raise PackagerError(f"{path} is not a PEM private key; pass the private key that `packager keygen` wrote.",
                            ExitCode.BAD_INPUT) from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.lstrip("_").removesuffix("PrivateKey")
        raise PackagerError(f"{path} is not an Ed25519 key ({kind}); packager signs with Ed25519 keys only: make one "
                            "with `packager keygen`.", ExitCode.BAD_INPUT)
    return key


def manifest_entry(private_key_path: Path) -> dict[str, Any]:
    """manifest.json's `signature`: the algorithm and the signing key's fingerprint. The fingerprint
    is known before signing, so the manifest can carry it and still be what is signed."""
    public = load_private_key(private_key_path).public_key()
    return {"algorithm": ALGORITHM, "public_key_sha256": runner().key_fingerprint(public)}


def sign_manifest(private_key_path: Path, bundle: Path) -> Path:
    """Write the bundle's manifest.sig: the key's signature over the exact bytes of manifest.json."""
    key = load_private_key(private_key_path)
    signature = base64.b64encode(key.sign((bundle / runner().MANIFEST).read_bytes())).decode("ascii")
    path: Path = bundle / runner().SIGNATURE
    path.write_text(signature + "\n", encoding="ascii")
    return path


def write_public_key(private_key_path: Path, dest: Path) -> Path:
    """The signing key's public half as a PEM file: what `package --sign --smoke` checks the new bundle with."""
    public = load_private_key(private_key_path).public_key()
    dest.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return dest


# ---------------------------------------------------------------- verifying (targets/run.py's code)


def check_public_key(path: Path) -> None:
    """BAD_INPUT (one sentence) unless `path` holds an Ed25519 public key in PEM."""
    rt = runner()
    try:
        rt.load_public_key(path)
    except rt.SignatureError as e:
        raise PackagerError(f"{e}.", ExitCode.BAD_INPUT) from None


def signature_failure(bundle: Path, public_key: Path) -> str:
    """Why the unpacked `bundle` fails its signature check under `public_key`, or "" when it passes.
    Uses packager's own copy of run.py, never the bundle's: nothing in the bundle runs before it passes."""
    rt = runner()
    try:
        rt.verify_signature(bundle, public_key)
    except rt.SignatureError as e:
        return str(e)
    return ""
