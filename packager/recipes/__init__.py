"""Quantization recipes: each reads an fp32 ONNX model and writes the model to ship, with the target's settings
(`RecipeOptions`), and returns what it did, for the manifest. `RECIPES` (registry.py) names them and says what
each needs; common.py holds what they share, dense.py fp32/fp16/int8, nbits.py int4 and int4-mixed."""

from packager.recipes.common import (PROTO_LIMIT, RecipeOptions, RecipeResult, count_ops, load_tensors,
                                     needs_external_data, save, tensor_array)
from packager.recipes.dense import fp16, fp16_merged, fp32, int8_dynamic, int8_dynamic_merged, int8_static
from packager.recipes.nbits import (find_tied_embedding, int4, int4_mixed, load_for_nbits, mix_nbits,
                                    quantize_nbits, quantized_nbits, tie_embedding)
from packager.recipes.registry import (RECIPES, Recipe, calibrated, help_text, parse_recipe, recipe, recipe_label,
                                       remedy, searched)

__all__ = [
    "PROTO_LIMIT", "RECIPES", "Recipe", "RecipeOptions", "RecipeResult", "calibrated", "count_ops",
    "find_tied_embedding", "fp16", "fp16_merged", "fp32", "help_text", "int4", "int4_mixed", "int8_dynamic",
    "int8_dynamic_merged", "int8_static", "load_for_nbits", "load_tensors", "mix_nbits", "needs_external_data",
    "parse_recipe", "quantize_nbits", "quantized_nbits", "recipe", "recipe_label", "remedy", "save", "searched",
    "tensor_array", "tie_embedding",
]
