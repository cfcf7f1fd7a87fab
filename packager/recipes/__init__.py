"""Quantization recipes: each reads an fp32 ONNX model and writes the model to ship, with the target's settings
(`RecipeOptions`), and returns what it did, for the manifest. The registry (registry.py, exported here) names
them and says what each needs, without loading onnx; the code is in common.py (options, result, saving),
dense.py (fp32, fp16, int8) and nbits.py (int4, int4-mixed): import those names from there."""

from packager.recipes.registry import (
    RECIPES,
    Recipe,
    calibrated,
    help_text,
    parse_recipe,
    recipe,
    recipe_label,
    remedy,
    searched,
)

__all__ = ["RECIPES", "Recipe", "calibrated", "help_text", "parse_recipe", "recipe", "recipe_label", "remedy",
           "searched"]
