"""BESA with quantization in the loop (``quant_method='learned'``): the clipped grid against a slow per-group oracle,
the fake quantizer's forward and straight-through gradients, and on the tiny model that the joint learning ends on
its own grid, keeps pruned weights at exactly zero, learns the clipping and a different allocation."""

from __future__ import annotations

import pytest
import torch

from workbench.checkpoint import load_compressed, save_pruned
from workbench.cli import main
from workbench.models import load_model, prunable_linears
from workbench.prune import prune
from workbench.quantize import CLIP_INIT, QUANT_METHODS, QuantSpec, clipped_grid, fake_quantize, quantize_rtn
from workbench.spec import MethodSpec


def _oracle_grid(w: torch.Tensor, spec: QuantSpec, up: torch.Tensor, low: torch.Tensor):
    """One row and group at a time, in float64: the clipped range, its step and integer zero point."""
    maxq = 2**spec.wbits - 1
    width = spec.group_size or w.shape[1]
    scale = torch.empty(up.shape, dtype=torch.float64)
    zero = torch.empty(up.shape, dtype=torch.float64)
    for r in range(w.shape[0]):
        for g in range(up.shape[1]):
            part = w[r, g * width:(g + 1) * width].double()
            hi, lo = max(float(part.max()), 0.0), min(float(part.min()), 0.0)
            a, b = 1 / (1 + torch.exp(-up[r, g].double())), 1 / (1 + torch.exp(-low[r, g].double()))
            if spec.symmetric:
                hi = max(-lo, hi) * a
                lo = -hi if lo < 0 else 0.0
                scale[r, g] = max((hi - lo) / maxq, 1e-8)
                zero[r, g] = (maxq + 1) / 2
            else:
                hi, lo = hi * a, lo * b
                scale[r, g] = max((hi - lo) / maxq, 1e-8)
                zero[r, g] = torch.round(-lo / scale[r, g])
    return scale, zero


@pytest.mark.parametrize("spec", [QuantSpec(3, None, False), QuantSpec(4, 8, False), QuantSpec(2, 16, True),
                                  QuantSpec(8, 8, True)])
def test_clipped_grid_matches_a_per_group_oracle(spec):
    gen = torch.Generator().manual_seed(spec.wbits)
    w = torch.randn(6, 32, generator=gen) * torch.rand(6, 1, generator=gen) * 3
    w[0] = w[0].abs()          # a row without negatives: its zero point sits at the bottom
    w[1, :16] = 0.0            # an all-zero group
    groups = 32 // (spec.group_size or 32)
    up, low = torch.randn(6, groups, generator=gen) * 3, torch.randn(6, groups, generator=gen) * 3
    scale, zero = clipped_grid(w, spec, up, low)
    want_scale, want_zero = _oracle_grid(w, spec, up, low)
    torch.testing.assert_close(scale.double(), want_scale, rtol=1e-6, atol=1e-12)
    assert torch.equal(zero.double(), want_zero)


@pytest.mark.parametrize("spec", [QuantSpec(4, None, False), QuantSpec(3, 8, True), QuantSpec(2, 16, False)])
def test_unclipped_fake_quantization_is_round_to_nearest_and_keeps_zeros(spec):
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(5, 32, generator=gen) - 0.3
    w[torch.rand(5, 32, generator=gen) < 0.5] = 0.0
    groups = 32 // (spec.group_size or 32)
    full = torch.full((5, groups), 60.0)  # σ(60) is 1.0 in float32: no clipping
    out = fake_quantize(w, spec, full, full)
    torch.testing.assert_close(out, quantize_rtn(w, spec), rtol=0, atol=1e-6)
    assert not out[w == 0].any()
    clipped = fake_quantize(w, spec, torch.zeros(5, groups), torch.zeros(5, groups))  # σ(0): half the range
    assert not clipped[w == 0].any()
    maxq = 2**spec.wbits - 1  # half the range, give or take the zero point's rounding (a step or two)
    assert clipped.abs().max() <= w.abs().max() * 0.5 * (1 + 2 / maxq) < w.abs().max()


def test_fake_quantization_passes_gradients_straight_through_and_to_the_clipping():
    spec = QuantSpec(3, 8, False)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 16, generator=gen).requires_grad_(True)
    up = torch.full((4, 2), CLIP_INIT, requires_grad=True)
    low = torch.full((4, 2), CLIP_INIT, requires_grad=True)
    fake_quantize(w, spec, up, low).sum().backward()
    scale, zero = clipped_grid(w.detach(), spec, up.detach(), low.detach())
    q = torch.round(w.detach() / scale.repeat_interleave(8, 1)) + zero.repeat_interleave(8, 1)
    groups = w.detach().reshape(4, 2, 8)  # a group's largest and smallest weights also move its range
    extreme = ((groups == groups.amax(2, keepdim=True)) | (groups == groups.amin(2, keepdim=True))).reshape(4, 16)
    inside = (q >= 0) & (q <= 7)
    assert torch.equal(w.grad[inside & ~extreme], torch.ones(int((inside & ~extreme).sum())))  # round: identity
    assert (~inside).any() and (w.grad[~inside] != 1).all()  # clipped (σ(4) < 1): no identity, only the range's
    assert up.grad.abs().sum() > 0 and low.grad.abs().sum() > 0


def _besa(**quant):
    model, tok = load_model("tiny-llama")
    result = prune(model, tok, metric="wanda", sparsity=0.5, allocation="besa",
                   allocation_params={"progress": False}, progress=False, **quant)
    return model, tok, result


def test_besa_joint_ends_on_its_learned_grid_and_learns_a_different_allocation(tmp_path):
    plain, _, first = _besa()
    _, _, again = _besa()
    joint, tok, learned = _besa(wbits=2, group_size=16, quant_method="learned")
    assert first.profile.layers == again.profile.layers  # BESA alone is deterministic here
    diffs = [abs(learned.profile.layers[n] - first.profile.layers[n]) for n in first.profile.layers]
    assert max(diffs) > 0.01  # quantization in the loop moves the allocation
    assert abs(learned.profile.mean() - 0.5) < 0.01  # at the same target
    for name, linear in prunable_linears(joint).items():
        grid = linear.quant_grid
        assert torch.equal(grid.values(grid.codes(linear.weight)), linear.weight), name  # on its grid
        assert grid.zero.eq(grid.zero.round()).all()
        from compressed_tensors.utils import unpack_bitmasks

        kept = unpack_bitmasks(grid.kept_bits, list(linear.weight.shape))
        assert not linear.weight[~kept].any()
        assert abs(1 - float(kept.float().mean()) - learned.profile.layers[name]) < 1e-6
    clips = [b["clip"] for b in learned.profile.params["blocks"]]
    assert all(c is not None for c in clips)
    assert any(abs(c - torch.sigmoid(torch.tensor(CLIP_INIT)).item()) > 1e-3 for c in clips)  # clipping learned
    assert all(b["clip"] is None for b in first.profile.params["blocks"])
    assert learned.report["wbits"] == 2 and learned.report["bits_per_weight"] < 16
    out = save_pruned(joint, tok, learned.profile, tmp_path / "joint", "pack-quantized")
    back = load_compressed(out)
    for key, value in joint.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    del plain


def test_besa_then_gptq_quantizes_each_block_after_learning():
    rtn, _, _ = _besa(wbits=4, group_size=32, quant_method="rtn")
    model, _, result = _besa(wbits=4, group_size=32, quant_method="gptq")
    mine, theirs = prunable_linears(model), prunable_linears(rtn)
    assert any(not torch.equal(mine[n].weight, theirs[n].weight) for n in mine)  # GPTQ, not rounding
    for name, linear in prunable_linears(model).items():
        grid = linear.quant_grid
        assert torch.equal(grid.values(grid.codes(linear.weight)), linear.weight), name
        assert grid.scale.shape == (linear.out_features, linear.in_features // 32)
    assert all(b["clip"] is None for b in result.profile.params["blocks"])


def test_learned_quantization_is_refused_without_a_learner(tmp_path, capsys):
    code = main(["prune", "--model", "tiny-llama", "--metric", "wanda", "--wbits", "4", "--quant-method", "learned",
                 "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code != 0 and "quant_method='learned'" in err and "allowed for it" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p.json").exists()


def test_the_quant_methods_constant_is_the_spec_s():
    from typing import get_args

    assert get_args(MethodSpec.model_fields["quant_method"].annotation) == QUANT_METHODS
