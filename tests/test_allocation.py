"""Allocators against their closed forms, the profile and its JSON."""

import pytest
import torch

from workbench.allocation import ALLOCATORS, AllocationInput, allocate
from workbench.allocation.er import er_densities
from workbench.models import layer_infos
from workbench.profile import SparsityProfile
from workbench.units import LayerInfo


def _inputs(scores=None):
    shapes = {"b0.q": (64, 64), "b0.up": (256, 64), "b0.down": (64, 256), "b1.q": (64, 64),
              "b1.up": (256, 64), "b1.down": (64, 256)}
    layers = {n: LayerInfo(n, int(n[1]), o, i) for n, (o, i) in shapes.items()}
    return AllocationInput(layers, scores)


def test_registry_has_the_simple_allocators():
    assert {"uniform", "er", "er_plus", "global"} <= set(ALLOCATORS)
    with pytest.raises(ValueError, match="allocation='owlish'.*allowed"):
        allocate("owlish", _inputs(), 0.5)


@pytest.mark.parametrize("s", [0.3, 0.5, 0.7, 0.9])
def test_er_matches_its_closed_form(s):
    prof = allocate("er", _inputs(), s)
    assert prof.mean() == pytest.approx(s, abs=1e-12)
    dens = {n: 1 - v for n, v in prof.layers.items()}
    raw = {n: (o + i) / (o * i) for n, (o, i) in [(n, (li.out_features, li.in_features))
                                                    for n, li in _inputs().layers.items()]}
    free = [n for n in dens if dens[n] < 1]
    ratios = {dens[n] / raw[n] for n in free}  # one ε for every layer that is not dense
    assert max(ratios) == pytest.approx(min(ratios))
    assert prof.layers["b0.up"] > prof.layers["b0.q"]  # larger layers are pruned more


def test_er_caps_dense_layers_and_recomputes():
    dens = er_densities({"tiny": (2, 2), "big": (1000, 1000)}, 0.1)
    assert dens["tiny"] == 1.0
    total = 4 + 1_000_000
    assert (dens["tiny"] * 4 + dens["big"] * 1_000_000) / total == pytest.approx(0.9)


def test_er_keeps_layers_fixed_dense_across_rounds():
    # tiny goes over density 1 in the first round; the fixed final layer must stay dense after that
    dens = er_densities({"tiny": (2, 2), "big": (1000, 1000), "final": (100, 100)}, 0.1, {"final"})
    assert dens["tiny"] == 1.0 and dens["final"] == 1.0
    total = 4 + 1_000_000 + 10_000
    assert (4 + dens["big"] * 1_000_000 + 10_000) / total == pytest.approx(0.9)


def test_er_budget_edges():
    shapes = {"a": (10, 10), "final": (10, 10)}
    with pytest.raises(ValueError, match=r"sparsity=0.5: the target cannot be reached with \['final'\] dense"):
        er_densities(shapes, 0.5, {"final"})  # the dense final layer takes the whole budget
    with pytest.raises(ValueError, match=r"sparsity=0.9: the target cannot be reached with \['final'\] dense"):
        er_densities(shapes, 0.9, {"final"})
    dens = er_densities(shapes, 0.4975, {"final"})  # half a weight of budget left for "a"
    assert dens["a"] == pytest.approx(0.005)


def test_help_lists_metric_dependent_defaults():
    from workbench.allocation import describe_allocators

    text = describe_allocators()
    assert "score='wanda', magnitude: 'magnitude'" in text
    assert "importance='wanda', magnitude: 'magnitude', sparsegpt: 'sparsegpt'" in text
    assert "epsilon=0.3  " in text  # one default for every metric (AlphaPruning's main.py)


def test_er_plus_keeps_the_final_layer_dense():
    prof = allocate("er_plus", _inputs(), 0.6)
    assert prof.layers["b1.down"] == 0.0
    assert prof.mean() == pytest.approx(0.6)
    assert prof.params["dense_layers"] == ["b1.down"]


def test_global_uses_one_threshold():
    g = torch.Generator().manual_seed(0)
    table = {n: torch.rand(li.out_features, li.in_features, generator=g) * (1 + li.block)
             for n, li in _inputs().layers.items()}
    prof = allocate("global", _inputs(table.__getitem__), 0.5)
    everything = torch.cat([t.flatten() for t in table.values()])
    k = int(0.5 * everything.numel())
    threshold = torch.sort(everything).values[k - 1]
    for n, t in table.items():
        assert prof.layers[n] == pytest.approx(float((t <= threshold).float().mean()))
    assert prof.mean() == pytest.approx(0.5, abs=1e-9)
    assert prof.block_means()[0] > prof.block_means()[1]  # block 1 has larger scores


def test_global_caps_layers_below_one():
    table = {n: torch.full((li.out_features, li.in_features), 1.0 if n != "b0.q" else 1e-9)
             for n, li in _inputs().layers.items()}
    table = {n: t + torch.rand_like(t) * 1e-3 for n, t in table.items()}
    prof = allocate("global", _inputs(table.__getitem__), 0.5, max_layer_sparsity=0.9)
    assert prof.layers["b0.q"] == pytest.approx(0.9, abs=1 / 4096)
    assert max(prof.layers.values()) < 1.0
    assert prof.mean() == pytest.approx(0.5, abs=1e-6)


def _global_oracle(table: dict[str, torch.Tensor], budget: int) -> dict[str, float]:
    """The budget lowest scores of the model, ties taken in layer order then position (a stable sort)."""
    names = list(table)
    flat = torch.cat([table[n].flatten() for n in names])
    owner = torch.cat([torch.full((table[n].numel(),), i) for i, n in enumerate(names)])
    chosen = owner[torch.sort(flat, stable=True).indices[:budget]]
    return {n: float((chosen == i).sum()) / table[n].numel() for i, n in enumerate(names)}


@pytest.mark.parametrize("name", ["global", "global_per_row"])
def test_global_ties_at_the_threshold_go_to_the_earlier_layers(name):
    g = torch.Generator().manual_seed(1)
    table = {n: torch.randint(0, 5, (li.out_features, li.in_features), generator=g).float()
             for n, li in _inputs().layers.items()}  # five values: every threshold is a tie
    total = sum(t.numel() for t in table.values())
    for s in (0.3, 0.55):
        prof = allocate(name, _inputs(table.__getitem__), s)
        assert prof.layers == pytest.approx(_global_oracle(table, int(s * total)), abs=1e-12)
        assert prof.allocator == name
        assert prof.params["score"] == "wanda" and prof.params["max_layer_sparsity"] == 0.99


def test_global_with_a_budget_of_zero_or_one_weight():
    table = {n: torch.arange(li.out_features * li.in_features, dtype=torch.float32).reshape(
        li.out_features, li.in_features) + (1000 if n != "b1.q" else 0) for n, li in _inputs().layers.items()}
    total = sum(t.numel() for t in table.values())
    zero = allocate("global", _inputs(table.__getitem__), 0.5 / total)  # int(S * total) = 0
    assert set(zero.layers.values()) == {0.0}
    one = allocate("global", _inputs(table.__getitem__), 1.5 / total)  # exactly one weight: b1.q's smallest
    assert one.layers["b1.q"] == 1 / table["b1.q"].numel()
    assert sum(v for n, v in one.layers.items() if n != "b1.q") == 0.0


def test_global_refuses_a_sparsity_above_the_layer_cap():
    table = {n: torch.rand(li.out_features, li.in_features) for n, li in _inputs().layers.items()}
    with pytest.raises(ValueError, match=r"sparsity=0.7 cannot be reached with max_layer_sparsity=0.5 \(at most "
                                         r"0.5000 with every layer capped\); allowed: a larger max_layer_sparsity or a "
                                         r"smaller sparsity"):
        allocate("global", _inputs(table.__getitem__), 0.7, max_layer_sparsity=0.5)
    prof = allocate("global", _inputs(table.__getitem__), 0.5, max_layer_sparsity=0.5)  # reachable exactly
    assert prof.layers == pytest.approx(dict.fromkeys(table, 0.5))


def test_global_needs_scores():
    with pytest.raises(ValueError, match="needs layer scores"):
        allocate("global", _inputs(), 0.5)


def test_profile_json_round_trip_and_validation(tmp_path, tiny):
    model, _ = tiny
    prof = allocate("er", AllocationInput(layer_infos(model)), 0.5)
    path = prof.save(tmp_path / "p.json")
    again = SparsityProfile.load(path)
    assert again.layers == prof.layers and again.blocks == prof.blocks and again.allocator == "er"
    assert again.mean() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must be a number in \\[0, 1\\)"):
        SparsityProfile({"a": 1.0}, {"a": 4}, 0.5, "hand")
    with pytest.raises(ValueError, match="target=1.2"):
        SparsityProfile({"a": 0.1}, {"a": 4}, 1.2, "hand")
    with pytest.raises(ValueError, match="granularity='cube'"):
        SparsityProfile({"a": 0.1}, {"a": 4}, 0.1, "hand", granularity="cube")
    with pytest.raises(ValueError, match="does not match"):
        again.check_matches(["model.layers.0.self_attn.q_proj"])


@pytest.mark.parametrize("k", [1, 2_000_000, 4_999_999, 5_000_000])
def test_kth_smallest_is_exact(k):
    from workbench.allocation.global_ import kth_smallest

    values = torch.rand(5_000_000, generator=torch.Generator().manual_seed(3)) ** 3
    values[:1000] = 0.25  # ties
    assert kth_smallest(values, k) == torch.kthvalue(values, k).values


def test_kth_smallest_stays_exact_when_its_sample_misleads():
    """The seeded sample is known, so it can be made to lie: every sampled position holds 2.0 (the sample's
    bracket is [2, 2]); the k-th smallest is then one of the values below the bracket."""
    from workbench.allocation.global_ import kth_smallest

    n, sample = 5_000_000, 1 << 20
    probe = torch.randint(0, n, (sample,), generator=torch.Generator().manual_seed(0))
    values = torch.rand(n, generator=torch.Generator().manual_seed(5))
    values[probe] = 2.0
    below = int((values < 2.0).sum())
    for k in (1, below, below + 1, n):  # k == below: the answer lies just under the bracket
        assert kth_smallest(values, k) == torch.kthvalue(values, k).values


def test_declared_defaults_are_the_published_ones_and_skip_unset_values():
    from workbench.allocation import declared_defaults

    assert declared_defaults("owl") == {"lam": 0.08, "M": 5.0, "clamp": "safe", "granularity": "block"}
    assert declared_defaults("alphapruning") == {"epsilon": 0.3, "granularity": "block"}
    assert declared_defaults("dlp") == {"alpha": 0.15, "strategy": "median", "clamp": "safe", "granularity": "block"}
    assert declared_defaults("uniform") == {"granularity": "block"}
    assert declared_defaults("er") == {"granularity": "projection"}
    besa = declared_defaults("besa")
    assert "lr" not in besa and besa["beta"] == 5.0  # lr has no metric-independent default (None)


def test_only_besa_learns_while_pruning_and_every_other_allocator_has_a_curve():
    from workbench.allocation import LEARNERS, Learner, allocation_names, curve_allocators, learns_while_pruning
    from workbench.errors import WorkbenchError

    assert [n for n in allocation_names() if learns_while_pruning(n)] == ["besa"] == LEARNERS.names()
    assert "besa" not in ALLOCATORS and isinstance(LEARNERS["besa"], Learner)  # a learner, not a flagged allocator
    assert allocation_names() == [*ALLOCATORS, "besa"]
    assert curve_allocators() == [n for n in ALLOCATORS if n not in ("besa", "profile")]  # profile: a saved file
    with pytest.raises(WorkbenchError, match="allocation='bogus' is not allowed.*'besa'"):
        learns_while_pruning("bogus")
    with pytest.raises(WorkbenchError, match="allocation='besa' learns block by block"):
        allocate("besa", AllocationInput({}), 0.5)


def test_param_describes_its_allowed_values_in_words():
    from workbench.allocation import Param

    assert Param("x", 0.5, "h", low=0.0, high=1.0).describe() == "a number in [0, 1]"
    assert Param("x", 0.5, "h", low=0.0, high=1.0, open=True).describe() == "a number in (0, 1)"
    assert Param("n", 1, "h", kind="int", low=1).describe() == "an integer in [1, inf]"
    assert Param("x", 0.5, "h", high=2.5).describe() == "a number in [-inf, 2.5]"
    assert Param("b", 0.01, "h", special=("auto", "max")).describe() == "a number in [-inf, inf] or 'auto' or 'max'"
    assert Param("g", "a", "h", kind="choice", choices=("a", "b")).describe() == "one of ['a', 'b']"
    assert Param("s", True, "h", kind="bool").describe() == "true or false"
    assert Param("f", "x", "h", kind="any").describe() == "any value the allocator documents"


def test_param_check_names_allocator_key_and_allowed_values():
    from workbench.allocation import Param

    p = Param("eps", 0.2, "h", low=0.0, high=1.0, open=True)
    assert p.check("alphapruning", 0.5) == 0.5
    for bad in (1.0, 0.0, True, "0.5", float("nan")):
        with pytest.raises(ValueError, match=rf"^allocation='alphapruning': eps={bad!r} is not allowed; "
                                             r"allowed: a number in \(0, 1\)$"):
            p.check("alphapruning", bad)
    assert Param("lr", None, "h", optional=True, low=0.0).check("besa", None) is None
    with pytest.raises(ValueError, match=r"lr=None is not allowed"):
        Param("lr", 1.0, "h", low=0.0).check("besa", None)
    seen = []

    def refuse(value):
        seen.append(value)
        raise ValueError("no such function")

    any_param = Param("function", "x", "h", kind="any", validate=refuse)
    with pytest.raises(ValueError, match=r"^allocation='dsa': no such function$"):
        any_param.check("dsa", "nope")
    assert seen == ["nope"]


def test_param_check_bounds_kinds_and_validated_values():
    from workbench.allocation import Param

    closed = Param("lam", 0.1, "h", low=0.0, high=0.5)
    assert closed.check("owl", 0.5) == 0.5 and closed.check("owl", 0.0) == 0.0  # closed ends accepted
    got = closed.check("owl", 0)
    assert got == 0.0 and type(got) is float  # ints accepted for floats, returned as floats
    opened = Param("s", 0.5, "h", low=0.0, high=1.0, open=True)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"^allocation='x': s={bad!r} is not allowed; allowed: a number in "
                                             r"\(0, 1\)$"):
            opened.check("x", bad)
    count = Param("epochs", 1, "h", kind="int", low=1)
    assert count.check("besa", 3) == 3 and type(count.check("besa", 3)) is int
    with pytest.raises(ValueError, match=r"epochs=2.5 is not allowed; allowed: an integer in \[1, inf\]"):
        count.check("besa", 2.5)

    seen = []

    def validate(value):
        seen.append(value)
        if value != "good":
            raise ValueError(f"function={value!r} is unknown")

    optional = Param("function", None, "h", kind="any", optional=True, validate=validate)
    assert optional.check("dsa", None) is None and seen == []  # None means the default: not validated
    assert optional.check("dsa", "good") == "good" and seen == ["good"]
    with pytest.raises(ValueError, match=r"^allocation='dsa': function='bad' is unknown$"):
        optional.check("dsa", "bad")
    required = Param("function", "good", "h", kind="any", validate=validate)
    with pytest.raises(ValueError, match=r"^allocation='dsa': function=None is unknown$"):
        required.check("dsa", None)
