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


def _obs_oracle(w, h, mask=None, percdamp=0.01, nm=(0, 0)):
    """Column by column with a fixed mask: zero the pruned entries of column i and spread the error over
    the columns not yet processed through (H_FF)⁻¹, F = {i, ..., C-1} (the OBS update).
    With ``nm=(N, M)`` and no mask, the mask is chosen here: at the first column of each group of M, per row the
    N lowest OBS saliencies w_j² / [(H_FF)⁻¹]_jj, F = {j, ..., C-1}, on the weights updated so far."""
    w = w.double().clone()
    hd = _damped(h, percdamp)
    cols = w.shape[1]
    n, m = nm
    if mask is None:
        mask = torch.zeros(w.shape, dtype=torch.bool)
    for i in range(cols):
        inv = torch.linalg.inv(hd[i:, i:])
        if n and i % m == 0:
            u2 = torch.tensor([torch.linalg.inv(hd[j:, j:])[0, 0].item() for j in range(i, i + m)], dtype=w.dtype)
            score = w[:, i:i + m] ** 2 / u2[None, :]
            mask[:, i:i + m] = False
            mask[:, i:i + m].scatter_(1, torch.argsort(score, dim=1)[:, :n], True)
        err = torch.where(mask[:, i], w[:, i], torch.zeros_like(w[:, i]))
        w[:, i:] -= err[:, None] * (inv[0] / inv[0, 0])[None, :]
        w[mask[:, i], i] = 0.0
    return (w, mask) if n else w


@pytest.mark.parametrize("blocksize", [8, 12, 128])  # 12: the last block is partial
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
    expected, expected_mask = _obs_oracle(w, h, nm=(n, m))  # the oracle picks its own N:M mask
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(new.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("blocksize", [1, 3, 6, 10])
def test_nm_groups_never_straddle_blocks(blocksize):
    """With N:M the mask is chosen per group on the already-updated weights, so blocksize must not matter."""
    w, h, _ = _problem(rows=8, cols=32)
    ref, ref_mask = sparsegpt_prune(w, h, prune_n=2, prune_m=4, blocksize=128)
    new, mask = sparsegpt_prune(w, h, prune_n=2, prune_m=4, blocksize=blocksize)
    assert torch.equal(mask, ref_mask) and ((new == 0).view(8, -1, 4).sum(-1) == 2).all()
    assert torch.allclose(new, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("percdamp", [0.01, 0.0])  # without damping only the H_ii = 1 fix keeps H invertible
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_dead_input_column_gives_no_nan(percdamp, sparsity):
    w, _, x = _problem()
    x[:, 5] = 0
    h = 2.0 / x.shape[0] * x.t() @ x
    new, mask = sparsegpt_prune(w, h, sparsity, percdamp=percdamp)
    assert torch.isfinite(new).all() and (new[:, 5] == 0).all()
    if sparsity:
        assert mask[:, 5].all()  # saliency 0: always below the threshold
    # the reference's fix: H_55 = 1 and W[:, 5] = 0 before anything else, so damping sees the 1
    fixed_w, fixed_h = w.clone(), h.clone()
    fixed_w[:, 5], fixed_h[5, 5] = 0.0, 1.0
    assert torch.allclose(new.double(), _obs_oracle(fixed_w, fixed_h, mask, percdamp), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inputs_untouched_and_dtype_kept(dtype):
    w, h, _ = _problem()
    w = w.to(dtype)
    w0, h0 = w.clone(), h.clone()
    new, mask = sparsegpt_prune(w, h, 0.5)
    assert new.dtype == dtype and new.device == w.device and mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(w, w0) and torch.equal(h, h0)
    assert (new[mask] == 0).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), r"sparsity=1.0 must be in \[0, 1\)"), (dict(sparsity=-0.1), r"sparsity=-0.1 must be in"),
    (dict(prune_n=4, prune_m=4), "pattern 4:4: N:M needs 0 < N < M"),
    (dict(prune_n=5, prune_m=4), "pattern 5:4: N:M needs 0 < N < M"),
    (dict(prune_n=2, prune_m=0), "pattern 2:0: N:M needs 0 < N < M"),
    (dict(prune_n=2, prune_m=5), r"pattern 2:5: in_features \(32\) is not divisible by M=5"),
    (dict(blocksize=0), "blocksize=0 must be >= 1"), (dict(percdamp=-1.0), "percdamp=-1.0 must be >= 0"),
])
def test_bad_input(kwargs, match):
    w, h, _ = _problem()
    with pytest.raises(ValueError, match=match):
        sparsegpt_prune(w, h, **kwargs)


def test_bad_shapes_and_values():
    w, h, _ = _problem()
    with pytest.raises(ValueError, match=r"hessian must have shape \(32, 32\)"):
        sparsegpt_prune(w, h[:-1, :-1], 0.5)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        sparsegpt_prune(w[0], h, 0.5)
    with pytest.raises(ValueError, match="floating point"):
        sparsegpt_prune(w.to(torch.int32), h, 0.5)
    with pytest.raises(ValueError, match=r"^hessian has non-finite entries \(NaN or inf\)$"):
        sparsegpt_prune(w, h.index_fill(0, torch.tensor([3]), float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"percdamp=0.*increase percdamp or check the calibration statistics$"):
        sparsegpt_prune(w, torch.outer(h[0], h[0]) - torch.eye(32), 0.5, percdamp=0)


def _inverses(h, percdamp=0.01):
    """(H_FF)⁻¹ for F = {i, ..., C-1}, every i (explicit inverses of the damped Hessian's trailing blocks)."""
    hd = _damped(h, percdamp)
    return [torch.linalg.inv(hd[i:, i:]) for i in range(hd.shape[0])]


def _obs_oracle_choosing_masks(w, invs, sparsity, blocksize):
    """The whole algorithm with explicit inverses: at the start of each block of ``blocksize`` columns, on the
    weights updated so far, prune jointly over the block the entries with the lowest OBS saliency
    w_j² / [(H_FF)⁻¹]_00², F = {j, ..., C-1} (the reference's threshold: the k-th smallest, k = int(n·s), and
    every score <= it); then the column-by-column OBS update of the oracle above."""
    w = w.double().clone()
    cols = w.shape[1]
    mask = torch.zeros(w.shape, dtype=torch.bool)
    u = torch.tensor([invs[j][0, 0].item() ** 0.5 for j in range(cols)], dtype=w.dtype)
    for i in range(cols):
        if i % blocksize == 0:
            end = min(i + blocksize, cols)
            score = w[:, i:end] ** 2 / u[None, i:end] ** 2
            threshold = torch.sort(score.flatten()).values[int(score.numel() * sparsity)]
            mask[:, i:end] = score <= threshold
        inv = invs[i]
        err = torch.where(mask[:, i], w[:, i], torch.zeros_like(w[:, i]))
        w[:, i:] -= err[:, None] * (inv[0] / inv[0, 0])[None, :]
        w[mask[:, i], i] = 0.0
    return w, mask


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_wider_than_one_block_matches_an_oracle_that_chooses_its_own_masks(sparsity):
    """300 columns = blocks of 128, 128 and 44: later blocks' masks are chosen on weights the earlier
    blocks' updates changed, which a single-block layer never exercises."""
    w, h, _ = _problem(rows=12, cols=300, tokens=600, seed=3)
    new, mask = sparsegpt_prune(w, h, sparsity, blocksize=128)
    invs = _inverses(h)
    expected, expected_mask = _obs_oracle_choosing_masks(w, invs, sparsity, 128)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(new.double(), expected, rtol=1e-3, atol=1e-3)
    # and the mask of block 2 is not what it would be on the original weights (the update matters here)
    u_first = _obs_oracle_choosing_masks(w, invs, sparsity, 300)[1]
    assert not torch.equal(mask[:, 128:256], u_first[:, 128:256])


def test_layer_stats_hessian_is_the_references_two_over_n_windows():
    """The reference accumulates H with inputs scaled by sqrt(2 / nsamples): H = 2/N · Σ x xᵀ, N windows."""
    from workbench.units import LayerStats

    _, _, x = _problem()
    xtx = x.t() @ x
    assert torch.allclose(LayerStats(n_windows=4, xtx=xtx).hessian(), xtx / 2)
    assert torch.allclose(LayerStats(n_windows=1, xtx=xtx).hessian(), 2 * xtx)
    assert torch.allclose(LayerStats(n_windows=0, xtx=xtx).hessian(), 2 * xtx)  # no windows: no division by 0
    with pytest.raises(ValueError, match=r"^these statistics have no xtx \(calibrate with statistics including "
                                         r"'xtx'\)$"):
        LayerStats(n_windows=4).hessian()
    with pytest.raises(ValueError, match=r"^these statistics have no sq_norm \(calibrate with statistics including "
                                         r"'sq_norm'\)$"):
        LayerStats(n_windows=4).act_norm()
