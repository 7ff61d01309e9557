"""CSR linears: the same outputs as the dense linear (the oracle), the storage they claim, and refusals."""

from __future__ import annotations

import json
import re

import pytest
import torch

from workbench.models import load_model, prunable_linears
from workbench.prune import prune
from workbench.sparse_backend import BACKENDS, SparseLinear, sparsify_linears


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_linear_equals_the_dense_linear(backend):
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 10)
    linear.weight.data[torch.rand(10, 24) < 0.7] = 0
    x = torch.randn(2, 5, 24)
    sparse = SparseLinear(linear, backend)
    torch.testing.assert_close(sparse(x), torch.nn.functional.linear(x, linear.weight, linear.bias))
    nnz = int((linear.weight != 0).sum())
    assert sparse.nbytes() == nnz * 8 + 11 * 4 + 10 * 4  # values + int32 column indices, row pointers, bias


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparsified_model_gives_the_pruned_models_logits(backend):
    model, tok = load_model("tiny-llama")
    prune(model, tok, metric="magnitude", sparsity=0.6, progress=False)
    ids = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        dense = model(ids).logits
        count = sparsify_linears(model, backend)
        assert count == 21 and sum(isinstance(m, SparseLinear) for m in model.modules()) == 21
        assert prunable_linears(model) == {}  # no dense prunable linear is left
        torch.testing.assert_close(model(ids).logits, dense, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"backend='mkl' is not supported; allowed: \['torch-csr', 'scipy-csr'\]"):
        SparseLinear(torch.nn.Linear(4, 4), "mkl")


def test_eval_and_generate_with_a_sparse_backend_match_dense_linears(tmp_path, capsys):
    from workbench.cli import main

    ckpt = tmp_path / "ckpt"
    assert main(["prune", "--model", "tiny-llama", "--metric", "magnitude", "--sparsity", "0.7", "--save", str(ckpt),
                 "--format", "compressed", "--out", str(tmp_path / "p.json")]) == 0
    ppl = {}
    for backend in (None, "torch-csr"):
        extra = [] if backend is None else ["--sparse-backend", backend]
        out = tmp_path / f"{backend}.json"
        assert main(["eval", "--model", str(ckpt), "--seqlen", "128", "--out", str(out), *extra]) == 0
        record = json.loads(out.read_text())
        assert record["method"]["sparse_backend"] == backend
        ppl[backend] = record["metrics"]["perplexity"]
    assert ppl["torch-csr"] == pytest.approx(ppl[None], rel=1e-5)
    capsys.readouterr()
    texts = {}
    for backend in (None, "scipy-csr"):
        extra = [] if backend is None else ["--sparse-backend", backend]
        assert main(["generate", "--model", str(ckpt), "--prompt", "def ", "--max-new-tokens", "12", *extra]) == 0
        captured = capsys.readouterr()
        texts[backend] = captured.out
        assert re.search(r"12 tokens in [\d.]+ s \([\d.]+ tokens/s, greedy, batch 1", captured.err)
    assert texts["scipy-csr"] == texts[None] and texts[None].startswith("def ")


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", "tiny-llama", "--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),
    (["eval", "--model", "tiny-llama", "--sparse-backend", "torch-csr", "--device", "cuda:0"],
     "--sparse-backend torch-csr runs on the CPU; got --device cuda:0"),
    (["eval", "--model", "tiny-llama", "--sparse-backend", "torch-csr", "--tasks", "embedded"],
     "--sparse-backend applies to perplexity"),
])
def test_sparse_backend_refusals(argv, message, capsys):
    from workbench.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err
