"""llm-compressor recipes from sparsity profiles: an allocation found here, applied by production tooling.

llm-compressor's one-shot pruning modifiers (``WandaPruningModifier``, ``SparseGPTModifier``) take
``sparsity`` as one number or as a list with one entry per module matched by ``targets``, in the
model's module order, and prune every linear inside each matched module at its entry. Targets that
name each prunable linear exactly therefore carry a per-layer profile one to one. Magnitude has no
one-shot modifier there (``MagnitudePruningModifier`` is a training-time schedule with one sparsity),
and a row-wise profile (BESA row) has no per-row field, so both are refused. So is a ``global`` profile
with Wanda: the papers' Global prunes each layer's lowest scores over the whole matrix (the profile's
``mask_group: matrix``), while ``WandaPruningModifier`` selects per output row, so the recipe would
silently prune a different mask. With SparseGPT the workbench ignores the comparison group too (SparseGPT
chooses its mask per column block), so the recipe carries that run as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import WorkbenchError
from .profile import SparsityProfile

MODIFIERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}


def run_settings(known: dict[str, Any], where: str, model: str | None = None, metric: str | None = None,
                 pattern: str | None = None) -> tuple[str, str, str]:
    """(model, metric, pattern) for a recipe: what is given, else what the record says, else the defaults
    (wanda, unstructured); the model has no default, its layers must be checked."""
    model = model or known.get("model")
    if model is None:
        raise WorkbenchError(f"profile={where!r} is a bare sparsity profile: give --model so its layers can be checked "
                              "against the model's prunable linears")
    return model, metric or known.get("metric") or "wanda", pattern or known.get("pattern") or "unstructured"


def build_recipe(profile: SparsityProfile, module_order: list[str], metric: str = "wanda",
                 pattern: str = "unstructured", quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe as a dict: one pruning modifier whose targets are the model's prunable linears in
    ``module_order`` (the model's module order) and whose ``sparsity`` list is the profile's ratios; with a run's
    ``quantization`` (wbits, group_size, symmetric), a GPTQ stage after it on the same linears."""
    if metric not in MODIFIERS:
        raise WorkbenchError(f"metric={metric!r} has no one-shot llm-compressor modifier with per-layer sparsity; "
                              f"allowed: {sorted(MODIFIERS)}")
    if profile.granularity == "row" or profile.rows:
        raise WorkbenchError("a row-wise profile (per-row sparsities) cannot be expressed in an llm-compressor recipe, "
                              "which takes one sparsity per module; export a layer-granularity profile")
    group = profile.params.get("mask_group")
    if group is not None and group != "row" and metric != "sparsegpt":
        raise WorkbenchError(f"allocation={profile.allocator!r} prunes with comparison group {group!r} (its "
                             f"threshold is "
                              f"the mask), but llm-compressor's {MODIFIERS[metric]} prunes per output row; allowed: "
                              "--metric sparsegpt, or a global_per_row profile (the same ratios, applied per row)")
    profile.check_matches(module_order)
    from .backend.reference import parse_pattern

    n, m = parse_pattern(pattern)
    modifier = {"sparsity": [float(profile.layers[name]) for name in module_order],
                "mask_structure": f"{n}:{m}", "targets": list(module_order), "ignore": []}
    recipe = {"sparsity_stage": {"sparsity_modifiers": {MODIFIERS[metric]: modifier}}}
    if quantization:
        recipe["quantization_stage"] = {"quantization_modifiers": {"GPTQModifier": gptq_modifier(
            module_order, quantization)}}
    return recipe


def gptq_modifier(module_order: list[str], quantization: dict[str, Any]) -> dict[str, Any]:
    """llm-compressor's GPTQModifier with one compressed-tensors config group: the prunable linears, integer
    weights at the run's bits, per channel or per group, symmetric or not (activations untouched: W{b}A16)."""
    group = quantization.get("group_size")
    weights = {"num_bits": int(quantization["wbits"]), "type": "int", "symmetric": bool(quantization["symmetric"]),
               "strategy": "group" if group else "channel"}
    if group:
        weights["group_size"] = int(group)
    return {"ignore": ["lm_head"], "config_groups": {"group_0": {"targets": list(module_order), "weights": weights}}}


def recipe_yaml(recipe: dict[str, Any], profile: SparsityProfile, model: str | None) -> str:
    """The recipe as YAML, headed by comments that say where the profile came from."""
    import yaml

    params = json.dumps(profile.params, sort_keys=True)
    head = (f"# llm-compressor recipe written by the Sparsity Allocation Workbench\n"
            f"# model: {model or 'unknown'}; allocator: {profile.allocator} {params}\n"
            f"# target sparsity {profile.target:.4f}, parameter-weighted mean {profile.mean():.4f}, "
            f"{len(profile.layers)} linears\n"
            "# apply: llmcompressor.oneshot(model=..., dataset=..., recipe=THIS_FILE)\n")
    return head + yaml.safe_dump(recipe, sort_keys=False, width=120)


def recipe_text(profile: SparsityProfile, model_name: str, metric: str = "wanda", pattern: str = "unstructured",
                trust_remote_code: bool = False, quantization: dict[str, Any] | None = None) -> str:
    """The YAML recipe of ``profile``, checked against the prunable linears of ``model_name``."""
    from .models import prunable_linears, skeleton

    names = list(prunable_linears(skeleton(model_name, trust_remote_code)))
    return recipe_yaml(build_recipe(profile, names, metric, pattern, quantization), profile, model_name)


def export_recipe(profile: SparsityProfile, model_name: str, metric: str, pattern: str, out: str | Path,
                  trust_remote_code: bool = False, quantization: dict[str, Any] | None = None) -> Path:
    """Write :func:`recipe_text` to ``out`` atomically (nothing is written when the profile is refused)."""
    from .results import write_text_atomic

    return write_text_atomic(out, recipe_text(profile, model_name, metric, pattern, trust_remote_code,
                                              quantization))
