"""Apply a workbench recipe with llm-compressor itself and compare the sparsity it reaches per linear.

llmcompressor does not install beside the workbench's pins (0.14.0.1 needs transformers<=5.17), so this
runs in its own environment, on a model directory saved by the workbench (``prune --save``):

    python3.11 -m venv /tmp/lcvenv && /tmp/lcvenv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
    python -m workbench prune --model tiny-llama --allocation owl --sparsity 0.6 --out rec.json --save ck
    python -m workbench export-recipe rec.json --out rec.yaml
    /tmp/lcvenv/bin/python scripts/check_recipe_llmcompressor.py ck rec.yaml

It parses the recipe with llmcompressor's ``Recipe``, runs ``oneshot`` on the dense weights of the
model (random calibration tokens: only the mask sizes are compared) and prints, per linear, the
sparsity asked for and the sparsity llm-compressor produced; exit status 1 on any difference > 1/in.
"""

from __future__ import annotations

import sys

import torch
import yaml
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.recipe import Recipe
from transformers import AutoModelForCausalLM


def main(model_dir: str, recipe_path: str) -> int:
    recipe = Recipe.create_instance(recipe_path)  # llmcompressor's own parser and modifier validation
    print("parsed:", [type(m).__name__ for m in recipe.modifiers])
    fields = next(iter(next(iter(yaml.safe_load(open(recipe_path)).values())).values()))
    (_name, modifier), = fields.items()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for module in model.modules():  # undo the workbench's pruning: llm-compressor prunes from dense-like weights
        if isinstance(module, torch.nn.Linear):
            module.weight.data[module.weight.data == 0] = 1e-3
    vocab = model.config.vocab_size
    data = Dataset.from_dict({"input_ids": torch.randint(0, vocab, (8, 64)).tolist(),
                              "attention_mask": torch.ones(8, 64, dtype=torch.long).tolist()})
    oneshot(model=model, dataset=data, recipe=recipe_path, num_calibration_samples=8, max_seq_length=64)
    modules = dict(model.named_modules())
    worst = 0.0
    for target, wanted in zip(modifier["targets"], modifier["sparsity"], strict=True):
        weight = modules[target].weight
        got = float((weight == 0).float().mean())
        worst = max(worst, abs(got - wanted) * weight.shape[1])
        print(f"{target:45s} asked {wanted:.4f} got {got:.4f}")
    print(f"largest difference: {worst:.2f} weights per row")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
