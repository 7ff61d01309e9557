"""Sparse linears for inference on the CPU: a pruned ``nn.Linear`` stored as CSR and multiplied as such.

Two maintained CSR kernels are offered: torch's own sparse CSR matmul (``torch-csr``, 32-bit indices)
and SciPy's ``csr_matrix`` product (``scipy-csr``, single-threaded C++). Both store 4 bytes of value
plus 4 bytes of column index per kept weight, so memory falls below the dense matrix's only beyond
50% sparsity. ``benchmarks/sparse_speed.py`` measures what they buy; at the sparsities the papers
prune to they are slower than the dense matmul on this machine (see the README).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from .errors import WorkbenchError
from .registry import Plugin, Registry

BACKENDS: Registry[Plugin] = Registry("sparse backend", "sparse_backend")
BACKENDS.add("torch-csr", Plugin("torch-csr", "torch.sparse CSR matmul"))
BACKENDS.add("scipy-csr", Plugin("scipy-csr", "scipy.sparse CSR matmul (numpy views of the tensors)"))


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with W kept only as its non-zeros (CSR), for inference (no gradients)."""

    def __init__(self, linear: nn.Linear, backend: str = "torch-csr"):
        super().__init__()
        if backend not in BACKENDS:
            raise WorkbenchError(f"backend={backend!r} is not supported; allowed: {list(BACKENDS)}")
        weight = linear.weight.detach().to("cpu", torch.float32)
        self.backend, self.in_features, self.out_features = backend, linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).clone()
        if backend == "scipy-csr":
            import scipy.sparse

            self.csr = scipy.sparse.csr_matrix(weight.numpy())
        else:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and measured here
                warnings.simplefilter("ignore", UserWarning)
                csr = weight.to_sparse_csr()
                self.csr = torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32),
                                                   csr.col_indices().to(torch.int32), csr.values().clone(),
                                                   weight.shape, check_invariants=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.float32)
        if self.backend == "scipy-csr":
            out = torch.from_numpy(np.ascontiguousarray((self.csr @ flat.numpy().T).T))
        else:
            out = (self.csr @ flat.T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the stored matrix (values and indices) and bias."""
        if self.backend == "scipy-csr":
            size = self.csr.data.nbytes + self.csr.indices.nbytes + self.csr.indptr.nbytes
        else:
            size = sum(t.numel() * t.element_size()
                       for t in (self.csr.values(), self.csr.col_indices(), self.csr.crow_indices()))
        return size + (0 if self.bias is None else self.bias.numel() * 4)


def sparsify_linears(model: nn.Module, backend: str = "torch-csr") -> int:
    """Replace every prunable linear of ``model`` by a :class:`SparseLinear` (in place); returns how many."""
    from .models import forget_structure, prunable_linears

    linears = dict(prunable_linears(model))
    forget_structure(model)  # the kept structure would hold the dense weights alive
    count = len(linears)
    for name in list(linears):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, SparseLinear(linears.pop(name), backend))
    return count
