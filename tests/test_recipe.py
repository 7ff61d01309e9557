"""llm-compressor recipes: the structure llm-compressor documents, the profile carried one to one in the
model's module order, the dashboard's download, and refusals that write nothing.

llmcompressor itself does not install beside the pinned transformers (0.14.0.1 needs transformers<=5.17),
so the structure is checked here against its documented schema; `scripts/check_recipe_llmcompressor.py`
loads a recipe with llmcompressor in a separate environment."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from workbench.cli import main
from workbench.models import load_model
from workbench.profile import SparsityProfile
from workbench.prune import prune
from workbench.recipe import MODIFIERS, build_recipe, recipe_text


def _module_order(model: torch.nn.Module) -> list[str]:
    """Prunable linears in the order of ``model.named_modules()``: the order llm-compressor matches targets in."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] != "lm_head"]


@pytest.fixture(scope="module")
def owl_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "owl.json"
    assert main(["prune", "--model", "tiny-llama", "--allocation", "owl", "--sparsity", "0.6",
                 "--nsamples", "4", "--seqlen", "64", "--out", str(out)]) == 0
    return out


def test_recipe_has_llmcompressors_structure_and_the_profile_one_to_one(owl_record, tmp_path):
    recipe_path = tmp_path / "r.yaml"
    assert main(["export-recipe", str(owl_record), "--out", str(recipe_path)]) == 0
    recipe = yaml.safe_load(recipe_path.read_text())
    # stage -> "<anything>_modifiers" group -> modifier class name -> its fields (llm-compressor's recipe schema)
    (stage_name, stage), = recipe.items()
    (group_name, group), = stage.items()
    (modifier_name, fields), = group.items()
    assert group_name.endswith("_modifiers") and modifier_name == "WandaPruningModifier"
    assert set(fields) == {"sparsity", "mask_structure", "targets", "ignore"}
    assert fields["mask_structure"] == "0:0"
    model, _ = load_model("tiny-llama")
    profile = SparsityProfile.from_dict(json.loads(owl_record.read_text())["profile"])
    assert fields["targets"] == _module_order(model)
    assert fields["sparsity"] == [profile.layers[name] for name in _module_order(model)]
    assert len(set(fields["sparsity"])) == 3                  # OWL: one ratio per block of tiny-llama
    numels = {n: m.weight.numel() for n, m in model.named_modules() if n in fields["targets"]}
    mean = sum(s * numels[t] for s, t in zip(fields["sparsity"], fields["targets"], strict=True)) / sum(numels.values())
    assert mean == pytest.approx(0.6, abs=1e-9)


def test_pattern_and_metric_choose_mask_structure_and_modifier():
    model, tok = load_model("tiny-llama")
    profile = prune(model, tok, metric="magnitude", sparsity=0.5, pattern="2:4", progress=False).profile
    recipe = build_recipe(profile, _module_order(model), "sparsegpt", "2:4")
    fields = recipe["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]
    assert fields["mask_structure"] == "2:4" and set(fields["sparsity"]) == {0.5}
    assert sorted(MODIFIERS) == ["sparsegpt", "wanda"]


def test_refusals_name_the_problem_and_write_nothing(owl_record, tmp_path, capsys):
    out = tmp_path / "never.yaml"
    cases = [(["--model", "tiny-opt"], "profile does not match the model's prunable linears"),
             (["--pattern", "3:4x"], "pattern='3:4x' is not allowed")]
    for extra, message in cases:
        assert main(["export-recipe", str(owl_record), "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
    record = json.loads(owl_record.read_text())
    record["method"]["metric"] = "magnitude"
    magnitude = tmp_path / "magnitude.json"
    magnitude.write_text(json.dumps(record))
    assert main(["export-recipe", str(magnitude), "--out", str(out)]) == 2
    assert "metric='magnitude' has no one-shot llm-compressor modifier" in capsys.readouterr().err
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(record["profile"]))
    assert main(["export-recipe", str(bare), "--out", str(out)]) == 2
    assert "give --model" in capsys.readouterr().err
    assert not out.exists()


def test_row_profiles_are_refused():
    model, _ = load_model("tiny-llama")
    names = _module_order(model)
    numels = {n: 1 for n in names}
    profile = SparsityProfile(dict.fromkeys(names, 0.5), numels, 0.5, "besa", "row", rows={names[0]: [0.5]})
    with pytest.raises(ValueError, match="row-wise profile"):
        build_recipe(profile, names)


def test_dashboard_download_is_the_cli_recipe(owl_record, tmp_path):
    from workbench.dashboard.app import Dashboard, DashboardConfig, DashboardServices

    results = tmp_path / "r"
    results.mkdir()
    (results / "owl.json").write_text(owl_record.read_text())
    app = Dashboard(DashboardServices(DashboardConfig(models=("tiny-llama",), default_model="tiny-llama", nsamples=4,
                                                      seqlen=64, results_dir=results, reproduce_dir=tmp_path / "t")))
    assert app.download_recipe.filename == "owl.recipe.yaml"
    profile = SparsityProfile.from_dict(json.loads(owl_record.read_text())["profile"])
    assert app._record_recipe().getvalue().decode() == recipe_text(profile, "tiny-llama", "wanda", "unstructured")


def test_global_profiles_are_refused_for_wanda_and_carried_for_sparsegpt(tmp_path, capsys):
    """The papers' Global prunes over the whole matrix; WandaPruningModifier prunes per row: refused, one line.
    With SparseGPT the workbench ignores the group as llm-compressor does: the recipe carries the run."""
    record = tmp_path / "global.json"
    assert main(["prune", "--model", "tiny-llama", "--allocation", "global", "--sparsity", "0.6",
                 "--nsamples", "4", "--seqlen", "64", "--out", str(record)]) == 0
    profile = SparsityProfile.from_dict(json.loads(record.read_text())["profile"])
    assert profile.allocator == "global" and profile.params["mask_group"] == "matrix"
    out = tmp_path / "never.yaml"
    capsys.readouterr()
    assert main(["export-recipe", str(record), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "allocation='global'" in err and "per output row" in err
    assert "allowed: --metric sparsegpt, or a global_per_row profile" in err
    assert not out.exists()
    model, _ = load_model("tiny-llama")
    names = _module_order(model)
    with pytest.raises(ValueError, match=r"^allocation='global' prunes with comparison group 'matrix'"):
        build_recipe(profile, names, "wanda")
    fields = build_recipe(profile, names, "sparsegpt")["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]
    assert fields["sparsity"] == [profile.layers[name] for name in names]
    per_row = SparsityProfile(dict(profile.layers), dict(profile.numels), profile.target, "global_per_row", "layer")
    assert "WandaPruningModifier" in build_recipe(per_row, names, "wanda")["sparsity_stage"]["sparsity_modifiers"]
