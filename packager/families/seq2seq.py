"""Encoder-decoders (speech to text, image to text, text to text; the io's `modality` says which): an encoder
and a decoder with its KV cache, loaded together. The samples are raw inputs the device's user would have
(packager/families/media.py); they are judged end to end on what they generate."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from packager.families.base import Family, step

if TYPE_CHECKING:
    from packager.context import Context


class EncoderDecoder(Family):
    """An encoder-decoder exported as two graphs (encoder, decoder-with-past): one family for every modality,
    vision encoder-decoders included (io modality "image"), as the manifest names them all "seq2seq"."""

    name: ClassVar[str] = "seq2seq"
    title: ClassVar[str] = "an encoder-decoder"
    needs_tokenizer: ClassVar[bool] = True
    generates: ClassVar[bool] = True
    has_components: ClassVar[bool] = True
    files: ClassVar[str] = "text"             # shares the text family's tokenizer pin and sentences
    texts_file: ClassVar[str | None] = "samples.txt"
    eval_fix: ClassVar[str] = "no --eval (an encoder-decoder's generations are not judged by eval cases yet)"
    metric: ClassVar[str] = "token agreement"

    def make_samples(self, ctx: Context, rt: ModuleType) -> None:
        step("packager.families.media:media_samples")(ctx, rt, self.texts())

    def verify(self, ctx: Context, rt: ModuleType, reference: Any, packaged: Any) -> None:
        step("packager.families.verification:verify_seq2seq")(ctx, rt, packaged)

    def run_arguments(self, io: dict[str, Any], samples: str) -> str:
        return {"audio": f"{samples}/sweep.wav --max-new-tokens 32     # any 16-bit PCM WAV",
                "image": f"{samples}/gradient.png --max-new-tokens 32  # any 8-bit PNG",
                }.get(io["modality"], '"some text" --max-new-tokens 32')
