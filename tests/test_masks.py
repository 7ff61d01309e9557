"""Torch reference masks against direct computations."""

import pytest
import torch

from workbench.backend import reference as masks


def test_row_mask_prunes_the_k_lowest_of_each_row():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 33, generator=g)
    counts = torch.tensor([0, 1, 5, 16, 32, 33, 3])
    mask = masks.row_mask(scores, counts)
    for r in range(7):
        expected = set(torch.argsort(scores[r])[: counts[r]].tolist())
        assert set(torch.nonzero(mask[r]).flatten().tolist()) == expected
    assert mask.sum(1).tolist() == counts.tolist()


def test_ties_are_broken_by_index():
    scores = torch.ones(2, 8)
    mask = masks.row_mask(scores, torch.tensor(3))
    assert mask[:, :3].all() and not mask[:, 3:].any()
    assert masks.matrix_mask(scores, 5).flatten().tolist() == [True] * 5 + [False] * 11
    assert masks.nm_mask(torch.ones(1, 8), 2, 4).tolist() == [[True, True, False, False] * 2]


def test_matrix_mask_uses_one_threshold():
    scores = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    mask = masks.matrix_mask(scores, 20)
    assert mask.sum() == 20
    assert scores[mask].max() < scores[~mask].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 2)])
def test_nm_mask_has_exactly_n_in_every_group(n, m):
    scores = torch.randn(6, 4 * m, generator=torch.Generator().manual_seed(2))
    mask = masks.nm_mask(scores, n, m)
    groups = mask.view(6, 4, m)
    assert (groups.sum(-1) == n).all()
    # the pruned ones are the lowest of their group
    s = scores.view(6, 4, m)
    assert (torch.where(groups, s, -torch.inf).amax(-1) <= torch.where(~groups, s, torch.inf).amin(-1)).all()


def test_pattern_parsing_and_errors():
    assert masks.parse_pattern("unstructured") == (0, 0)
    assert masks.parse_pattern("2:4") == (2, 4)
    for bad, match in [("4:4", "0 < N < M"), ("5:4", "0 < N < M"), ("two:four", "allowed"), ("2-4", "allowed")]:
        with pytest.raises(ValueError, match=match):
            masks.parse_pattern(bad)
    with pytest.raises(ValueError, match="not divisible"):
        masks.nm_mask(torch.ones(2, 6), 2, 4)


def test_prune_counts_floor():
    assert masks.prune_counts(10, 0.55).item() == 5
    assert masks.prune_counts(64, torch.tensor([0.0, 0.5, 0.999])).tolist() == [0, 32, 63]
