"""The engine on the embedded SmolLM2-135M: the orderings the papers report must hold."""

import pytest

from workbench.data import calibration_samples
from workbench.evaluate import perplexity
from workbench.models import load_model
from workbench.prune import prune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    """Validation perplexity (seqlen 512) after sequential pruning with 8 x 256 embedded calibration windows."""
    _, tok = load_model("smollm2-135m")
    calib = calibration_samples(tok, "embedded", nsamples=8, seqlen=256, seed=0)
    out = {}
    for key, metric, pattern in [("dense", None, None), ("magnitude", "magnitude", "unstructured"),
                                 ("wanda", "wanda", "unstructured"), ("sparsegpt", "sparsegpt", "unstructured"),
                                 ("wanda 2:4", "wanda", "2:4")]:
        model, tok = load_model("smollm2-135m")
        if metric:
            res = prune(model, tok, metric=metric, allocation="uniform", sparsity=0.5, pattern=pattern,
                        calibration=calib, progress=False)
            assert res.report["actual"] == pytest.approx(0.5, abs=0.005)
        out[key] = perplexity(model, tok, "embedded", "validation", seqlen=512, progress=False).ppl
    return out


def test_dense_is_best_and_sparsegpt_is_close(results):
    assert results["dense"] < results["sparsegpt"] < results["magnitude"]


def test_wanda_beats_magnitude(results):
    assert results["wanda"] < results["magnitude"]


def test_two_of_four_is_worse_than_unstructured(results):
    assert results["wanda 2:4"] > results["wanda"]
