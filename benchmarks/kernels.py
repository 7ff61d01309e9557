"""Achieved memory bandwidth of each scores-and-masks kernel, as a ratio to the device's copy bandwidth.

On a GPU: every kernel of workbench.kernels runs on LLaMA-7B-sized layers (4096 x 4096 and 4096 x 11008);
its time (CUDA events, median of repeats) turns the bytes it must move into GB/s, printed beside the
bandwidth of a device-to-device copy measured in the same run (read + write) and their ratio.
Without a GPU: the CPU (torch reference) timings of the same operations on a smaller layer, and the
bytes-moved-per-weight figure of each kernel (the bound a GPU run is judged against).

    .venv/bin/python benchmarks/kernels.py
"""

import statistics
import time

import torch

from workbench.backend import kernels

# Bytes each kernel must move per weight (per activation element for sq_norm), float32 scores.
BYTES_PER_WEIGHT = {
    "accumulate_sq_norm": 4.0,        # read x once; one atomic per feature and chunk
    "wanda_scores": 8.0,              # read w, write s (norm is per column, cached)
    "row_select": 5.0,                # read s once (rows <= 8192 cached in shared memory), write a byte mask
    "nm_mask": 5.0,                   # read s, write a byte mask
    "score_sum_and_count": 8.0,       # two reduction passes over s (sum, then count above M * mean)
    "besa_keep_prob": 8.0,            # read int32 ranks, write float32 probabilities
    "apply_mask (fp16)": 5.0,         # read the byte mask, read and write 2-byte weights
}


def _time(fn, device: str, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ops(rows: int, cols: int, device: str):
    g = torch.Generator().manual_seed(0)
    s = torch.rand(rows, cols, generator=g).to(device)
    w16 = torch.randn(rows, cols, generator=g).to(device, torch.float16)
    x = torch.randn(8192, cols, generator=g).to(device)
    out = torch.zeros(cols, device=device)
    counts = torch.full((rows,), cols // 2, device=device)
    ranks = torch.argsort(torch.argsort(s, dim=1), dim=1).to(torch.int32)
    cands = torch.linspace(1.0, 0.0, 101)
    probs = torch.softmax(torch.randn(rows, 101, generator=g), -1).to(device)
    mask = s < 0.5
    norm = torch.rand(cols, device=device)
    return {
        "accumulate_sq_norm": (lambda: kernels.accumulate_sq_norm(x, out), x.numel()),
        "wanda_scores": (lambda: kernels.wanda_scores(s, norm), s.numel()),
        "row_select": (lambda: kernels.row_mask(s, counts), s.numel()),
        "nm_mask": (lambda: kernels.nm_mask(s, 2, 4), s.numel()),
        "score_sum_and_count": (lambda: kernels.score_sum_and_count(s, 0.9), s.numel()),
        "besa_keep_prob": (lambda: kernels.besa_keep_prob(ranks, probs, cands), s.numel()),
        "apply_mask (fp16)": (lambda: kernels.apply_mask(w16, mask), s.numel()),
    }


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        big = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
        copy_s = _time(lambda: big.clone(), device)
        copy_gbs = 2 * big.numel() / copy_s / 1e9
        print(f"device: {torch.cuda.get_device_name()}; device-to-device copy {copy_gbs:.0f} GB/s (read + write)")
        shapes = [(4096, 4096), (4096, 11008)]
    else:
        print("device: CPU (no GPU): torch reference timings; bytes/weight is the bound for a GPU run")
        shapes = [(576, 1536)]
    for rows, cols in shapes:
        print(f"\nlayer {rows} x {cols}")
        for name, (fn, elements) in _ops(rows, cols, device).items():
            t = _time(fn, device, repeats=10 if device == "cuda" else 3)
            moved = BYTES_PER_WEIGHT[name] * elements
            line = (f"  {name:22s} {t * 1e3:9.3f} ms  {BYTES_PER_WEIGHT[name]:4.1f} B/weight  "
                    f"{moved / t / 1e9:8.1f} GB/s")
            if device == "cuda":
                line += f"  ratio to copy {moved / t / 1e9 / copy_gbs:.2f}"
            print(line)


if __name__ == "__main__":
    main()
