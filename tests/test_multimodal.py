"""Vision-language models: the language tower is found and pruned by every allocator while the vision encoder
and projector stay bit-identical; the target counts the tower only; an image + prompt forward and generation run
after pruning; records carry the vision parts' hashes; smolvlm-embedded's text side is SmolLM2's to the bit;
refusals (no language tower, an unreadable image, streaming) are one line and write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.allocation import allocation_names
from workbench.cli import main
from workbench.data import calibration_samples
from workbench.errors import WorkbenchError
from workbench.models import load_model, prunable_linears, structure
from workbench.multimodal import check_frozen, image_inputs
from workbench.prune import prune
from workbench.spec import RunSpec

VLMS = ("tiny-llava", "tiny-smolvlm", "tiny-qwen2-vl")
TOWERS = {"tiny-llava": ("model.language_model", {"model.vision_tower", "model.multi_modal_projector"}),
          "tiny-smolvlm": ("model.text_model", {"model.vision_model", "model.connector"}),
          "tiny-qwen2-vl": ("model.language_model", {"model.visual"})}
ALLOCATORS = [a for a in allocation_names() if a != "profile"]  # profile reads a file


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((37, 53, 3)) * 255).astype("uint8")).save(path)
    return path


def _outside_tower(model, tower: str) -> dict[str, torch.Tensor]:
    """Every tensor that is not in the language tower's decoder blocks, cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(f"{tower}.layers.")}


@pytest.mark.parametrize("name", VLMS)
def test_the_language_tower_is_found_and_the_vision_parts_beside_it(name):
    model, _ = load_model(name)
    layout = structure(model)
    tower, frozen = TOWERS[name]
    assert layout.prefix == f"{tower}.layers" and set(layout.frozen) == frozen and layout.multimodal
    assert len(layout.blocks) == 3 and len(prunable_linears(model)) == 21
    assert all(n.startswith(f"{tower}.layers.") for n in prunable_linears(model))
    assert not structure(load_model("tiny-llama")[0]).multimodal


@pytest.mark.parametrize("name", VLMS)
@pytest.mark.parametrize("allocation", ALLOCATORS)
def test_every_allocator_prunes_only_the_tower(name, allocation, image):
    model, tok = load_model(name)
    tower = TOWERS[name][0]
    before = _outside_tower(model, tower)
    calib = calibration_samples(tok, "embedded", 4, 64)
    params = {"besa": {"progress": False, "sigmoid": False},  # the readme function is constant on random weights:
              "dsa": {"function": {"pre": ["abs"], "reduction": "mean", "post": ["no_op"], "lam": 0.08}}
              }.get(allocation)
    result = prune(model, tok, metric="wanda", sparsity=0.5, allocation=allocation, allocation_params=params,
                   calibration=calib, progress=False)
    after = model.state_dict()
    for key, value in before.items():  # vision encoder, projector, embeddings, norms, lm_head: untouched
        assert torch.equal(after[key], value), key
    check_frozen(model)  # the hashes taken at load agree
    linears = prunable_linears(model)
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears.values())
    total = sum(lin.weight.numel() for lin in linears.values())
    assert abs(zeros / total - result.report["actual"]) < 1e-9  # the target counts the tower alone
    assert abs(result.report["actual"] - 0.5) < 0.02
    with torch.no_grad():  # an image + prompt forward and generation still run
        inputs = image_inputs(model, tok, image, "what is in the picture?")
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.isfinite(logits).all() and out.shape[1] == inputs["input_ids"].shape[1] + 2


def test_the_image_reaches_the_language_tower(image, tmp_path):
    """The same prompt with another image gives other logits (the vision tower's output enters the tower)."""
    other = tmp_path / "flat.png"
    Image.fromarray(np.full((37, 53, 3), 200, dtype="uint8")).save(other)
    for name in VLMS:
        model, tok = load_model(name)
        with torch.no_grad():
            a = model(**image_inputs(model, tok, image, "hello")).logits
            b = model(**image_inputs(model, tok, other, "hello")).logits
        assert a.shape == b.shape and not torch.allclose(a, b), name


def test_the_record_carries_the_tower_and_the_vision_hashes(tmp_path):
    out = tmp_path / "r.json"
    assert main(["prune", "--model", "tiny-smolvlm", "--metric", "wanda", "--sparsity", "0.5", "--nsamples", "4",
                 "--seqlen", "64", "--out", str(out)]) == 0
    model = json.loads(out.read_text())["model"]
    fresh, _ = load_model("tiny-smolvlm")
    assert model["language_tower"] == "model.text_model" and model["frozen_unchanged"] is True
    assert model["frozen_sha256"] == fresh.workbench_frozen_hashes
    assert set(model["frozen_sha256"]) == {"model.vision_model", "model.connector"}


def test_a_changed_vision_part_is_caught():
    model, _ = load_model("tiny-llava")
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight[0, 0] += 1.0
    with pytest.raises(RuntimeError, match=r"vision parts \['model.multi_modal_projector'\] changed"):
        check_frozen(model)


def test_onloading_a_vision_language_model_prunes_the_tower_alone(tmp_path):
    out = tmp_path / "r.json"
    assert main(["prune", "--model", "tiny-llava", "--metric", "wanda", "--sparsity", "0.5", "--onload",
                 "--nsamples", "4", "--seqlen", "64", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["model"]["frozen_unchanged"] and abs(record["metrics"]["actual_sparsity"] - 0.5) < 1e-3
    assert record["residency"]["kind"] == "onload"


def test_streaming_a_vision_language_model_is_refused_in_one_line(tmp_path, capsys):
    model, tok = load_model("tiny-llava")
    model.save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    capsys.readouterr()  # the save's progress bar
    code = main(["prune", "--model", str(tmp_path / "llava"), "--metric", "wanda", "--sparsity", "0.5",
                 "--offload-dir", str(tmp_path / "off"), "--save", str(tmp_path / "saved"),
                 "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code != 0 and "vision-language model: streaming its language tower" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "saved").exists() and not (tmp_path / "r.json").exists()


def test_a_saved_vision_language_model_reloads_and_compresses(tmp_path):
    from workbench.checkpoint import save_pruned

    model, tok = load_model("tiny-qwen2-vl")
    result = prune(model, tok, metric="magnitude", sparsity=0.5, progress=False)
    out = save_pruned(model, tok, result.profile, tmp_path / "q", "compressed")
    back, _ = load_model(str(out))
    assert type(back).__name__ == "Qwen2VLForConditionalGeneration"
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_a_model_without_a_language_tower_and_an_unreadable_image_are_refused(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=32, patch_size=8))
    with pytest.raises(WorkbenchError, match=r"has no decoder blocks \(nor a language tower\)"):
        structure(vision)
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    model, tok = load_model("tiny-llava")
    with pytest.raises(WorkbenchError, match=r"^image='.*broken.png' cannot be read as an image"):
        image_inputs(model, tok, bad, "hi")


def test_smolvlm_embedded_text_side_is_smollm2_to_the_bit(image):
    """Same logits on text, and Wanda prunes the same weights to the same values (names mapped); an image still
    goes through its (random) vision part."""
    vlm, tok = load_model("smolvlm-embedded")
    lm, lm_tok = load_model("smollm2-135m")
    assert vlm.config.text_config.vocab_size == lm.config.vocab_size  # the image tokens reuse unused ids
    assert "random vision" in vlm.workbench_note
    ids = torch.tensor([lm_tok("The President spoke to the Congress about the budget.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(vlm(ids).logits, lm(ids).logits)
    calib = calibration_samples(lm_tok, "embedded", 1, 32)
    prune(vlm, tok, metric="wanda", sparsity=0.5, calibration=calib, progress=False)
    prune(lm, lm_tok, metric="wanda", sparsity=0.5, calibration=calib, progress=False)
    mine = prunable_linears(vlm)
    for name, linear in prunable_linears(lm).items():
        assert torch.equal(mine[name.replace("model.", "model.text_model.", 1)].weight, linear.weight), name
    inputs = image_inputs(vlm, tok, image, "What is shown?")
    assert int((inputs["input_ids"] == vlm.config.image_token_id).sum()) == 4  # 64 px, 16 px patches, shuffle 2
    with torch.no_grad():
        assert torch.isfinite(vlm(**inputs).logits).all()


def _hooked_statistics(model, calib) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The oracle: plain forwards of each window (its image's pixels included) with a hook on every tower linear
    summing x² per input column and XᵀX, in float64."""
    sums: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def record(_module, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sq, xtx = sums.setdefault(name, [torch.zeros(x.shape[1], dtype=torch.float64),
                                             torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)])
            sq += (x * x).sum(0)
            xtx += x.t() @ x
        return record

    handles = [lin.register_forward_hook(hook(n)) for n, lin in prunable_linears(model).items()]
    with torch.no_grad():
        for row, extra in zip(calib.input_ids, calib.window_kwargs, strict=True):
            model(row[None], use_cache=False, **extra)
    for h in handles:
        h.remove()
    return {n: (sq, xtx) for n, (sq, xtx) in sums.items()}


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-smolvlm"])
def test_image_text_calibration_statistics_equal_a_plain_hooked_forward(name, image, tmp_path):
    from workbench.calibrate import calibrate
    from workbench.multimodal import image_calibration

    other = tmp_path / "flat.png"
    Image.fromarray(np.full((30, 30, 3), 90, dtype="uint8")).save(other)
    model, tok = load_model(name)
    text = calibration_samples(tok, "embedded", 3, 64)
    calib = image_calibration(text, model, tok, [image, other])
    assert calib.input_ids.shape == text.input_ids.shape and len(calib.window_kwargs) == 3
    image_token = getattr(model.config, "image_token_index", None) or model.config.image_token_id
    assert all(int((row == image_token).sum()) > 0 for row in calib.input_ids)
    stats = calibrate(model, calib.input_ids, "dense", ("sq_norm", "xtx"), progress=False,
                      window_kwargs=calib.window_kwargs)
    oracle = _hooked_statistics(model, calib)
    for n, (sq, xtx) in oracle.items():
        torch.testing.assert_close(stats[n].sq_norm.double(), sq, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stats[n].xtx.double(), xtx, rtol=1e-4, atol=1e-3)
    plain = calibrate(model, text.input_ids, "dense", ("sq_norm",), progress=False)
    first = next(iter(oracle))
    assert not torch.allclose(plain[first].sq_norm, stats[first].sq_norm)  # the images changed what the tower saw
    assert [i["file"] for i in calib.provenance()["images"]] == [str(image), str(other)]


def test_image_text_calibration_prunes_from_the_cli_and_refusals_are_one_line(image, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["prune", "--model", "tiny-llava", "--metric", "wanda", "--sparsity", "0.5", "--nsamples", "2",
                 "--seqlen", "64", "--calib-images", str(image), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["data"]["calibration"]["images"][0]["file"] == str(image)
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    for model, images, words in (("tiny-llava", [str(bad)], "cannot be read as an image"),
                                 ("tiny-qwen2-vl", [str(image)], "Qwen2-VL's image positions"),
                                 ("tiny-llama", [str(image)], "is not a vision-language model"),
                                 ("tiny-llava", [str(tmp_path / "missing.png")], "is not a file")):
        capsys.readouterr()
        target = tmp_path / f"{model}.json"
        code = main(["prune", "--model", model, "--metric", "wanda", "--sparsity", "0.5", "--nsamples", "2",
                     "--seqlen", "64", "--calib-images", *images, "--save", str(tmp_path / "ckpt"),
                     "--out", str(target)])
        err = capsys.readouterr().err
        assert code != 0 and words in err and len(err.strip().splitlines()) == 1, (model, err)
        assert not target.exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("value", [816, [816], {"a": 1}, 0.5, True])
def test_calib_images_that_are_not_paths_are_refused_naming_the_parameter(value):
    # found by hypothesis in CI: an int reached the file check and raised a bare TypeError
    with pytest.raises(WorkbenchError, match=r"^calib_images: .* is not a list of image file paths"):
        RunSpec.from_flat(model="tiny-llava", calib_images=value)


def test_the_curves_of_a_vision_language_model_are_language_tower_blocks():
    from workbench.plots import sparsity_curves
    from workbench.session import Session

    session = Session("tiny-smolvlm", nsamples=2, seqlen=64, progress=False)
    profiles = {"OWL": session.profile("owl", 0.5), "uniform": session.profile("uniform", 0.5)}
    assert all(n.startswith("model.text_model.layers.") for n in profiles["OWL"].layers)
    assert sparsity_curves(profiles).layout.xaxis.title.text == "language-tower block"
    plain = Session("tiny-llama", nsamples=2, seqlen=64, progress=False)
    assert sparsity_curves({"OWL": plain.profile("owl", 0.5)}).layout.xaxis.title.text == "block"


@pytest.mark.parametrize("space", ["functions", "levels"])
def test_a_search_runs_on_the_language_tower(tmp_path, space):
    out = tmp_path / space
    assert main(["search", "--model", "tiny-llava", "--space", space, "--population", "4", "--generations", "2",
                 "--elite", "1", "--nsamples", "2", "--seqlen", "32", "--fitness-windows", "2", "--fitness-seqlen",
                 "64", "--cheap-windows", "1", "--cheap-seqlen", "32", "--out", str(out)]) == 0
    profile = json.loads((out / "best_profile.json").read_text())
    assert profile["layers"] and all(n.startswith("model.language_model.layers.") for n in profile["layers"])


def test_a_half_precision_vision_language_model_keeps_its_load_hashes():
    model, _ = load_model("tiny-llava", dtype="bfloat16")
    from workbench.multimodal import multimodal_record

    record = multimodal_record(model)
    assert record["frozen_unchanged"] and record["frozen_sha256"] == model.workbench_frozen_hashes


def test_image_calibration_is_never_served_by_a_text_cache_nor_read_by_a_search(image):
    from workbench.prune import DenseCache
    from workbench.runner import cache_fits
    from workbench.search import SearchConfig, SearchSetup
    from workbench.spec import CalibrationSpec, ModelSpec

    model, tok = load_model("tiny-smolvlm")
    text = calibration_samples(tok, "embedded", 2, 64)
    cache = DenseCache.build(model, text, ("sq_norm",), progress=False)
    flat = {"model": "tiny-smolvlm", "calib_dataset": "embedded", "nsamples": 2, "seqlen": 64, "mode": "dense",
            "sparsity": 0.5}
    assert cache_fits(RunSpec.from_flat(flat), cache)
    assert not cache_fits(RunSpec.from_flat({**flat, "calib_images": [str(image)]}), cache)
    with pytest.raises(WorkbenchError, match=r"^calib_images: a search's dense statistics come from text"):
        SearchSetup(ModelSpec(name="tiny-smolvlm"), CalibrationSpec(images=[str(image)]), SearchConfig())


@pytest.mark.parametrize("name", VLMS)
@pytest.mark.parametrize(("metric", "pattern", "granularity"), [
    ("sparsegpt", "2:4", None), ("magnitude", "unstructured", "projection"), ("wanda", "unstructured", "sublayer")])
def test_metrics_patterns_and_granularities_on_the_tower(name, metric, pattern, granularity):
    model, tok = load_model(name)
    before = _outside_tower(model, TOWERS[name][0])
    calib = calibration_samples(tok, "embedded", 2, 64)
    params = {"granularity": granularity} if granularity else None
    result = prune(model, tok, metric=metric, sparsity=0.5, pattern=pattern, allocation="owl" if granularity else
                   "uniform", allocation_params=params, calibration=calib, progress=False)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert abs(result.report["actual"] - 0.5) < 0.02
    if pattern == "2:4":
        for lin in prunable_linears(model).values():
            assert ((lin.weight.reshape(-1, 4) != 0).sum(1) <= 2).all()
