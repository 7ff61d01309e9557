"""SparseGPT against a slow, obvious OBS oracle (explicit inverses of the remaining-column Hessian)."""

import pytest
import torch

from workbench.pruners.sparsegpt import sparsegpt_prune


def _problem(rows=16, cols=32, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g)  # correlated inputs
    w = torch.randn(rows, cols, generator=g)
    h = 2.0 / tokens * x.t() @ x
    return w, h, x


def _damped(h, percdamp=0.01):
    h = h.double().clone()
    h.diagonal().add_(percdamp * h.diagonal().mean())
    return h


def _obs_oracle(w, h, mask, percdamp=0.01):
    """Column by column with a fixed mask: zero the pruned entries of column i and spread the error over
    the columns not yet processed through (H_FF)⁻¹, F = {i, ..., C-1} (the OBS update)."""
    w = w.double().clone()
    hd = _damped(h, percdamp)
    cols = w.shape[1]
    for i in range(cols):
        inv = torch.linalg.inv(hd[i:, i:])
        err = torch.where(mask[:, i], w[:, i], torch.zeros_like(w[:, i]))
        w[:, i:] -= err[:, None] * (inv[0] / inv[0, 0])[None, :]
        w[mask[:, i], i] = 0.0
    return w


@pytest.mark.parametrize("blocksize", [8, 128])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_matches_the_obs_oracle(blocksize, sparsity):
    w, h, _ = _problem()
    new, mask = sparsegpt_prune(w, h, sparsity, blocksize=blocksize)
    expected = _obs_oracle(w, h, mask)
    assert torch.allclose(new.double(), expected, rtol=1e-4, atol=1e-4)
    assert (new[mask] == 0).all()


def test_single_block_mask_is_the_joint_obs_saliency_threshold():
    w, h, _ = _problem()
    _, mask = sparsegpt_prune(w, h, 0.5, blocksize=128)
    hd = _damped(h)
    diag_u2 = torch.tensor([torch.linalg.inv(hd[i:, i:])[0, 0].item() for i in range(32)])
    score = w.double() ** 2 / diag_u2[None, :]
    k = int(score.numel() * 0.5)
    expected = score <= torch.sort(score.flatten()).values[k]
    assert torch.equal(mask, expected)
    assert mask.sum(1).min() != mask.sum(1).max()  # chosen jointly: rows differ


def test_reconstruction_beats_plain_masking_and_wanda():
    w, h, x = _problem(rows=32, cols=64, tokens=512, seed=1)
    new, mask = sparsegpt_prune(w, h, 0.5)
    err = lambda w_hat: float(((x @ w.t() - x @ w_hat.t()) ** 2).sum())  # noqa: E731
    norm = torch.sqrt((x ** 2).sum(0))
    scores = w.abs() * norm
    wanda_mask = torch.zeros_like(mask)
    wanda_mask.scatter_(1, torch.argsort(scores, dim=1)[:, :32], True)
    assert err(new) < err(w.masked_fill(mask, 0)) and err(new) < err(w.masked_fill(wanda_mask, 0))


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.7])
def test_unstructured_sparsity_is_reached(s):
    w, h, _ = _problem(rows=16, cols=64)
    new, mask = sparsegpt_prune(w, h, s)
    assert float((new == 0).float().mean()) == pytest.approx(s, abs=1 / 64)
    if s == 0.0:
        assert not mask.any() and torch.equal(new, w)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm(n, m):
    w, h, _ = _problem(rows=8, cols=32)
    new, mask = sparsegpt_prune(w, h, prune_n=n, prune_m=m, blocksize=16)
    assert ((new == 0).view(8, -1, m).sum(-1) == n).all()
    assert torch.equal(new == 0, mask)
    assert torch.allclose(new.double(), _obs_oracle(w, h, mask), rtol=1e-4, atol=1e-4)


def test_dead_input_column_gives_no_nan():
    w, _, x = _problem()
    x[:, 5] = 0
    h = 2.0 / x.shape[0] * x.t() @ x
    new, _ = sparsegpt_prune(w, h, 0.5)
    assert torch.isfinite(new).all() and (new[:, 5] == 0).all()


def test_inputs_untouched_and_dtype_kept():
    w, h, _ = _problem()
    w16, h0 = w.to(torch.bfloat16), h.clone()
    w16_copy = w16.clone()
    new, _ = sparsegpt_prune(w16, h, 0.5)
    assert new.dtype == torch.bfloat16 and torch.equal(w16, w16_copy) and torch.equal(h, h0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), "sparsity=1.0"), (dict(sparsity=-0.1), "sparsity=-0.1"),
    (dict(prune_n=4, prune_m=4), "need 0 < N < M"), (dict(prune_n=2, prune_m=5), "not divisible"),
    (dict(blocksize=0), "blocksize=0"), (dict(percdamp=-1.0), "percdamp=-1.0"),
])
def test_bad_input(kwargs, match):
    w, h, _ = _problem()
    with pytest.raises(ValueError, match=match):
        sparsegpt_prune(w, h, **kwargs)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune(w, h[:-1, :-1], 0.5)
