"""Phone bundles of a decoder LLM on onnxruntime-genai: the app loads the builder's model folder as it is (genai reads
model.onnx with its genai_config.json; no ORT-format conversion: runtimes/onnxruntime.py `converts`), with the genai
packages the profile's [decoder_runtime.mobile] pins, and the bundle carries Android (Kotlin) and iOS (Swift)
examples written against the GenAI API, generated from targets/mobile/GenAIModel.*.template.

    record(profile, model_file, onnxruntime)      # the manifest's `mobile`: what the app loads, with which packages
    write_examples(stage, bundle, profile, ...)   # android/, ios/ in the staged bundle
    readme(mobile, profile)                       # the bundle README's phone section
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packager.mobile_examples import class_name, render
from packager.paths import targets_dir
from packager.profile_types import Profile

FORMAT = "genai"   # the manifest's mobile.format: the runtime's own model folder (ORT-format bundles leave it out)
# The ONNX Runtime Android package the app adds beside genai's AAR, which carries libonnxruntime-genai.so and its JNI
# only (microsoft/onnxruntime-genai tools/ci_build/github/android/build_aar_package.py; its own test app adds
# onnxruntime-android: src/java/src/test/android/app/build.gradle). iOS: onnxruntime-genai-c's pod depends on
# onnxruntime-c (tools/ci_build/github/apple/c/c.podspec.template), so CocoaPods brings it.
ONNXRUNTIME_ANDROID = "com.microsoft.onnxruntime:onnxruntime-android"


def record(profile: Profile, model_file: str, onnxruntime: str) -> dict[str, Any]:
    """The manifest's `mobile` of a genai phone bundle: the folder the app loads and the app's packages (Maven and
    CocoaPods lines); `onnxruntime`: the release the model's graph was checked and verified on."""
    assert profile.mobile is not None
    m = profile.mobile
    return {"format": FORMAT, "model": model_file, "onnx_model": model_file,
            "model_folder": str(Path(model_file).parent),
            "app_packages": {"android": [f"{m.android_package}:{m.android_version}",
                                         f"{ONNXRUNTIME_ANDROID}:{onnxruntime}"],
                             "ios": [f"pod '{m.ios_pod}', '{m.ios_version}'"]}}


def _template(name: str) -> str:
    return (targets_dir() / "mobile" / name).read_text(encoding="utf-8")


def write_examples(stage: Path, bundle_name: str, profile: Profile, mobile: dict[str, Any], context: int,
                   chunk: int) -> list[str]:
    """android/ and ios/ in the staged bundle: a class that loads the model folder with the GenAI API and streams
    a greedy answer (the KV cache at the bundle's `context`, the prompt in chunks of `chunk`), and a README each."""
    assert profile.mobile is not None
    m = profile.mobile
    folder = stage / mobile["model_folder"]
    files = sorted(p for p in folder.iterdir() if p.is_file())
    name = class_name(bundle_name.removesuffix(f"-{profile.name}"))
    android, onnxruntime = mobile["app_packages"]["android"]
    values = {
        "class_name": name, "bundle": bundle_name, "target": profile.name, "context": str(context),
        "chunk": str(chunk), "threads": str(profile.session.intra_op_threads), "maven": android,
        "onnxruntime_maven": onnxruntime, "onnxruntime": onnxruntime.rsplit(":", 1)[-1],
        "android_version": m.android_version, "ios_pod": m.ios_pod, "ios_version": m.ios_version,
        "model_files_kotlin": ",\n".join(f'            "{p.name}" to {p.stat().st_size}L' for p in files),
    }
    written = []
    for out_folder, filename, template in (("android", f"{name}.kt", "GenAIModel.kt.template"),
                                           ("ios", f"{name}.swift", "GenAIModel.swift.template"),
                                           ("android", "README.md", "genai-android-README.md.template"),
                                           ("ios", "README.md", "genai-ios-README.md.template")):
        (stage / out_folder).mkdir(exist_ok=True)
        (stage / out_folder / filename).write_text(render(_template(template), values), encoding="utf-8")
        written.append(f"{out_folder}/{filename}")
    return written


def readme(mobile: dict[str, Any], profile: Profile) -> str:
    """The bundle README's phone section."""
    android, ios = (next((e for e in mobile.get("examples", []) if e.startswith(f"{d}/") and not e.endswith(".md")),
                         "") for d in ("android", "ios"))
    packages = mobile["app_packages"]
    lines = "\n".join(f"  - {platform}: " + ", ".join(f"`{line}`" for line in packages[key])
                      for platform, key in (("Android (Gradle)", "android"), ("iOS (CocoaPods)", "ios")))
    return f"""
## In a phone app

The app loads the `{mobile['model_folder']}/` folder as onnxruntime-genai's model builder wrote it (`genai_config.json`,
`model.onnx` and its data, the tokenizer): no ORT-format conversion. `{android}` and `{ios}` generate with
the GenAI API (Model, Tokenizer, GeneratorParams with `max_length` the bundle's context, Generator, the prompt
appended in the profile's chunks, TokenizerStream for the text); `android/README.md` and `ios/README.md` say how to
add them. Neither was compiled by packager.

- The app's packages:
{lines}
- `python smoke_test.py` runs the same folder with onnxruntime-genai's Python package ({profile.runtime.package}
  {profile.runtime.version}, `pip install -r requirements.txt`), on a computer: the checks an app does not run.
"""
