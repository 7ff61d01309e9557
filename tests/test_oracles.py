"""Independent oracles for what prune() does with the statistics it gathers: computed here with plain
forward hooks on a full model forward and obvious torch code, never with the workbench's capture loop."""

import pytest
import torch
from forward_oracle import full_forward_sq_norms

from workbench.calibrate import calibrate
from workbench.data import calibration_samples
from workbench.models import load_model, prunable_linears
from workbench.prune import prune


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_owl_ratios_inside_prune_come_from_the_dense_models_wanda_scores(metric):
    """Sequential pruning changes the activations later blocks see; OWL's outlier ratios must still be
    those of the dense model's Wanda scores |W|·||X|| (the paper computes them before pruning)."""
    model, tok = load_model("tiny-llama")
    calib = calibration_samples(tok, "embedded", 4, 64)
    weights = {n: lin.weight.detach().double().clone() for n, lin in prunable_linears(model).items()}
    norms = full_forward_sq_norms(model, calib.input_ids)
    lam, m, target = 0.05, 3.0, 0.5
    result = prune(model, tok, metric=metric, allocation="owl", sparsity=target, calibration=calib,
                   mode="sequential", allocation_params={"lam": lam, "M": m}, progress=False)

    blocks: dict[int, list[str]] = {}
    for name in weights:
        blocks.setdefault(int(name.split(".")[2]), []).append(name)
    lod, sizes = [], []
    for names in blocks.values():
        scores = torch.cat([(weights[n].abs() * norms[n].sqrt()[None, :]).flatten() for n in names])
        lod.append(100.0 * float((scores > m * scores.mean()).sum()) / scores.numel())
        sizes.append(scores.numel())
    assert result.profile.params["lod"] == pytest.approx(lod, abs=1e-9)
    lo, hi = min(lod), max(lod)
    assert hi > lo, "the oracle needs blocks with different outlier ratios"
    norm = [(v - lo) / (hi - lo) for v in lod]
    mean = sum(s * v for s, v in zip(sizes, norm, strict=True)) / sum(sizes)
    expected = [target - 2 * lam * (v - mean) for v in norm]  # no clipping at this target and λ
    for block, names in blocks.items():
        for name in names:
            assert result.profile.layers[name] == pytest.approx(expected[block], abs=1e-9)


def test_magnitude_compares_weights_across_the_whole_matrix():
    """Magnitude pruning's group is the matrix: the int(numel·s) smallest |W| of each linear, whatever row."""
    model, tok = load_model("tiny-llama")
    before = {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}
    prune(model, tok, metric="magnitude", allocation="uniform", sparsity=0.6, progress=False)
    for name, lin in prunable_linears(model).items():
        w0 = before[name].abs().flatten()
        pruned = (lin.weight == 0).flatten()
        k = int(w0.numel() * 0.6)
        assert int(pruned.sum()) == k
        assert w0[pruned].max() <= w0[~pruned].min()
        rows = (lin.weight == 0).sum(1)
        assert rows.max() != rows.min(), "a row-wise group would prune every row equally"


def test_capture_loop_statistics_equal_full_forward_hooks(tiny, calib):
    """sq_norm, n_windows, the Wanda norm ||X_j|| (mean over windows of Σ x_j²) and SparseGPT's Hessian
    2·XᵀX / n_windows, checked against plain hooks on one full forward per window."""
    model, _ = tiny
    sums = full_forward_sq_norms(model, calib.input_ids)
    xtx, handles = {}, []
    for name, lin in prunable_linears(model).items():
        def hook(_m, args, _out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            xtx[name] = xtx.get(name, 0) + x.t() @ x
        handles.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        for row in calib.input_ids:
            model(row[None])
    for h in handles:
        h.remove()
    n = calib.input_ids.shape[0]
    assert n > 1, "the oracle needs several windows to see the per-window mean"
    stats = calibrate(model, calib.input_ids, "dense", ("sq_norm", "xtx"), progress=False)
    assert set(stats) == set(sums)
    for name, st in stats.items():
        assert st.n_windows == n, name
        assert torch.allclose(st.sq_norm.double(), sums[name], rtol=1e-5, atol=1e-6), name
        assert torch.allclose(st.act_norm().double(), (sums[name] / n).sqrt(), rtol=1e-5, atol=1e-6), name
        assert torch.allclose(st.hessian().double(), 2 * xtx[name] / n, rtol=1e-4, atol=1e-5), name


def test_sequential_loop_carries_the_dense_models_activations_beside_the_pruned_ones(calib):
    """dense_reference: block l's step sees the dense model's inputs and outputs of block l (the hidden states
    of an unpruned full forward) beside the pruned model's own; ``index`` is the block's number."""
    model, _ = load_model("tiny-llama")
    dense, _ = load_model("tiny-llama")
    ids = calib.input_ids[:3]
    with torch.no_grad():
        hidden = [dense(row[None], output_hidden_states=True).hidden_states for row in ids]
    seen = []

    def step(data):
        seen.append(data.index)
        for i in range(len(ids)):
            assert torch.allclose(data.dense_inputs[i], hidden[i][data.index], atol=1e-5), (data.index, i)
            if data.index + 1 < len(hidden[i]) - 1:  # the last hidden state is after the final norm
                assert torch.allclose(data.dense_outputs[i], hidden[i][data.index + 1], atol=1e-5), (data.index, i)
            if data.index > 0:  # later blocks see the pruned model's activations
                assert not torch.allclose(data.inputs[i], data.dense_inputs[i], atol=1e-3), (data.index, i)
        with torch.no_grad():
            for lin in data.linears.values():
                lin.weight[:, ::2] = 0

    calibrate(model, ids, "sequential", ("sq_norm",), block_step=step, dense_reference=True, progress=False)
    assert seen == list(range(len(model.model.layers)))
