"""samples: the inputs that verify, fit and the device's smoke test all run.

The model's family makes them (packager/families/): text models get the family's sentences through the
tokenizer that ships in the bundle (run.py's own code); decoders get the family's prompts, as the first
generation step's inputs (prompt ids, empty KV cache); tensor models get inputs made from their signature
(and --shape/--value); encoder-decoders get raw inputs the device's user would have, written as files.
"""

from __future__ import annotations

import json

from packager.context import Context
from packager.device_code import runner
from packager.families import family_for


def run(ctx: Context) -> None:
    rt = runner()
    folder = ctx.stage_dir / "samples"
    folder.mkdir()
    family_for(ctx.io.kind).make_samples(ctx, rt)
    rt.save_samples(folder / "inputs.npz", ctx.sample_inputs)
    if ctx.texts:
        (folder / "texts.json").write_text(json.dumps(ctx.texts, indent=1) + "\n", encoding="utf-8")
