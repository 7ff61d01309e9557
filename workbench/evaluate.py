"""Perplexity with the papers' WikiText-2 protocol (SparseGPT / Wanda / OWL / DSA / BESA).

Protocol: the evaluation split is joined (``"\\n\\n"`` for WikiText-2), tokenised once, cut into
``n = len // seqlen`` non-overlapping windows (the remainder is dropped). Each window's loss is the
mean next-token NLL over its ``seqlen - 1`` predicted tokens; the references multiply it by ``seqlen``
and divide the sum by ``n * seqlen``, i.e. ``ppl = exp(mean over windows of the window loss)``.
This is *not* lm-eval's ``word_perplexity``; tables must say which one they show.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .calibrate import block_outputs, head_logits
from .data import DEFAULT_DATASET, eval_tokens
from .errors import WorkbenchError
from .offload import Residency


@dataclass(frozen=True)
class Perplexity:
    """A perplexity value and the protocol facts needed to reproduce it."""

    ppl: float
    dataset: str
    split: str
    seqlen: int
    n_windows: int
    n_tokens: int
    text_sha256: str
    protocol: str = "paper (non-overlapping windows, remainder dropped)"

    def to_dict(self) -> dict:
        return asdict(self)


def _check_seqlen(seqlen) -> None:
    if not isinstance(seqlen, int) or isinstance(seqlen, bool) or seqlen < 2:
        raise WorkbenchError(f"seqlen={seqlen!r} must be an integer >= 2")


def split_windows(ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(n, seqlen) non-overlapping windows of a 1-D id tensor; the remainder is dropped."""
    _check_seqlen(seqlen)
    n = ids.numel() // seqlen
    if n == 0:
        raise WorkbenchError(f"seqlen={seqlen} is larger than the evaluation text ({ids.numel()} tokens); "
                              f"allowed: 2 <= seqlen <= {ids.numel()}")
    return ids[: n * seqlen].view(n, seqlen)


def mean_nll(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL (float64) of each window of ``batch`` (b, seqlen) given its logits (b, seqlen, vocab)."""
    logits = logits[:, :-1, :]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1),
                          reduction="none").view(batch.shape[0], -1)
    return nll.double().mean(dim=1).cpu()


@torch.inference_mode()
def window_nlls(model, ids: torch.Tensor, seqlen: int, batch_size: int = 1, progress: bool = True,
                residency: Residency | None = None) -> torch.Tensor:
    """Mean next-token NLL (float64) of each non-overlapping ``seqlen`` window of ``ids``. With an onloading
    or streaming ``residency`` (:mod:`workbench.offload`) the windows go through the model block-major."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise WorkbenchError(f"batch_size={batch_size!r} must be an integer >= 1")
    windows = split_windows(ids, seqlen)
    if residency is not None and residency.blockwise:
        return _window_nlls_blockwise(model, windows, residency, progress)
    device = next(model.parameters()).device
    out = torch.empty(windows.shape[0], dtype=torch.float64)
    starts = range(0, windows.shape[0], batch_size)
    for start in tqdm(starts, desc=f"perplexity (seqlen {seqlen})", disable=not progress, leave=False):
        batch = windows[start: start + batch_size].to(device)
        out[start: start + batch.shape[0]] = mean_nll(model(batch).logits, batch)
    return out


def _window_nlls_blockwise(model, windows: torch.Tensor, residency: Residency, progress: bool) -> torch.Tensor:
    """All windows through block l, then block l+1 (one block resident), then the head window by window."""
    hidden, _kwargs = block_outputs(model, windows, residency, progress)
    out = torch.empty(windows.shape[0], dtype=torch.float64)
    try:
        with residency.outside(model):
            device = residency.compute_device(model)
            for i, window in enumerate(windows):
                batch = window[None].to(device)
                out[i] = mean_nll(head_logits(model, batch, hidden[i]), batch)[0]
    finally:
        hidden.close()
    return out


def _log_probs(model, windows: torch.Tensor):
    """Next-token log-probabilities (float32, (seqlen-1, vocab)) of each window, one forward pass each."""
    device = next(model.parameters()).device
    for w in windows:
        yield log_probs_of(model(w[None].to(device)).logits)


def log_probs_of(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities (float32, (seqlen-1, vocab)) of one window's logits (1, seqlen, vocab)."""
    return torch.log_softmax(logits[0, :-1].float(), dim=-1)


def kl_of(logq: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over predicted tokens of KL(reference ‖ q) of one window (float64 scalar)."""
    return (reference.exp() * (reference - logq)).sum(dim=-1).double().mean()


def perplexity_of(nlls: torch.Tensor, seqlen: int) -> float:
    """The protocol's perplexity from per-window mean NLLs: exp(sum_w nll_w * seqlen / (n * seqlen))."""
    return math.exp(float((nlls * seqlen).sum() / (nlls.numel() * seqlen)))


@torch.inference_mode()
def window_log_probs(model, ids: torch.Tensor, seqlen: int) -> list[torch.Tensor]:
    """Next-token log-probabilities of each non-overlapping window: the reference a KL fitness compares a
    pruned model with (cached once per search)."""
    return list(_log_probs(model, split_windows(ids, seqlen)))


@torch.inference_mode()
def window_kl(model, ids: torch.Tensor, seqlen: int, reference: list[torch.Tensor]) -> torch.Tensor:
    """Mean over predicted tokens of KL(reference ‖ model) of each window (float64):
    Σ_v p(v)·(log p(v) − log q(v)), p the reference's next-token distribution, q the model's."""
    windows = split_windows(ids, seqlen)
    if len(reference) != windows.shape[0]:
        raise WorkbenchError(f"reference has {len(reference)} windows, ids give {windows.shape[0]}")
    out = torch.empty(windows.shape[0], dtype=torch.float64)
    for i, (logq, ref) in enumerate(zip(_log_probs(model, windows), reference, strict=True)):
        out[i] = kl_of(logq, ref)
    return out


def perplexity_from_ids(model, ids: torch.Tensor, seqlen: int, batch_size: int = 1, progress: bool = True,
                        residency: Residency | None = None) -> float:
    """The protocol's perplexity of a 1-D token tensor: exp(sum_w nll_w * seqlen / (n * seqlen))."""
    nlls = window_nlls(model, ids, seqlen, batch_size=batch_size, progress=progress, residency=residency)
    return perplexity_of(nlls, seqlen)


def perplexity(model, tokenizer, dataset: str = DEFAULT_DATASET, split: str = "test", seqlen: int | None = None,
               batch_size: int = 1, progress: bool = True, residency: Residency | None = None) -> Perplexity:
    """Perplexity of ``model`` on ``dataset``'s ``split`` with the paper protocol; seqlen defaults to
    2048 for paper datasets and 512 otherwise (never to the model's maximum context). ``residency``:
    onloaded or streamed blocks (:mod:`workbench.offload`), evaluated block-major with the same numbers."""
    from .data import default_calibration

    seqlen = default_calibration(dataset)["seqlen"] if seqlen is None else seqlen
    _check_seqlen(seqlen)
    ids, text = eval_tokens(tokenizer, dataset, split, seqlen=seqlen)
    ppl = perplexity_from_ids(model, ids, seqlen, batch_size=batch_size, progress=progress, residency=residency)
    n = ids.numel() // seqlen
    return Perplexity(ppl=ppl, dataset=text.dataset, split=text.split, seqlen=seqlen, n_windows=n,
                      n_tokens=n * seqlen, text_sha256=text.sha256)


__all__ = ["Perplexity", "perplexity", "perplexity_from_ids", "window_nlls"]
