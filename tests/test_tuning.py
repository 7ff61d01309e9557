"""Strength parameters tuned on validation ("auto"): the run's dataset, an equal budget, refusals."""

import hashlib
import random

import pytest

from workbench import tuning
from workbench.runner import run
from workbench.spec import RunSpec

SPARSITY = 0.7
TUNE_CALIB = {"nsamples": 4, "seqlen": 64}


def _prose(seed: int, chars: int) -> str:
    """Varied, project-made sentences (each split of a test dataset differs in content and hash)."""
    rng = random.Random(seed)
    words = ["layer", "sparsity", "model", "prune", "token", "block", "weight", "row", "outlier", "budget",
             "search", "valid", "mask", "score", "value", "random", "English", "speech", "nation", "year"]
    out = []
    while sum(len(s) for s in out) < chars:
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))).capitalize() + ".")
    return " ".join(out)


@pytest.fixture()
def split_dir(tmp_path):
    """A dataset directory with its own calibration, validation and test files."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, split in enumerate(("calibration", "validation", "test")):
        (folder / f"{split}.txt").write_text(_prose(i, 9000), encoding="utf-8")
    return folder


def _run(allocation, params, eval_dataset="embedded"):
    config = RunSpec.from_flat(model="tiny-llama", allocation=allocation, sparsity=SPARSITY, alloc_params=params,
                              evals=(), eval_dataset=eval_dataset, **TUNE_CALIB)
    return run(config, progress=False)


def _check_choice(record, allocation):
    """The chosen setting is the best finalist at full fidelity, the finalists are the best cheap settings,
    and the budget is at most 15 cheap + 3 full evaluations."""
    t = record["tuning"]
    cheap = [(f, s) for s, f in t["tried"]]
    full = [(f, s) for s, f in t["finalists"]]
    distinct = len({f for f, _s in cheap})  # one cheap value per allocation (equal values: equal masks here)
    assert t["budget"] == {"cheap": distinct, "full": len(full)}
    assert 9 < len(cheap) <= tuning.COARSE + tuning.REFINE and t["budget"]["full"] == min(tuning.FINALISTS, distinct)
    best_cheap = sorted({f for f, _s in cheap})[: tuning.FINALISTS]  # the best distinct allocations
    assert sorted(next(f for f, s in cheap if s == fs) for _f, fs in full) == best_cheap
    assert t["full_fitness"] == min(f for f, _s in full)
    assert {**record["method"]["params"], **t["params"]} == record["method"]["params"]
    for key, value in t["params"].items():
        assert record["profile"]["params"][key] == pytest.approx(value)
    return t


def test_atp_auto_searches_beta_on_validation():
    record = _run("atp", {"beta": "auto"})
    t = _check_choice(record, "atp")
    beta = t["params"]["beta"]
    assert t["axis"] == {"name": "beta", "low": 0.0, "high": pytest.approx(0.3)}  # 3 blocks: min(1.4, 0.6) / 2
    assert 0 <= beta <= 0.3 and t["fitness"]["split"] == "validation"
    tried = [s["beta"] for s, _f in t["tried"]]
    assert 0.0 in tried and max(tried) == pytest.approx(0.3)


def test_owl_lambda_and_m_tuned_together_with_the_same_budget():
    record = _run("owl", {"lam": "auto", "M": "auto"})
    t = _check_choice(record, "owl")
    assert {s["M"] for s, _f in t["tried"]} == set(tuning.OWL_M)
    assert t["params"]["M"] in tuning.OWL_M and 0.0 <= t["params"]["lam"] <= 0.25
    zero = [f for s, f in t["tried"] if s["lam"] == 0.0]  # λ 0 is uniform for every M: one allocation, paid once
    assert len(zero) == 3 and len(set(zero)) == 1 and t["budget"]["cheap"] < len(t["tried"])
    refined = t["tried"][9:]  # refinement points: around the best coarse λ, at the best coarse M
    best_coarse = min(t["tried"][:9], key=lambda sf: sf[1])[0]
    assert all(s["M"] == best_coarse["M"] for s, _f in refined)


@pytest.mark.parametrize("allocation,key", [("dlp", "alpha"), ("alphapruning", "epsilon")])
def test_every_strength_parameter_is_tuned_on_the_same_budget(allocation, key):
    t = _check_choice(_run(allocation, {key: "auto"}), allocation)
    axis = tuning.strength_axis(allocation, SPARSITY, 3)
    assert axis.low <= t["params"][key] <= axis.high
    assert len({round(s[key], 9) for s, _f in t["tried"][:9]}) == 9  # the whole coarse grid


def test_tuning_reads_the_runs_validation_text(split_dir):
    record = _run("atp", {"beta": "auto"}, eval_dataset=str(split_dir))
    fitness = record["tuning"]["fitness"]
    expected = hashlib.sha256((split_dir / "validation.txt").read_text(encoding="utf-8").encode()).hexdigest()
    assert fitness["dataset"] == str(split_dir) and fitness["split"] == "validation"
    assert fitness["text_sha256"] == expected  # not the embedded corpus, not the test file


def test_tuning_on_a_dataset_without_held_out_validation_is_refused(text_file):
    with pytest.raises(ValueError, match=r"eval_dataset=.*single file.*no held-out validation split"):
        RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=SPARSITY, alloc_params={"lam": "auto"},
                         eval_dataset=str(text_file))
    # without "auto" the same file is a fine evaluation text (used whole)
    RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=SPARSITY, eval_dataset=str(text_file))


def test_untunable_auto_values_are_refused_before_any_work():
    with pytest.raises(ValueError, match=r"M='auto' is tuned together with lam='auto'"):
        RunSpec.from_flat(model="tiny-llama", allocation="owl", sparsity=SPARSITY, alloc_params={"M": "auto"})
    with pytest.raises(ValueError, match=r"allocation='owl': lam='auto' is chosen by a run"):
        from workbench.allocation import AllocationInput, allocate
        from workbench.models import layer_infos, load_model

        allocate("owl", AllocationInput(layer_infos(load_model("tiny-llama")[0])), SPARSITY, lam="auto")
