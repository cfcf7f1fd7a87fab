"""Names that become file and folder names: a bundle's (<model>-<target>), a profile's, a model's in a
bundle of several (models/<name>/), an adapter's. The one rule for all of them lives here.

A name is a *plain file name*: 1 to MAX_NAME ASCII letters, digits, '.', '-', '_' and '+', the first a
letter, digit or '_'. So it is one path component (no '/', no '\\', never '.' or '..'), it cannot pass for
an option (a leading '-' or '+') or hide itself (a leading '.'), and it holds no control character, no
right-to-left mark and no look-alike letter. '+' joins the names of a bundle of several models
("whisper+minilm"). A bundle's file name, <model>-<target>.tar.gz, is then at most 208 bytes, and 225 with
the publishing step's temporary prefix and suffix: below the 255 file systems allow.

Two ways in, one rule:
  check_name   a name the user typed (a profile's `name`, --name): refused unless it is plain;
  derive_name  a name packager makes from a user's folder or file name ("my model (v2)"): refusing
               a legitimate folder would be hostile, so it is made plain instead ("my-model-v2").
"""

from __future__ import annotations

import re
import unicodedata

from packager.errors import ExitCode, PackagerError

MAX_NAME = 100
_PLAIN = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._+-]{{0,{MAX_NAME - 1}}}")
RULE = (f"ASCII letters, digits, '.', '-', '_', '+'; starting with a letter, digit or '_'; "
        f"at most {MAX_NAME} characters")
_SHOWN = 40  # characters of a refused name the message quotes: a 100,000-character one stays one line


def is_plain(name: object) -> bool:
    """Whether `name` may become a file or folder name as it is."""
    # fullmatch, not match with $: '$' also matches before a trailing newline.
    return isinstance(name, str) and _PLAIN.fullmatch(name) is not None


def check_name(name: object, what: str, code: ExitCode, fix: str = "rename it") -> str:
    """`name`, or a PackagerError (one sentence: `what`, the name, the rule, `fix`) when it is not plain.
    `what` names where it came from: "x.toml: key 'name'", "--name"."""
    if is_plain(name):
        assert isinstance(name, str)
        return name
    raise PackagerError(f"{what} is {shown(name)}, not a plain file name ({RULE}); {fix}.", code)


def shown(name: object) -> str:
    """`name` quoted for a message: escapes for control and invisible characters, cut when long."""
    if not isinstance(name, str):
        return f"({type(name).__name__})"
    if not name:
        return "(empty)"
    # ascii(): a NUL, a newline or a U+202E shows as an escape instead of acting on the terminal. An
    # escape takes up to 10 characters ('\U0001f600'): the cut counts the quoted form, not the name.
    cut = name[:_SHOWN]
    while len(ascii(cut)) > _SHOWN + 2:
        cut = cut[:-1]
    quoted = ascii(cut)
    return quoted if cut == name else f"{quoted}... ({len(name):,} characters)"


_OTHER = r"[^A-Za-z0-9._+-]+"


def derive_name(text: str, fallback: str = "model") -> str:
    """A plain name made from a folder or file name: accents dropped ("modèle" -> "modele"), other
    characters dropped at the ends and each run of them inside made one '-' ("my model (v2)" ->
    "my-model-v2"), what may not lead stripped, cut to MAX_NAME; `fallback` (itself plain) when nothing is
    left. A plain name comes back as it is."""
    # Decomposed, a letter's accents are marks of their own (category Mn), dropped; other non-ASCII
    # characters are "other" like any.
    bare = "".join(c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn")
    inner = re.sub(rf"^{_OTHER}|{_OTHER}$", "", bare)
    name = re.sub(_OTHER, "-", inner).lstrip(".-+")[:MAX_NAME]
    return name if is_plain(name) else fallback


def joined_name(names: list[str], joiner: str = "+") -> str:
    """Plain names joined (the default name of a bundle of several models), kept plain: cut to MAX_NAME."""
    return derive_name(joiner.join(names))
