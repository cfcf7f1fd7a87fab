"""A target profile's sections as frozen dataclasses, and how a TOML table becomes one: each key checked against
its field's type, so an unknown key or a wrong type names the file and the key. What the values must be (positive,
a known recipe, a known runtime) is checked by packager/profiles.py, which loads the files; this module depends
on nothing above it, so the runtimes and the recipes can read profiles that profiles.py checks with them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from packager.errors import ExitCode, PackagerError, did_you_mean

Scalar = str | int | float | bool
T = TypeVar("T")
# The runtime a profile's [runtime] section names when it names none: profiles written before the key existed
# were all for ONNX Runtime (packager/runtimes/).
DEFAULT_RUNTIME = "onnxruntime"
INT64 = (-2**63, 2**63 - 1)


@dataclass(frozen=True)
class Device:
    arch: str                      # "aarch64"
    cpu: str                       # core type, e.g. "cortex-a76"
    cores: int
    isa: tuple[str, ...]           # ISA features as /proc/cpuinfo names them ("asimddp" ...)
    ram_bytes: int
    accelerator: str = ""          # "" for CPU-only boards
    # Peak memory bandwidth in decimal GB/s, from the memory part's datasheet (0: unknown): the decode-speed
    # bound of packager/bandwidth.py. Not recorded in bundles (Profile.to_dict): they reproduce byte for byte.
    memory_bandwidth_gbs: float = 0.0

    @property
    def kernels(self) -> str:
        """Which of onnxruntime's MatMulNBits layouts this CPU packs a 4-bit weight into (kernel_family)."""
        return kernel_family(self.arch, self.isa)


def kernel_family(arch: str, isa: tuple[str, ...] | frozenset[str]) -> str:
    """The MLAS kernels a 4-bit MatMul runs on, which decide the packed copy it holds (estimate_prepack.NBITS_PACKED):
    "x86-64"; "arm64-dotprod", KleidiAI's where the CPU has dotprod (onnxruntime/core/mlas/lib/qnbitgemm_kernel_neon.cpp
    UseKleidiAI: dotprod, a block a multiple of 32, no zero points, as the int4 recipe writes them); "arm64", NEON's."""
    if arch in ("x86_64", "amd64", "AMD64"):
        return "x86-64"
    return "arm64-dotprod" if "asimddp" in isa else "arm64"


@dataclass(frozen=True)
class OS:
    name: str
    python: str                    # "3.13": the device's Python, for wheels and the smoke test
    # The Debian release whose arm64 packages match the device's userland ("bookworm"), for
    # `packager smoke --emulate`; "" where none does (that target cannot be emulated).
    debian: str = ""
    # A container base image with the device's userland and accelerator libraries (Jetson: the L4T
    # image of the JetPack release); when set, the bundle carries a Dockerfile that runs its smoke test.
    container: str = ""


@dataclass(frozen=True)
class Runtime:
    package: str                   # pip package of the runtime on the device
    version: str                   # exact pin
    max_opset: int                 # highest ai.onnx opset that runtime version implements
    providers: tuple[str, ...]     # execution providers in priority order
    numpy: str                     # numpy pin that has wheels for the device's Python
    index_url: str = ""            # extra index that serves the runtime (Jetson)
    provider_options: dict[str, dict[str, Scalar]] = field(default_factory=dict)
    # GPU profiles: the resident cost of the GPU providers' CUDA context (driver, cuBLAS/cuDNN handles)
    # on unified memory, which a measurement on a host without the GPU cannot see.
    gpu_context_bytes: int = 0
    name: str = DEFAULT_RUNTIME    # the implementation in packager.runtimes.RUNTIMES that packages for it


@dataclass(frozen=True)
class Session:
    intra_op_threads: int
    inter_op_threads: int = 1
    graph_optimization: str = "all"          # disable | basic | extended | all
    execution_mode: str = "sequential"       # sequential | parallel
    cpu_mem_arena: bool = True
    mem_pattern: bool = True
    # Session configuration entries (SessionOptions.add_session_config_entry: "key" = "value"), e.g. the
    # ARM kernel options; keys from onnxruntime_session_options_config_keys.h of the pinned runtime.
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    memory_bytes: int              # peak resident memory allowed for the deployment
    device_class: str = ""         # "E2B" or "E4B": the class the budget comes from
    context: int = 2048            # decoders: tokens of KV cache the deployment must hold (--context overrides)


@dataclass(frozen=True)
class Accuracy:
    # The packaged model's outputs against the fp32 reference's, on the build host (verify) and
    # on the device (its smoke test compares with the reference outputs the bundle carries).
    min_cosine: float
    # Decoders: the share of the reference's greedy tokens the packaged model predicts too
    # (teacher-forced over the reference's continuation), and the cosine of the logits there.
    min_token_agreement: float = 0.9
    min_logits_cosine: float = 0.95
    # --eval: how far the packaged model's score on the user's cases (share passed) may fall below
    # the fp32 reference's (0: not one case less).
    eval_tolerance: float = 0.05


@dataclass(frozen=True)
class Int4:
    """MatMulNBits / GatherBlockQuantized settings of the int4 recipe for this device's kernels."""

    # block_size: a multiple of 32 for KleidiAI's ARM kernels (onnxruntime/core/mlas/lib/qnbitgemm_kernel_neon.cpp,
    # UseKleidiAI)
    block_size: int = 32
    symmetric: bool = True         # no zero points: smaller, and the fast ARM path
    accuracy_level: int = 4        # 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute (needs dotprod to pay off)

    @property
    def compute(self) -> str:
        """MatMulNBits' compute type at this accuracy_level (nbits_compute)."""
        return nbits_compute(self.accuracy_level)

    @property
    def bytes_per_weight(self) -> float:
        """A 4-bit weight's bytes as the int4 recipe stores it: half a byte, and an fp32 scale a block."""
        return 0.5 + 4 / self.block_size


def nbits_compute(accuracy_level: int) -> str:
    """The compute type a MatMulNBits of this accuracy_level runs on the CPU, which decides the copies of its weights
    the runtime holds: "fp32" (levels 0-2: 0 is unset, the fp32 kernels) or "int8" (level 4: activations quantized to
    int8, a second, larger packed copy of the weights; level 3, bf16, not measured: counted as 4, the larger)."""
    return "fp32" if accuracy_level <= 2 else "int8"


def by_block(measured: dict[int, T], block_size: int) -> T:
    """What was measured at MatMulNBits' block size, for `block_size`: the entry of the largest measured block not
    above it (a finer block carries more per-block data, scales and sums, so an unmeasured block takes the next finer
    one's, the larger); below the finest measured, the finest's."""
    fitting = [b for b in measured if b <= block_size]
    return measured[max(fitting) if fitting else min(measured)]


@dataclass(frozen=True)
class Mobile:
    """Phone apps ([mobile]): the app loads the ORT-format model with the mobile runtime packages pinned here,
    and the bundle carries Android (Kotlin) and iOS (Swift) examples that do so (packager/mobile.py). A
    [decoder_runtime.mobile] names the decoder runtime's own app packages (onnxruntime-genai's: runtimes/genai.py)."""

    android_package: str           # Maven coordinates, "com.microsoft.onnxruntime:onnxruntime-android"
    android_version: str           # exact pin, "1.27.0"
    ios_pod: str                   # CocoaPods pod with the Objective-C/Swift API, "onnxruntime-objc"
    ios_version: str               # exact pin of the pod and of the Swift package
    ios_swift_package: str = ""    # Swift Package Manager repository URL ("": none published, onnxruntime-genai)
    # Execution providers the examples add, in priority order (names as in runtime.providers); NNAPI and
    # CoreML are left out of an example when the mobile usability check rates the model NO for them.
    android_providers: tuple[str, ...] = ()
    ios_providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecoderRuntime:
    """[decoder_runtime]: decoder LLMs run on another runtime than the profile's other models (issue 19: genai's
    native generation), with that runtime's settings and the recipes it makes. A decoder whose architecture that
    runtime does not take keeps [runtime] and the profile's decoder_recipe (packager/runtimes/__init__.py)."""

    runtime: Runtime
    session: Session
    recipe: str                    # the default recipe of a decoder on this runtime
    fit_recipes: tuple[str, ...] = ()  # what --fit auto tries there, most precise first (default: recipe)
    # Phones: that runtime's app packages, in place of [mobile] for a decoder on it (the app loads the runtime's model)
    mobile: Mobile | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: Device
    os: OS
    runtime: Runtime
    session: Session
    budget: Budget
    recipe: str                    # default quantization recipe (see packager/recipes.py)
    accuracy: Accuracy
    aliases: tuple[str, ...] = ()
    fit_recipes: tuple[str, ...] = ()  # what --fit auto tries, most precise first (default: recipe)
    decoder_recipe: str = ""       # the default for decoder LLMs (default: recipe)
    decoder_fit_recipes: tuple[str, ...] = ()  # --fit auto for decoders (default: fit_recipes)
    int4: Int4 = field(default_factory=Int4)
    # [decoder_int4]: decoder LLMs' MatMulNBits settings, whatever runtime runs them ([runtime] or [decoder_runtime]),
    # where they differ from [int4]: a decoder's memory is its weights, and the compute type decides how many copies
    # of them the runtime holds (accuracy_level 4 packs a second, larger one: packager/estimate.py NBITS_PACKED).
    decoder_int4: Int4 | None = None
    mobile: Mobile | None = None   # phones: the ORT-format model and the app-side packages ([mobile])
    decoder_runtime: DecoderRuntime | None = None   # decoder LLMs' own runtime, where it differs
    source: str = ""               # the file it was loaded from (set by the loader)

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        # runtime.name came after the manifest's schema version 1: recorded only where a profile names another
        # runtime than the default, so bundles for profiles that name none reproduce byte for byte.
        if record["runtime"]["name"] == DEFAULT_RUNTIME:
            del record["runtime"]["name"]
        # The profile as it applied to the model: with_decoder_runtime() moved [decoder_runtime] into runtime and
        # session where it applies; the section itself came after schema version 1 (byte-identical bundles).
        del record["decoder_runtime"]
        del record["decoder_int4"]   # likewise moved into int4 where it applies (with_decoder_int4)
        # Likewise device.memory_bandwidth_gbs: `packager bench` reads it from the built-in profile of that name.
        del record["device"]["memory_bandwidth_gbs"]
        return record

    def with_decoder_runtime(self) -> Profile:
        """The profile as it applies to a decoder LLM on [decoder_runtime]: that runtime, its session and recipes, and
        on a phone its app packages ([decoder_runtime.mobile]; [mobile] where it has none: that runtime checks it)."""
        d = self.decoder_runtime
        if d is None:
            return self
        return dataclasses.replace(self.with_decoder_int4(), runtime=d.runtime, session=d.session,
                                   decoder_recipe=d.recipe, decoder_fit_recipes=d.fit_recipes, decoder_runtime=None,
                                   mobile=d.mobile if d.mobile is not None else self.mobile)

    def with_decoder_int4(self) -> Profile:
        """The profile as its int4 recipes apply to a decoder LLM on any runtime: [decoder_int4] as [int4]."""
        if self.decoder_int4 is None:
            return self
        return dataclasses.replace(self, int4=self.decoder_int4, decoder_int4=None)

    def recipe_for(self, context_sized: bool) -> str:
        """The default recipe for a model (or component) whose memory grows with the context or not: its family's
        `context_sized` (packager/families/; a decoder LLM's, an encoder-decoder's decoder)."""
        return (self.decoder_recipe or self.recipe) if context_sized else self.recipe

    def fit_recipes_for(self, context_sized: bool) -> tuple[str, ...]:
        """What --fit auto tries for such a model, most precise first."""
        chosen = (self.decoder_fit_recipes or self.fit_recipes) if context_sized else self.fit_recipes
        return chosen or (self.recipe_for(context_sized),)


_ENUMS = {
    "session.graph_optimization": {"disable", "basic", "extended", "all"},
    "session.execution_mode": {"sequential", "parallel"},
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp` and return it in the dataclass's shape."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise key_error(where, key, f"must be a table, got {type(value).__name__}")
        return _build(typing.cast(type, tp), value, where, prefix=f"{key}.")  # an annotation: a class
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, list):
            raise key_error(where, key, f"must be an array, got {type(value).__name__}")
        return tuple(_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise key_error(where, key, f"must be a table, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        tables = [a for a in args if dataclasses.is_dataclass(a)]
        if tables:  # an optional table, such as [mobile]
            return _convert(value, tables[0], key, where)
        if isinstance(value, args) and not (isinstance(value, bool) and bool not in args and int in args):
            return value
        raise key_error(where, key, f"must be one of {', '.join(map(_type_name, args))}")
    # TOML integers are 64-bit (toml.io, "Integer"); tomllib reads longer ones, which would overflow
    # the floats they meet later (`budget / 2**20`, a float key's conversion).
    if type(value) is int and not INT64[0] <= value <= INT64[1]:
        raise key_error(where, key, "is out of the 64-bit integer range TOML allows")
    # bool is an int in Python; a budget of `true` bytes is a mistake, not a number.
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise key_error(where, key, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if key in _ENUMS and value not in _ENUMS[key]:
        raise key_error(where, key, f"must be one of {', '.join(sorted(_ENUMS[key]))}, got {value!r}")
    return value


# Keys an earlier release read, and where their settings live now: a copy of an older profile gets the new name.
RENAMED = {"decoder_runtime.int4": "decoder_int4"}


def _build(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in fields:
            hint = f' (it is now "[{RENAMED[prefix + key]}]")' if prefix + key in RENAMED else \
                did_you_mean(key, list(fields))
            raise key_error(where, prefix + key, f"is not a known key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise key_error(where, prefix + name, "is required but missing")
    return cls(**kwargs)


def profile_from_record(data: dict[str, Any], where: str) -> Profile:
    """The profile a bundle's manifest records (Profile.to_dict), as loaded from a file."""
    # An absent optional table ([mobile]) is recorded as null.
    profile: Profile = _build(Profile, {k: v for k, v in data.items() if v is not None}, where)
    return profile


def key_error(where: str, key: str, problem: str) -> PackagerError:
    # repr: the same 'key' for ordinary names, and one line for a key with a line break in it.
    return PackagerError(f"{where}: key {key!r} {problem}; fix the profile.", ExitCode.BAD_PROFILE)
