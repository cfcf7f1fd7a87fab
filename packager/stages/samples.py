"""samples: the inputs that verify, fit and the device's smoke test all run.

Text models get the family's sentences through the tokenizer that ships in the bundle
(run.py's own code); decoders get the family's prompts, as the first generation step's inputs
(prompt ids, empty KV cache); tensor models get inputs made from their signature (and
--shape/--value).
"""

from __future__ import annotations

import json

from packager.context import Context
from packager.runtime_files import family_texts, runner
from packager.sample_inputs import make_inputs


def run(ctx: Context) -> None:
    rt = runner()
    if ctx.io["kind"] == "text":
        tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io)
        names = [i["name"] for i in ctx.io["inputs"]]
        ctx.texts = family_texts("text")
        ctx.sample_inputs = [rt.encode(tokenizer, t, names) for t in ctx.texts]
    elif ctx.io["kind"] == "decoder":
        tokenizer = rt.load_tokenizer(ctx.stage_dir, ctx.io)
        decoder = rt.Decoder(None, ctx.io)
        ctx.texts = family_texts("decoder")
        ctx.sample_inputs = [decoder.feeds(tokenizer.encode(t).ids, decoder.empty_past(), 0) for t in ctx.texts]
    else:
        ctx.sample_inputs = make_inputs(ctx.io["inputs"], ctx.input_spec)
    folder = ctx.stage_dir / "samples"
    folder.mkdir()
    rt.save_samples(folder / "inputs.npz", ctx.sample_inputs)
    if ctx.texts:
        (folder / "texts.json").write_text(json.dumps(ctx.texts, indent=1) + "\n", encoding="utf-8")
