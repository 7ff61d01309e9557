"""Peak resident memory of a Wanda 50% sequential prune + perplexity: model in memory vs streamed from disk.

    .venv/bin/python benchmarks/peak_memory.py [--layers 32 --hidden 2048 --intermediate 5504]
        [--nsamples 4 --seqlen 256] [--dir DIR] [--device cpu]

A random LLaMA-architecture model (byte vocabulary, float32; 32 blocks as LLaMA-7B has, each 2048 wide with
LLaMA-7B's 2.7x MLP, 6.0 GiB by default) is written to ``--dir``
as safetensors shards once. Then three child processes run, one after another, each measured by the
kernel (the child's own ``VmHWM``: peak resident set since its exec, file-backed pages included):

1. baseline: the streamed command on a 2-layer, 256-wide model of the same kind (what every run pays:
   Python, torch, transformers, the data pipeline);
2. in memory: ``workbench prune --model DIR --metric wanda --sparsity 0.5 --eval``;
3. streamed: the same with ``--offload-dir`` (blocks read, pruned, written to a scratch checkpoint, freed).

Printed: the peaks, their ratio, the streamed peak as a share of the model's size (also above the baseline),
the activation buffers, the wall-time ratio, and whether both runs gave the same perplexity and sparsity.
On a CUDA device (``--device cuda``) the peak GPU memory of each run is printed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(directory: Path, layers: int, hidden: int, intermediate: int) -> None:
    """A seeded random LLaMA with the byte tokenizer, saved in 1 GB shards (skipped when already there)."""
    if (directory / "config.json").is_file():
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models import byte_tokenizer
    from workbench.results import atomic_directory

    config = LlamaConfig(vocab_size=258, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 128,
                         num_key_value_heads=hidden // 128, max_position_embeddings=4096, bos_token_id=256,
                         eos_token_id=257, pad_token_id=257, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, max_shard_size="1GB")
        byte_tokenizer().save_pretrained(tmp)


# Runs a command line of the CLI and writes the process's own peak resident set (VmHWM,
# counted from its exec; ru_maxrss would also count the parent's memory at fork) to the file in argv[1].
_CHILD = """
import sys
out, argv = sys.argv[1], sys.argv[2:]
try:
    import runpy
    sys.argv = ["workbench", *argv]
    runpy.run_module("workbench", run_name="__main__")
finally:
    status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    open(out, "w").write(str(int(status) * 1024))
"""


def run_child(argv: list[str], env: dict, scratch: Path) -> tuple[int, float, int]:
    """(peak RSS in bytes, wall seconds, exit code) of one CLI run."""
    peak = scratch / "peak.txt"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(peak), *argv], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return int(peak.read_text()), wall, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5504)
    ap.add_argument("--nsamples", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default=None, help="where the random model is written (default: the cache)")
    args = ap.parse_args()

    from workbench.models import cache_dir

    name = f"llama-random-{args.layers}x{args.hidden}x{args.intermediate}"
    model_dir = Path(args.dir) if args.dir else cache_dir() / "bench" / name
    build_model(model_dir, args.layers, args.hidden, args.intermediate)
    small_dir = model_dir.parent / "llama-random-2x256x512"  # the fixed overhead: same command, tiny model
    build_model(small_dir, 2, 256, 512)
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(dir=model_dir.parent) as tmp:
        tmp = Path(tmp)
        text = tmp / "text.txt"  # byte tokenizer: one token per character (+ BOS): nsamples full windows
        source = (ROOT / "README.md").read_text(encoding="utf-8").encode("ascii", "ignore").decode()
        text.write_text((source * 10)[: args.nsamples * args.seqlen + args.seqlen // 2])
        prune = ["prune", "--metric", "wanda",
                 "--sparsity", "0.5", "--calib-dataset", str(text), "--nsamples", str(args.nsamples),
                 "--seqlen", str(args.seqlen), "--eval", "--eval-dataset", str(text), "--eval-seqlen",
                 str(args.seqlen), "--device", args.device]
        base_rss, _, code0 = run_child([*prune, "--model", str(small_dir), "--offload-dir", str(tmp / "offload"),
                                        "--out", str(tmp / "small.json")], env, tmp)
        prune += ["--model", str(model_dir)]
        mem_rss, mem_wall, code1 = run_child([*prune, "--out", str(tmp / "memory.json")], env, tmp)
        str_rss, str_wall, code2 = run_child([*prune, "--offload-dir", str(tmp / "offload"), "--out",
                                              str(tmp / "stream.json")], env, tmp)
        if code0 or code1 or code2:
            raise SystemExit(f"a run failed (exit codes {code0}, {code1}, {code2})")
        records = [json.loads((tmp / f"{k}.json").read_text()) for k in ("memory", "stream")]
    gib = 1024 ** 3
    act = args.nsamples * args.seqlen * args.hidden * 4
    ppl = [r["metrics"]["perplexity"] for r in records]
    actual = [r["sparsity_report"]["actual"] for r in records]
    print(f"model: {name}, float32, {size / gib:.2f} GiB on disk ({model_dir}); Wanda 50% sequential, "
          f"{args.nsamples} x {args.seqlen} calibration, perplexity on {args.nsamples} windows of {args.seqlen}")
    print(f"activation buffer: {act / 2 ** 20:.1f} MiB per point of the model (inputs, outputs: 2 at a time)")
    print("| run | peak RSS GiB | peak / model | (peak - baseline) / model | wall s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| baseline (same command, 2-layer 256-wide model) | {base_rss / gib:.2f} | {base_rss / size:.3f} | - | - |")
    for label, rss, wall in (("in memory", mem_rss, mem_wall), ("streamed (--offload-dir)", str_rss, str_wall)):
        print(f"| {label} | {rss / gib:.2f} | {rss / size:.3f} | {(rss - base_rss) / size:.3f} | {wall:.1f} |")
    print(f"streamed / in-memory peak RSS: {str_rss / mem_rss:.3f}; wall time streamed / in memory: "
          f"{str_wall / mem_wall:.2f}")
    budget = 0.25 * size + 2 * act
    print(f"target: streamed peak <= 25% of the model + activations = {budget / gib:.2f} GiB: "
          f"{'met' if str_rss <= budget else 'not met'} (above the baseline: "
          f"{'met' if str_rss - base_rss <= budget else 'not met'})")
    gpu = [r.get("peak_gpu_memory_bytes") for r in records]
    if gpu[0] is not None:
        print(f"peak GPU memory: in memory {gpu[0] / gib:.2f} GiB, streamed {gpu[1] / gib:.2f} GiB "
              f"(ratio {gpu[1] / gpu[0]:.3f})")
    print(f"same perplexity: {ppl[0] == ppl[1]} ({ppl[0]:.6f} vs {ppl[1]:.6f}); same actual sparsity: "
          f"{actual[0] == actual[1]} ({actual[0]:.6f})")


if __name__ == "__main__":
    main()
