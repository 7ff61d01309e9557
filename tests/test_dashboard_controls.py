"""The dashboard page without a browser: menus from the registries, each allocator's controls generated from its
declarations, one RunSpec per run (refusals shown on the page), and what pages share (DashboardServices) versus
what each page keeps (its param state); no module-level mutable state."""

import inspect
from concurrent.futures import ThreadPoolExecutor

import pytest

from workbench.allocation import allocation_names, check_allocator, check_params, declared_defaults
from workbench.allocation.dsa.function import PRESETS
from workbench.dashboard import app as app_mod
from workbench.dashboard.app import Dashboard, DashboardConfig, DashboardServices
from workbench.dashboard.controls import DsaControls, controls_class
from workbench.dashboard.jobs import JobQueue
from workbench.models import MODELS
from workbench.pruners import METRICS
from workbench.session import Session


@pytest.fixture
def services(tmp_path):
    config = DashboardConfig(models=("tiny-llama", "my-org/my-model"), default_model="tiny-llama", nsamples=4,
                             seqlen=64, eval_seqlen=128, results_dir=tmp_path / "r", reproduce_dir=tmp_path / "t")
    services = DashboardServices(config)
    yield services
    services.close()


@pytest.mark.parametrize("name", allocation_names())
def test_every_allocator_gets_its_declared_parameters_as_controls(name):
    controls = controls_class(name)()
    declared = check_allocator(name).public_params()
    if isinstance(controls, DsaControls):  # the function chooser: a preset and its λ
        assert controls.controls() == ["function", "lam"]
        assert check_params(name, controls.values())["function"]["pre"] == list(PRESETS["readme"].pre)
        return
    boxes = [f"{p.name}_{word}" for p in declared for word in p.special]  # 'auto' beside its number
    assert [c for c in controls.controls() if c not in boxes] == [p.name for p in declared]
    assert set(boxes) <= set(controls.controls())
    assert controls.values() == declared_defaults(name)  # the declared defaults, None ones left to the allocator
    check_params(name, controls.values())  # and the allocator accepts them
    for p in declared:
        spec = controls.param[p.name]
        assert p.help in spec.doc
        if p.kind in ("float", "int"):
            assert tuple(spec.bounds) == (p.low, p.high)
        if p.kind == "choice":
            assert list(spec.objects) == list(p.choices)


def test_a_special_word_has_its_own_box_and_metric_defaults_follow_the_metric():
    owl = controls_class("owl")()
    owl.lam_auto = True
    assert owl.values()["lam"] == "auto" and owl.values()["M"] == 5.0
    besa = controls_class("besa")()
    assert besa.values()["importance"] == "wanda"
    besa.follow_metric("magnitude")
    assert besa.values()["importance"] == "magnitude"
    dsa = controls_class("dsa")()
    dsa.function = "searched" if "searched" in PRESETS else "poster"
    assert dsa.lam == PRESETS[dsa.function].lam == dsa.values()["function"]["lam"]


def test_menus_come_from_the_registries(services):
    page = Dashboard(services)
    assert page.param.allocation.objects == allocation_names()
    assert page.param.metric.objects == METRICS.names()
    assert page.param.model.objects == ["tiny-llama", "my-org/my-model",
                                        *[m for m in MODELS.names() if m != "tiny-llama"]]
    assert page.model == "tiny-llama"
    assert "my-org/my-model" not in Dashboard.param.model.objects  # another server's models stay its own


def test_a_run_is_one_spec_of_the_controls_and_a_refusal_is_shown(services):
    page = Dashboard(services)
    page.allocation = "owl"
    page.controls().lam = 0.1
    page.metric = "magnitude"
    spec = page.spec()
    flat = spec.flat()
    assert (flat["model"], flat["metric"], flat["allocation"], flat["sparsity"]) == ("tiny-llama", "magnitude", "owl",
                                                                                  0.7)
    assert flat["alloc_params"]["lam"] == 0.1 and flat["eval_seqlen"] == 128 and flat["nsamples"] == 4
    page.pattern = "2:4"  # N:M fixes every layer: refused with OWL, nothing queued
    assert page.start_run() is None
    assert "pattern='2:4'" in page.message and "uniform" in page.message
    page.pattern = "unstructured"
    page.sparsity = "abc"
    assert page.start_run() is None and "target sparsity: 'abc' is not a number" in page.message
    assert services.jobs.history == []


def test_pages_share_the_services_and_keep_their_own_state(services):
    first, second = Dashboard(services), Dashboard(services)
    assert first.session() is second.session() is services.session("tiny-llama")
    first.allocation = "owl"
    first.controls().lam = 0.2
    assert second.allocation == "uniform" and second.controls("owl").lam == 0.08
    other = DashboardServices(services.config)
    try:
        assert other.session("tiny-llama") is not services.session("tiny-llama")  # nothing global
    finally:
        other.close()


def test_the_app_module_holds_no_mutable_state():
    shared = (dict, list, set, JobQueue, ThreadPoolExecutor, Session)
    for name, value in vars(app_mod).items():
        if inspect.ismodule(value) or inspect.isclass(value) or callable(value) or name.startswith("__"):
            continue
        assert not isinstance(value, shared), f"module global {name} = {type(value).__name__}"
