"""Tokens/s of the perplexity evaluation and its ratio to a bare ``model(input_ids)`` forward loop.

Both run on the same windows of the embedded test split, interleaved over several rounds so that
machine noise hits both alike. Target: ratio >= 0.9 (the evaluation adds no real cost).

    .venv/bin/python benchmarks/eval_throughput.py [--model smollm2-135m] [--seqlen 512] [--windows 8]
"""

import argparse
import time

import torch

from workbench.data import eval_tokens
from workbench.evaluate import perplexity_from_ids
from workbench.models import load_model


@torch.inference_mode()
def bare_forward(model, windows: torch.Tensor) -> None:
    for w in windows:
        model(w[None])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model, tok = load_model(args.model)
    ids, _ = eval_tokens(tok, "embedded", "test")
    ids = ids[: args.windows * args.seqlen]
    windows = ids.view(args.windows, args.seqlen)
    bare_forward(model, windows[:1])  # warm-up
    t_bare = t_eval = 0.0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        bare_forward(model, windows)
        t1 = time.perf_counter()
        perplexity_from_ids(model, ids, args.seqlen, progress=False)
        t2 = time.perf_counter()
        t_bare += t1 - t0
        t_eval += t2 - t1
    tokens = args.rounds * ids.numel()
    print(f"model={args.model} seqlen={args.seqlen} windows={args.windows} rounds={args.rounds} "
          f"threads={torch.get_num_threads()}")
    print(f"bare forward loop : {tokens / t_bare:8.1f} tokens/s")
    print(f"perplexity eval   : {tokens / t_eval:8.1f} tokens/s")
    print(f"ratio eval/bare   : {t_bare / t_eval:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
