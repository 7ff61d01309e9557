"""An oracle shared by tests: activation statistics from ordinary full forwards (hooks only, no capture loop)."""

import torch

from workbench.models import prunable_linears


def full_forward_sq_norms(model, input_ids) -> dict[str, torch.Tensor]:
    """Σ over calibration tokens of x_j² for every prunable linear, float64, one full forward per window."""
    sums, handles = {}, []
    for name, lin in prunable_linears(model).items():
        def hook(_m, args, _out, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x ** 2).sum(0)
        handles.append(lin.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for row in input_ids:
                model(row[None])
    finally:
        for h in handles:
            h.remove()
    return sums
