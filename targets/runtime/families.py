"""The model families as the device side sees them, by the manifest's `runtime.io.kind`: what each one loads
and how its samples are run. The build host's families (packager/families/) are the same families, with
what only the build needs; this table is the device's own, since the bundle never imports packager. The
runner, the smoke test, --measure and the eval cases read a model's record here and never test its kind.
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str          # the io kind: "text", "tensor", "decoder", "seq2seq"
    tokenizer: bool    # loads the bundle's tokenizer (tokenizer.json)
    decodes: bool      # a decoder loop over the main session, with the KV cache (session.Decoder)
    prompted: bool     # generates from a text prompt (decoder LLMs): --prompt, prompt/expected eval cases
    media: bool        # raw input (a WAV, a PNG or a text) through its encoder (encoder-decoders): samples/media.json
    sentences: bool    # its samples are the sentences of samples/texts.json, which the tokenizer encodes


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("text", tokenizer=True, decodes=False, prompted=False, media=False, sentences=True),
    Family("tensor", tokenizer=False, decodes=False, prompted=False, media=False, sentences=False),
    Family("decoder", tokenizer=True, decodes=True, prompted=True, media=False, sentences=False),
    Family("seq2seq", tokenizer=True, decodes=True, prompted=False, media=True, sentences=False),
)}


def family(io: dict[str, Any]) -> Family:
    """The family of a model with this io (the manifest's runtime.io)."""
    kind = io.get("kind")
    if kind not in FAMILIES:
        raise ValueError(f"the manifest names a model kind {kind!r} this runner does not know (it knows "
                         f"{', '.join(FAMILIES)}); package the model again with one packager release")
    return FAMILIES[kind]
