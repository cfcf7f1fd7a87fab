"""run.py's command line."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .compare import load_samples, save_samples
from .manifest import HERE, PUBLIC_KEY_ENV, configured_public_key, member
from .measure import measure
from .session import load
from .signature import check_signature

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
    parser.add_argument("texts", nargs="*", help="texts to run (text models); decoder LLMs: texts to continue; "
                        "encoder-decoders: .wav or .png files, or texts, to generate from")
    parser.add_argument("--prompt", help="decoder LLMs: the text to continue")
    parser.add_argument("--image", type=Path, action="append", default=[], help="multimodal decoders: an image (PNG, "
                        "or what Pillow reads) before the prompt's text, read by the vision encoder loaded for it")
    parser.add_argument("--audio", type=Path, action="append", default=[], help="multimodal decoders: a .wav clip (up "
                        "to 30 s) before the prompt's text, read by the audio encoder loaded for it")
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

    if not (args.measure or args.inputs or args.texts or args.prompt is not None or args.image or args.audio):
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
        if runner.family.media:
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
        stream = getattr(runner, "stream_text", None)   # onnxruntime-genai bundles: text as it is generated
        if args.prompt is not None and stream is not None and not args.json:
            print(args.prompt, end="", flush=True)
            for piece in stream(args.prompt, args.max_new_tokens):
                print(piece, end="", flush=True)
            print()
            return 0
        media = [*args.image, *args.audio]
        if media:
            prompt = args.prompt if args.prompt is not None else " ".join(args.texts)
            text, tokens, ids = runner.generate_with(prompt, media, args.max_new_tokens)
            print(json.dumps({"prompt": prompt, "media": [str(m) for m in media], "prompt_ids": ids, "text": text,
                              "tokens": tokens}) if args.json else prompt + text)
            return 0
        if args.prompt is not None:
            text, tokens = runner.generate_text(args.prompt, args.max_new_tokens)
            print(json.dumps({"prompt": args.prompt, "text": text, "tokens": tokens}) if args.json
                  else args.prompt + text)
            return 0
        if runner.family.prompted and args.texts and not args.inputs:
            # `python run.py "text"`, the README's way to try any bundle: a decoder continues each text.
            answers = []
            for prompt in args.texts:
                text, tokens = runner.generate_text(prompt, args.max_new_tokens)
                answers.append({"prompt": prompt, "text": text, "tokens": tokens})
            print(json.dumps(answers) if args.json else "\n".join(a["prompt"] + a["text"] for a in answers))
            return 0
        results = [runner.run(f) for f in read_inputs(args.inputs, runner.input_names)] if args.inputs \
            else runner.run_texts(args.texts)
    except ImportError as e:   # before OSError's siblings: a bundle run outside its environment
        print(f"error: {e.name or e} is not installed here; install the bundle's pinned requirements first: "
              f"pip install -r {args.bundle / 'requirements.txt'}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        save_samples(args.output, results)
        return 0
    shown = runner.io["primary_outputs"]
    print(json.dumps([{k: r[k].tolist() for k in shown} for r in results]))
