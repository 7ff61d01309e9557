"""Model size on disk of a pruned + quantized model, per bit setting (issue 37): the dense float32 checkpoint, the
sparse-bitmask one (float values of the kept weights), and compressed-tensors' pack-quantized one (dense packed
integers + scales + the pruning bitmask), each reloaded and checked bit for bit against the model in memory.
Magnitude pruning and round to nearest (no calibration): the sizes do not depend on which weights are kept.

    .venv/bin/python benchmarks/quant_size.py [--model smollm2-135m --sparsity 0.5 0.7]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from workbench.checkpoint import checkpoint_bytes, load_compressed, save_pruned
from workbench.models import load_model
from workbench.prune import prune

SETTINGS = [("W8", {"wbits": 8}), ("W4", {"wbits": 4}), ("W4 g64", {"wbits": 4, "group_size": 64}),
            ("W3", {"wbits": 3})]


def sizes(model_name: str, sparsity: float, root: Path) -> list[tuple[str, str, float, bool]]:
    """(setting, format, MiB on disk, reloads bit for bit) for the dense model and each bit setting."""
    out = []
    model, tok = load_model(model_name)
    dense = checkpoint_bytes(_saved(model, tok, None, root / "dense", "dense"))
    out.append(("dense float32", "dense", dense / 2**20, True))
    pruned, tok = load_model(model_name)
    profile = prune(pruned, tok, metric="magnitude", sparsity=sparsity, progress=False).profile
    path = _saved(pruned, tok, profile, root / "sparse", "sparse-bitmask")
    out.append((f"{sparsity:.0%} W16", "sparse-bitmask", checkpoint_bytes(path) / 2**20, _same(pruned, path)))
    for label, quant in SETTINGS:
        model, tok = load_model(model_name)
        result = prune(model, tok, metric="magnitude", sparsity=sparsity, progress=False, **quant)
        path = _saved(model, tok, result.profile, root / label.replace(" ", ""), "pack-quantized")
        out.append((f"{sparsity:.0%} {label}", "pack-quantized", checkpoint_bytes(path) / 2**20, _same(model, path)))
    return out


def _saved(model, tok, profile, path: Path, fmt: str) -> Path:
    if profile is None:
        model.save_pretrained(path, safe_serialization=True)
        return path
    return save_pruned(model, tok, profile, path, fmt)


def _same(model, path: Path) -> bool:
    back = load_compressed(path).state_dict()
    return all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    args = p.parse_args()
    print("| model | format | MiB on disk | x dense | reloads bit for bit |\n|---|---|---|---|---|")
    for sparsity in args.sparsity:
        with tempfile.TemporaryDirectory() as tmp:
            rows = sizes(args.model, sparsity, Path(tmp))
        for label, fmt, mib, same in rows:
            print(f"| {label} | {fmt} | {mib:.1f} | {mib / rows[0][2]:.3f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
