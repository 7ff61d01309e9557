"""What sparsity buys on the CPU: dense linears vs CSR linears on a pruned model, as ratios to dense.

    .venv/bin/python benchmarks/sparse_speed.py [--model smollm2-135m] [--sparsities 0.5,0.6,0.7,0.8,2:4]
        [--backends torch-csr,scipy-csr] [--prefill 512] [--decode 128] [--threads 2]

Each configuration runs in its own process (so resident memory is its own): load the model, prune it
with magnitude (the masks' sizes, not which weights, set the cost), then for the dense linears and for
each sparse backend: a ``--prefill``-token forward pass (median of 3) and greedy decoding of ``--decode``
tokens at batch 1 with the KV cache. Printed: tokens/s as ratios to the dense linears on the same
pruned weights (measured just before: drift during the run cancels), resident memory (VmRSS after
loading into memory of its own, pruning, converting and ``malloc_trim``) as a ratio to the dense
model, the bytes the linears occupy, and the largest logit difference between sparse and dense
linears on the same pruned weights.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time


def rss_mib() -> float:
    """Resident memory of this process (VmRSS), MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def timed_passes(model, tok, prompt, decode: int):
    """(median seconds of 3 forwards over ``prompt`` without cache, seconds of greedy decoding of ``decode`` tokens
    from its first 16 with the KV cache, the generated ids): what both CPU speed benchmarks time."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model(prompt, use_cache=False)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    out = model.generate(prompt[:, :16], max_new_tokens=decode, min_new_tokens=decode, do_sample=False,
                         use_cache=True, pad_token_id=tok.eos_token_id)
    return statistics.median(times), time.perf_counter() - start, out


def one(config: dict) -> dict:
    """Measure one configuration (dense, or one sparsity with one backend) in this process."""
    import torch

    from workbench.models import load_model, prunable_linears
    from workbench.prune import prune
    from workbench.sparse_backend import sparsify_linears

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model, tok = load_model(config["model"])
    for param in model.parameters():  # own memory, not views of the safetensors mmap: freed weights leave RSS
        param.data = param.data.clone()
    level = config["sparsity"]
    if level != "dense":
        pattern = level if ":" in level else "unstructured"
        sparsity = 0.5 if ":" in level else float(level)
        prune(model, tok, metric="magnitude", sparsity=sparsity, pattern=pattern, progress=False)
    linears = prunable_linears(model)
    n_linears = len(linears)
    linear_bytes = sum(lin.weight.numel() * lin.weight.element_size() for lin in linears.values())
    del linears  # no reference may keep the dense weights alive once they are converted
    prompt = torch.randint(0, model.config.vocab_size, (1, config["prefill"]))
    with torch.no_grad():
        reference = model(prompt[:, :64]).logits
        if config["backend"] != "dense":
            sparse = sparsify_linears(model, config["backend"])
            linear_bytes = sum(m.nbytes() for m in model.modules() if hasattr(m, "nbytes"))
            assert sparse == n_linears
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS is what is alive
        rss = rss_mib()
        diff = float((model(prompt[:, :64]).logits - reference).abs().max())
        prefill_s, decode_s, out = timed_passes(model, tok, prompt, config["decode"])
    assert out.shape[1] == 16 + config["decode"]
    return {**config, "prefill_tok_s": config["prefill"] / prefill_s, "decode_tok_s": config["decode"] / decode_s,
            "rss_mib": rss, "linear_mib": linear_bytes / 2**20, "max_logit_diff": diff,
            "tokens": out[0, 16:].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,0.8,2:4")
    ap.add_argument("--backends", default="torch-csr,scipy-csr")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration, as JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(json.loads(args.one))))
        return
    base = {"model": args.model, "prefill": args.prefill, "decode": args.decode, "threads": args.threads}
    configs = [{**base, "sparsity": "dense", "backend": "dense"}]
    for level in args.sparsities.split(","):
        configs += [{**base, "sparsity": level, "backend": b} for b in ["dense", *args.backends.split(",")]]
    rows = []
    for config in configs:
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"configuration {config} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(lines[0][7:]))
        print(f"measured {config['sparsity']:>5} {config['backend']:9}", file=sys.stderr, flush=True)
    _print(rows, args)


def _print(rows: list[dict], args: argparse.Namespace) -> None:
    """Speed as ratios to the dense linears on the same pruned weights (measured just before, in the same
    run); memory as a ratio to the dense model."""
    dense = rows[0]
    same_weights = {r["sparsity"]: r for r in rows if r["backend"] == "dense"}
    print(f"{args.model}, magnitude-pruned, {args.threads} threads; prefill {args.prefill} tokens, greedy decode "
          f"{args.decode} tokens at batch 1; speed x = sparse / dense linears on the same weights; "
          "memory x = / dense model")
    print("| sparsity | linears | prefill tok/s | x | decode tok/s | x | RSS MiB | x | linears MiB | "
          "same greedy tokens | max logit diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ref = same_weights[r["sparsity"]]
        same = sum(a == b for a, b in zip(r["tokens"], ref["tokens"], strict=True)) / len(ref["tokens"])
        print(f"| {r['sparsity']} | {r['backend']} | {r['prefill_tok_s']:.0f} | "
              f"{r['prefill_tok_s'] / ref['prefill_tok_s']:.2f} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f} | {r['rss_mib']:.0f} | "
              f"{r['rss_mib'] / dense['rss_mib']:.2f} | {r['linear_mib']:.0f} | {same:.2f} | "
              f"{r['max_logit_diff']:.1e} |")


if __name__ == "__main__":
    main()
