"""Checkpoint size on disk, dense vs compressed, and a bit-exact round trip with the same perplexity.

    .venv/bin/python benchmarks/checkpoint_size.py [--model smollm2-135m] [--levels 0.5,0.7,2:4] [--ppl-seqlen 512]

For each level the model is pruned with magnitude (the masks' sizes, not which weights, set the size),
saved with ``--format dense`` and ``--format compressed``, and the compressed directory is loaded back:
every tensor must be bit-identical, and the test-split perplexity of the reloaded model must equal the
pruned model's. Printed: sizes of the weight files in MiB and compressed / dense.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--levels", default="0.5,0.7,2:4")
    ap.add_argument("--ppl-seqlen", type=int, default=512)
    args = ap.parse_args()

    import torch

    from workbench.checkpoint import checkpoint_bytes, save_pruned
    from workbench.evaluate import perplexity
    from workbench.models import load_model
    from workbench.prune import prune

    print(f"{args.model}, magnitude-pruned; weight files on disk (MiB); perplexity: embedded test split, "
          f"seqlen {args.ppl_seqlen}")
    print("| sparsity | format | dense MiB | compressed MiB | compressed / dense | bit-identical | ppl pruned | "
          "ppl reloaded |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels.split(","):
            pattern = level if ":" in level else "unstructured"
            model, tok = load_model(args.model)
            result = prune(model, tok, metric="magnitude", sparsity=0.5 if ":" in level else float(level),
                           pattern=pattern, progress=False)
            dense = save_pruned(model, tok, result.profile, Path(tmp) / f"d{level}")
            packed = save_pruned(model, tok, result.profile, Path(tmp) / f"c{level}", "compressed", pattern)
            again, _ = load_model(str(packed))
            a, b = model.state_dict(), again.state_dict()
            same = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
            ppl = perplexity(model, tok, seqlen=args.ppl_seqlen, progress=False).ppl
            ppl_again = perplexity(again, tok, seqlen=args.ppl_seqlen, progress=False).ppl
            layout = "sparse-24-bitmask" if pattern == "2:4" else "sparse-bitmask"
            d, c = checkpoint_bytes(dense) / 2**20, checkpoint_bytes(packed) / 2**20
            print(f"| {level} | {layout} | {d:.1f} | {c:.1f} | {c / d:.2f} | {same} | {ppl:.4f} | {ppl_again:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
