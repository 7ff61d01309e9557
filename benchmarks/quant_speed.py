"""What weight-only int8 / int4 buys on the CPU: a pruned model's linears in float32 against the same weights as
int8 (symmetric, per channel) and int4 (groups of 128 or the widest that divides) linears, as ratios to float32.

    .venv/bin/python benchmarks/quant_speed.py [--model smollm2-135m] [--sparsity 0.5] [--prefill 256]
        [--decode 64] [--threads 1]

Each configuration runs in its own process (its resident memory is its own): load, prune with magnitude, then
for float32 / int8 / int4: a ``--prefill``-token forward (median of 3) and greedy decoding of ``--decode`` tokens
at batch 1 with the KV cache. Printed: tokens/s and resident memory (VmRSS after ``malloc_trim``) as ratios to
float32, the bytes the linears occupy, and the largest logit difference to the float32 model (quantization
error, not a kernel error: ``tests/test_quantize.py`` checks the kernels against the rounded weights).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys

from sparse_speed import (  # the sparse benchmark's RSS reading and timing (benchmarks/ on the path)
    rss_mib,
    timed_passes,
)


def one(config: dict) -> dict:
    import torch

    from workbench.models import load_model, prunable_linears
    from workbench.prune import prune
    from workbench.quantize import QuantSpec
    from workbench.quantized_linear import int_linears

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model, tok = load_model(config["model"])
    for param in model.parameters():  # own memory, not views of the safetensors mmap
        param.data = param.data.clone()
    prune(model, tok, metric="magnitude", sparsity=config["sparsity"], progress=False)
    prompt = torch.randint(0, model.config.vocab_size, (1, config["prefill"]))
    with torch.no_grad():
        reference = model(prompt[:, :64]).logits
        linears = prunable_linears(model)
        nbytes = sum(lin.weight.numel() * 4 for lin in linears.values())
        if config["kind"] != "float32":
            width = min(lin.in_features for lin in linears.values())
            spec = QuantSpec(8, None, True) if config["kind"] == "int8" else \
                QuantSpec(4, next(g for g in (128, 64, 32) if all(lin.in_features % g == 0 for lin in linears.values())
                                  and g <= width), False)
            del linears
            int_linears(model, spec)
            nbytes = sum(b.numel() * b.element_size() for m in model.modules() if hasattr(m, "scales") or
                         hasattr(m, "scales_zeros") for b in m.buffers())
        else:
            del linears
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        rss = rss_mib()
        diff = float((model(prompt[:, :64]).logits - reference).abs().max())
        prefill_s, decode_s, out = timed_passes(model, tok, prompt, config["decode"])
    return {**config, "prefill_tok_s": config["prefill"] / prefill_s,
            "decode_tok_s": (out.shape[1] - 16) / decode_s, "rss_mib": rss, "linear_mib": nbytes / 2**20,
            "max_logit_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(json.loads(args.one))))
        return
    base = {"model": args.model, "sparsity": args.sparsity, "prefill": args.prefill, "decode": args.decode,
            "threads": args.threads}
    rows = []
    for kind in ("float32", "int8", "int4"):
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps({**base, "kind": kind})],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{kind} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(lines[0][7:]))
    dense = rows[0]
    print(f"{args.model}, magnitude {args.sparsity:.0%}, {args.threads} thread(s), prefill {args.prefill}, "
          f"decode {args.decode}")
    print("| linears | prefill tok/s | decode tok/s | decode x float32 | RSS MiB | RSS x float32 | linears MiB | "
          "max logit diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / dense['decode_tok_s']:.2f} | {r['rss_mib']:.0f} | "
              f"{r['rss_mib'] / dense['rss_mib']:.2f} | {r['linear_mib']:.1f} | {r['max_logit_diff']:.3f} |")


if __name__ == "__main__":
    main()
