"""LoRA adapters (PEFT's format): checked against the base model, merged into its weights before export.

A PEFT LoRA adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`
(pickled `adapter_model.bin` only with --allow-pickle, loaded with torch's weights-only loader).
Its tensors name the modules they adapt: `base_model.model.<module>.lora_A.weight` [r, in] and
`.lora_B.weight` [out, r] for Linear and Conv1D layers, `.lora_embedding_A` [r, vocab] and
`.lora_embedding_B` [dim, r] for embeddings, and whole tensors that replace the base's
(`modules_to_save`, and the biases trained with `bias = "all"` or `"lora_only"`).

The merge is W' = W + s * B @ A (transposed for GPT-2's Conv1D layers, whose weight is stored
[in, out]: peft's `fan_in_fan_out`, and for embeddings), with s = alpha / r, or alpha / sqrt(r)
with `use_rslora`; `rank_pattern` and `alpha_pattern` give single modules their own rank and
alpha. With peft installed the merge is peft's own (`PeftModel.from_pretrained(...)
.merge_and_unload()`); without it, this file's arithmetic, which gives the same weights to fp32
rounding (tests/test_lora.py). What the merge cannot express is refused in one sentence: DoRA,
LoRA biases on B (`lora_bias`), other PEFT methods, modules or shapes the base lacks.

`check` reads only the safetensors headers (names, shapes): a bad adapter is refused before the
export. `merge` writes the merged Hugging Face folder (fp32 weights, the base's other files) into
a folder of the run's private work dir, which the pipeline removes with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.errors import ExitCode, PackagerError
from packager.leftovers import temp_folder

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLED = "adapter_model.bin"
PREFIX = "base_model.model."
# Module types whose weight is stored [in, out] (transformers' Conv1D), by model_type: peft treats
# them as fan_in_fan_out whatever the config says, and every other Linear as not.
CONV1D = {"gpt2": ("c_attn", "c_proj", "c_fc", "q_attn"), "openai-gpt": ("c_attn", "c_proj", "c_fc")}
# The weight files of a Hugging Face folder, which the merge replaces; everything else is copied.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _bad(message: str) -> PackagerError:
    return PackagerError(message, ExitCode.BAD_INPUT)


@dataclass(frozen=True)
class LoraPair:
    module: str          # the module path in the model ("model.layers.0.self_attn.q_proj")
    base_key: str        # its weight in the base's safetensors ("model.layers.0.self_attn.q_proj.weight")
    a_key: str           # the adapter's tensor names
    b_key: str
    rank: int
    alpha: float
    scale: float
    transpose: bool      # delta = (B @ A).T: Conv1D (fan_in_fan_out) and embeddings
    embedding: bool = False


@dataclass(frozen=True)
class Adapter:
    path: Path                               # the adapter folder
    name: str                                # its folder name
    sha256: str                              # over adapter_config.json and the weights file
    weights: Path                            # adapter_model.safetensors (or the .bin, with --allow-pickle)
    config: dict[str, Any]
    pairs: tuple[LoraPair, ...] = ()         # filled by check()
    replaced: dict[str, str] = field(default_factory=dict)   # base key -> adapter key (modules_to_save, bias)

    def record(self, method: str) -> dict[str, Any]:
        """What the manifest records: the adapter's hash and the merge."""
        ranks = sorted({p.rank for p in self.pairs})
        alphas = sorted({p.alpha for p in self.pairs})
        return {
            "name": self.name,
            "sha256": self.sha256,
            "files": [CONFIG, self.weights.name],
            "merge": {
                "method": method,
                "rank": ranks[0] if len(ranks) == 1 else ranks,
                "alpha": alphas[0] if len(alphas) == 1 else alphas,
                "scaling": "alpha / sqrt(r) (use_rslora)" if self.config.get("use_rslora") else "alpha / r",
                "target_modules": sorted({p.module.rsplit(".", 1)[-1] for p in self.pairs}),
                "modules_merged": len(self.pairs),
                "fan_in_fan_out": any(p.transpose and not p.embedding for p in self.pairs),
                "tensors_replaced": sorted(self.replaced),   # modules_to_save, trained biases
            },
        }


def read(path: Path, allow_pickle: bool = False) -> Adapter:
    """The adapter folder's config and weights file, hashed; refused (exit 5) when it is not a
    LoRA adapter this merge can apply."""
    if not path.exists():
        raise _bad(f"--adapter {path}: no such folder; pass a PEFT LoRA adapter folder (adapter_config.json and "
                   f"{WEIGHTS}).")
    if not path.is_dir():
        raise _bad(f"--adapter {path}: not a folder; pass the PEFT adapter folder that holds {CONFIG} and {WEIGHTS}.")
    config_path = path / CONFIG
    if not config_path.is_file():
        raise _bad(f"--adapter {path}: no {CONFIG}, so this is not a PEFT adapter folder; save it with peft's "
                   "save_pretrained.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _bad(f"{config_path}: not readable JSON ({e}); re-save the adapter.") from None
    if not isinstance(config, dict):
        raise _bad(f"{config_path}: not an adapter configuration (expected a JSON object); re-save the adapter.")
    _check_config(config, config_path)
    weights = path / WEIGHTS
    if not weights.is_file():
        if not (path / PICKLED).is_file():
            raise _bad(f"--adapter {path}: no {WEIGHTS} beside {CONFIG}; copy the adapter's weights file too.")
        if not allow_pickle:
            raise _bad(f"--adapter {path}: only pickled weights ({PICKLED}), which can run code when loaded; re-save "
                       "the adapter with safe_serialization=True, or pass --allow-pickle to load it with torch's "
                       "weights-only loader.")
        weights = path / PICKLED
    else:
        from packager.model_files import check_safetensors

        check_safetensors(weights)
    h = hashlib.sha256()
    for f in (config_path, weights):
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return Adapter(path, path.name, h.hexdigest(), weights, config)


def _check_config(config: dict[str, Any], where: Path) -> None:
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise _bad(f"{where}: a {kind} adapter; packager merges LoRA adapters only (merge it with peft's "
                   "merge_and_unload and package the merged folder).")
    if config.get("use_dora"):
        raise _bad(f"{where}: a DoRA adapter (use_dora), whose merge rescales each column by a learned magnitude; "
                   "merge it with peft's merge_and_unload and package the merged folder.")
    if config.get("lora_bias"):
        raise _bad(f"{where}: lora_bias (a bias on LoRA's B matrix) is not supported; merge it with peft's "
                   "merge_and_unload and package the merged folder.")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise _bad(f"{where}: `{key}` must be a positive number, got {value!r}; fix the adapter's config.")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise _bad(f"{where}: `{key}` must be an object of module patterns; fix the adapter's config.")


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _pickled_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _load_pickled(path).items()}


def _load_pickled(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _bad(f"{path}: torch's weights-only loader refused it ({first[:200]}); get the adapter as "
                   f"{WEIGHTS}.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _bad(f"{path}: not a state dict of tensors; get the adapter as {WEIGHTS}.")
    return state


def base_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every weight of a Hugging Face folder's safetensors files (all shards), by name."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        shapes.update(_header(f))
    return shapes


def _pattern_value(pattern: dict[str, float], module: str, default: float) -> float:
    """peft's rank_pattern / alpha_pattern lookup: the first key that matches the module path's end."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _base_key(module_key: str, base: dict[str, tuple[int, ...]]) -> str | None:
    """The base checkpoint's name for a tensor the adapter names by module path: the same, or with the
    model's prefix dropped or added (an adapter trained on BertModel against a BertFor... checkpoint)."""
    if module_key in base:
        return module_key
    head, _, rest = module_key.partition(".")
    if rest in base:
        return rest
    prefixes = sorted({k.split(".", 1)[0] for k in base if "." in k})
    found = [f"{p}.{module_key}" for p in prefixes if f"{p}.{module_key}" in base]
    return found[0] if len(found) == 1 else None


def check(adapter: Adapter, base_folder: Path, base_config: dict[str, Any],
          base: dict[str, tuple[int, ...]] | None = None) -> Adapter:
    """Match every adapter tensor with the base weight it changes, by name and shape (headers only;
    `base`: the base's shapes, when its weights are not safetensors). The adapter, with its merge
    plan; refused (exit 5) on the first module or shape the base lacks."""
    names = _header(adapter.weights) if adapter.weights.suffix == ".safetensors" else _pickled_shapes(adapter.weights)
    base = base if base is not None else base_shapes(base_folder)
    where = adapter.path
    if not names:
        raise _bad(f"--adapter {where}: the weights file holds no tensors; re-save the adapter.")
    config = adapter.config
    r_default, alpha_default = float(config["r"]), float(config["lora_alpha"])
    rslora = bool(config.get("use_rslora"))
    conv1d = CONV1D.get(str(base_config.get("model_type", "")), ())
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    modules: dict[str, dict[str, str]] = {}
    replaced: dict[str, str] = {}
    for key in sorted(names):
        if not key.startswith(PREFIX):
            raise _bad(f"--adapter {where}: tensor {key!r} is not named base_model.model.<module>... as PEFT saves "
                       "adapters; re-save it with peft's save_pretrained.")
        rest = key[len(PREFIX):]
        if "lora_magnitude_vector" in rest:
            raise _bad(f"--adapter {where}: holds DoRA magnitudes ({rest}); merge it with peft's merge_and_unload "
                       "and package the merged folder.")
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.weight)?|(.+)\.(lora_embedding_A|lora_embedding_B)", rest)
        if match:
            module = match.group(1) or match.group(3)
            part = match.group(2) or match.group(4)
            modules.setdefault(module, {})[part] = key
            continue
        if ".lora_" in rest:
            raise _bad(f"--adapter {where}: tensor {rest!r} is a LoRA part this merge does not know; merge it with "
                       "peft's merge_and_unload and package the merged folder.")
        if ".original_module." in rest:
            continue  # modules_to_save keeps a copy of the untouched module: nothing to merge
        target = rest.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
        base_key = _base_key(target, base)
        if base_key is None:
            raise _mismatch(where, target, base_config)
        if base[base_key] != names[key]:
            raise _bad(f"--adapter {where}: its {target} is {_dims(names[key])} but the base's is "
                       f"{_dims(base[base_key])}: the adapter was trained on another model; pass its own base.")
        if base_key not in replaced or ".modules_to_save." in rest:
            replaced[base_key] = key
    pairs = []
    for module, parts in sorted(modules.items()):
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_key = parts.get("lora_embedding_A" if embedding else "lora_A")
        b_key = parts.get("lora_embedding_B" if embedding else "lora_B")
        if a_key is None or b_key is None:
            raise _bad(f"--adapter {where}: {module} has {'B' if a_key is None else 'A'} without "
                       f"{'A' if a_key is None else 'B'}; the weights file is incomplete: re-save the adapter.")
        a, b = names[a_key], names[b_key]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise _bad(f"--adapter {where}: {module}'s lora_A {_dims(a)} and lora_B {_dims(b)} are not a low-rank "
                       "pair (A is r x in, B is out x r); the adapter is damaged or not a LoRA adapter.")
        base_key = _base_key(f"{module}.weight", base)
        if base_key is None:
            raise _mismatch(where, module, base_config)
        rank = a[0]
        expected_rank = _pattern_value(config.get("rank_pattern") or {}, module, r_default)
        if rank != expected_rank:
            raise _bad(f"--adapter {where}: {module} has rank {rank} but adapter_config.json says {expected_rank:g}; "
                       "the config and the weights do not belong together: re-save the adapter.")
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha_default))
        delta = (a[1], b[0]) if embedding else (b[0], a[1])   # (vocab, dim) for embeddings, else (out, in)
        weight = base[base_key]
        if embedding:
            transpose, fits = True, weight == delta
        elif module.rsplit(".", 1)[-1] in conv1d or (delta[0] != delta[1] and weight == delta[::-1]):
            transpose, fits = True, weight == delta[::-1]   # Conv1D: stored [in, out]
        else:
            # A square weight of a model type not in CONV1D: the config's fan_in_fan_out says how it is stored.
            transpose = delta[0] == delta[1] and fan_in_fan_out and not conv1d
            fits = weight == delta
        if not fits:
            raise _bad(f"--adapter {where}: its {module} changes a {_dims(delta)} weight but the base's is "
                       f"{_dims(weight)}: the adapter was trained on another model; pass its own base.")
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        pairs.append(LoraPair(module, base_key, a_key, b_key, rank, alpha, scale, transpose, embedding))
    if not pairs and not replaced:
        raise _bad(f"--adapter {where}: no LoRA tensors (lora_A / lora_B) in it; re-save the adapter.")
    from dataclasses import replace

    return replace(adapter, pairs=tuple(pairs), replaced=replaced)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _mismatch(where: Path, module: str, base_config: dict[str, Any]) -> PackagerError:
    if "lm_head" in module.split(".") and base_config.get("tie_word_embeddings", True):
        return _bad(f"--adapter {where}: it changes lm_head, which this base ties to its input embedding (no weight "
                    "of its own); train the adapter without lm_head, or package a base with untied weights.")
    arch = (base_config.get("architectures") or ["?"])[0]
    return _bad(f"--adapter {where}: it adapts module {module}, which the base model ({arch}) does not have: the "
                "adapter was trained on another model; pass its own base.")


def peft_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def default_method() -> str:
    """peft's merge when it is installed, else the arithmetic one; PACKAGER_LORA_MERGE=peft|arithmetic
    chooses."""
    import os

    forced = os.environ.get("PACKAGER_LORA_MERGE", "").strip().lower()
    if forced == "peft" and not peft_available():
        raise PackagerError("PACKAGER_LORA_MERGE=peft, but peft is not installed; pip install 'packager[lora]' or "
                            "unset it (the arithmetic merge gives the same weights).", ExitCode.MISSING_DEPENDENCY)
    if forced in ("peft", "arithmetic"):
        return forced
    if forced:
        raise PackagerError(f"PACKAGER_LORA_MERGE={forced!r} is not a merge method; use peft or arithmetic.",
                            ExitCode.USAGE)
    return "peft" if peft_available() else "arithmetic"


def _copy_other_files(base: Path, dest: Path) -> None:
    for f in sorted(base.rglob("*")):
        rel = f.relative_to(base)
        if ".git" in rel.parts or not f.is_file():
            continue
        if len(rel.parts) == 1 and (f.suffix in WEIGHT_SUFFIXES or f.name in WEIGHT_INDEXES):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest / rel)


def _adapter_tensors(adapter: Adapter) -> dict[str, Any]:
    if adapter.weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(adapter.weights))
    return _load_pickled(adapter.weights)


def merge(base: Path, adapter: Adapter, dest: Path, method: str | None = None) -> str:
    """Write the base folder with the adapter merged into its weights to `dest` (created); returns the
    method used ("peft" or "arithmetic")."""
    method = method or default_method()
    if method not in ("peft", "arithmetic"):
        raise ValueError(f"unknown merge method {method!r}")
    dest.mkdir(parents=True)
    _copy_other_files(base, dest)
    if method == "peft":
        _merge_peft(base, adapter, dest)
    else:
        _merge_arithmetic(base, adapter, dest)
    return method


def _merge_arithmetic(base: Path, adapter: Adapter, dest: Path) -> None:
    """W + s * B @ A in fp32, on the checkpoint's tensors (no model is built)."""
    import torch
    from safetensors.torch import load_file, save_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(base.glob("*.safetensors")):
        state.update(load_file(str(f)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    tensors = _adapter_tensors(adapter)
    for base_key, key in adapter.replaced.items():   # modules_to_save and trained biases first, as peft loads them
        state[base_key] = tensors[key].float().clone()
    with torch.no_grad():
        for p in adapter.pairs:
            a, b = tensors[p.a_key].float(), tensors[p.b_key].float()
            delta = b @ a
            if p.transpose:
                delta = delta.T
            state[p.base_key] = state[p.base_key] + delta * p.scale
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest / "model.safetensors"), metadata={"format": "pt"})


def _merge_peft(base: Path, adapter: Adapter, dest: Path) -> None:
    """peft's own merge: the base model loaded in fp32, the adapter applied, merge_and_unload()."""
    import torch
    import transformers
    from peft import PeftModel

    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    arch = (config.get("architectures") or ["AutoModel"])[0]
    model_class = getattr(transformers, arch, None) or transformers.AutoModel
    model = model_class.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    with temp_folder("adapter") as tmp:
        folder = adapter.path
        if adapter.weights.suffix != ".safetensors":   # peft would unpickle it itself: hand it safetensors
            from safetensors.torch import save_file

            folder = Path(tmp)
            shutil.copyfile(adapter.path / CONFIG, folder / CONFIG)
            save_file({k: v.contiguous() for k, v in _load_pickled(adapter.weights).items()}, str(folder / WEIGHTS))
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(dest), safe_serialization=True)
