"""The bundle's device-side code: what runs the packaged model on the device, checks the bundle and measures
it. Python 3.10 to 3.13; onnxruntime, numpy and the standard library (tokenizers for text models,
cryptography for signed bundles). It never imports packager.

Loaded by run.py (the bundle's entry point) from its source files, never from a __pycache__ .pyc and
never with the bundle's folder on sys.path: see run.py's `load_package`. The modules, lowest first:
families (what each model kind loads and runs), manifest (the layout and the manifest), files (the
integrity check), signature, peak (resident memory), media (WAV, PNG, log-mel), media_gemma4 and
media_gemma3n (Gemma's encoder inputs as transformers' processors make them), soft (an encoder's soft
tokens in a decoder's pass), session (the runner and the decoder loop), compare (samples and the comparison
with the fp32 reference), evaluation (--eval cases), measure (--measure), cli.
"""

from .cli import main, read_inputs
from .compare import (
    NPZ_DATE_TIME,
    compare,
    compare_decoder,
    followed,
    load_samples,
    reference_generations,
    save_samples,
    score_from,
)
from .evaluation import EVAL_DEFAULT_TOKENS, EVAL_MATCHES, eval_passes, evaluate, read_eval
from .families import FAMILIES, Family, family
from .files import IntegrityError, check_files, manifest_files, read_sums, refuse_unlisted, unlisted_entries
from .manifest import (
    HERE,
    MANIFEST,
    PUBLIC_KEY_ENV,
    SAMPLE_EVAL,
    SAMPLE_EXPECTED,
    SAMPLE_INPUTS,
    SAMPLE_MEDIA,
    SAMPLE_TEXTS,
    SIGNATURE,
    SUITE,
    SUMS,
    Budget,
    BuiltWith,
    EvalGate,
    FileEntry,
    Io,
    Manifest,
    ManifestError,
    Recipe,
    RuntimeSpec,
    Session,
    Signature,
    Smoke,
    Source,
    SuiteManifest,
    SuiteModel,
    Tensor,
    configured_public_key,
    load_manifest,
    manifest_record,
    member,
    members,
    read_manifest,
    read_record,
    read_runtime,
    record_dict,
    sha256_file,
)
from .measure import MEASURE_TOKENS, exercise, measure
from .media import audio_features, image_pixels, mel_filters, read_image, read_wav, sample_media, write_png, write_wav
from .media_gemma3n import gemma3n_audio_features, gemma3n_pixels
from .media_gemma4 import gemma4_audio_features, gemma4_patches
from .on_demand import mode_peaks, prompt_with
from .peak import peak_bytes, reset_peak, rss_bytes
from .session import (
    Decoder,
    RowFeeds,
    Runner,
    choose_providers,
    encode,
    encoded,
    encoder_feeds,
    load,
    load_tokenizer,
    prefill_chunk,
    provider_options,
    session_options,
    start_ids,
)
from .signature import SignatureError, check_signature, key_fingerprint, load_public_key, verify_signature
from .soft import Soft

__all__ = [
    "HERE", "MANIFEST", "SAMPLE_INPUTS", "SAMPLE_EXPECTED", "SAMPLE_TEXTS", "SAMPLE_EVAL", "SIGNATURE",
    "PUBLIC_KEY_ENV", "SAMPLE_MEDIA", "SUITE", "sha256_file", "read_manifest", "members", "member", "SUMS",
    "configured_public_key", "IntegrityError", "unlisted_entries", "refuse_unlisted", "read_sums",
    "manifest_files", "check_files", "SignatureError", "load_public_key", "key_fingerprint", "verify_signature",
    "check_signature", "reset_peak", "peak_bytes", "rss_bytes", "read_wav", "write_wav", "mel_filters",
    "audio_features", "read_image", "write_png", "image_pixels", "gemma4_patches", "sample_media", "choose_providers",
    "session_options", "provider_options", "Runner", "Decoder", "RowFeeds", "prefill_chunk", "encode",
    "load_tokenizer", "load", "start_ids", "Soft",
    "gemma4_audio_features", "gemma3n_audio_features", "gemma3n_pixels", "prompt_with", "mode_peaks", "followed",
    "encoded", "encoder_feeds", "load_samples", "NPZ_DATE_TIME", "save_samples", "compare_decoder", "score_from",
    "reference_generations", "compare", "EVAL_MATCHES", "EVAL_DEFAULT_TOKENS", "read_eval", "eval_passes",
    "evaluate", "measure", "exercise", "MEASURE_TOKENS", "read_inputs", "main", "FAMILIES", "Family", "family",
    # the typed manifest (manifest.py): the build host reads and writes manifests with these too
    "ManifestError", "read_record", "record_dict", "Manifest", "SuiteManifest", "SuiteModel", "Source", "Recipe",
    "RuntimeSpec", "Session", "Io", "Tensor", "FileEntry", "Smoke", "EvalGate", "Budget", "BuiltWith", "Signature",
    "manifest_record", "load_manifest", "read_runtime",
]
