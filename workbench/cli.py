"""Command line: ``python -m workbench <command>`` (also the ``workbench`` console script)."""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
import time
from pathlib import Path

from . import data as data_mod


def _default_out(kind: str, *parts: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p)[-40:] for p in parts)
    return Path("runs") / f"{kind}-{slug}-{stamp}.json"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="embedded model (smollm2-135m), tiny test model, Hugging Face id or local directory")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off)")


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity of a (dense) model with the paper protocol; prints it and writes a result record."""
    from .evaluate import perplexity
    from .models import load_model, model_hash
    from .results import make_record, write_json_atomic

    data_mod.check_dataset(args.dataset)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device,
                                  trust_remote_code=args.trust_remote_code)
    result = perplexity(model, tokenizer, dataset=args.dataset, split=args.split, seqlen=args.seqlen,
                        batch_size=args.batch_size)
    wall = time.perf_counter() - start
    record = make_record(
        "eval",
        model={"id": args.model, "weight_sha256": model_hash(model), "dtype": args.dtype, "device": args.device},
        method={"name": "dense"},
        data={"eval": result.to_dict()},
        metrics={"perplexity": result.ppl},
        wall_time_s=wall,
    )
    out = Path(args.out) if args.out else _default_out("eval", args.model, Path(args.dataset).name)
    write_json_atomic(out, record)
    print(f"{args.model} dense perplexity on {args.dataset}/{args.split} (paper protocol, seqlen "
          f"{result.seqlen}, {result.n_windows} windows): {result.ppl:.3f}")
    print(f"result record: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: SmolLM2-135M's dense perplexity on the embedded test split."""
    ns = argparse.Namespace(model="smollm2-135m", dtype="float32", device="cpu", trust_remote_code=False,
                            dataset="embedded", split="test", seqlen=args.seqlen, batch_size=1,
                            out=args.out)
    return cmd_eval(ns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Sparsity Allocation Workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="perplexity with the papers' protocol; writes a JSON result record")
    _add_model_args(p)
    p.add_argument("--dataset", default="embedded",
                   help=f"one of {list(data_mod.DATASETS)} or a path to a local UTF-8 text file")
    p.add_argument("--split", default="test", choices=data_mod.SPLITS)
    p.add_argument("--seqlen", type=int, default=None, help="window length (default 512 embedded, 2048 paper)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", default=None, help="result record path (default runs/eval-...json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the main job on the embedded default")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
