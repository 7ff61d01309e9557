"""Block onloading and disk streaming (workbench/offload.py): the same masks and perplexity as the in-memory
run, one block resident at a time, a loadable output, and clear refusals with nothing half-written."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from workbench import cli
from workbench.calibrate import calibrate
from workbench.data import calibration_samples
from workbench.evaluate import perplexity, window_nlls
from workbench.models import load_model, prunable_linears, structure, weight_hash
from workbench.offload import Activations, Onload, Residency, Stream, load_skeleton, placed_model
from workbench.prune import prune


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tiny-llama (and tiny-opt, tiny-neox) written as safetensors checkpoints, in two shards for llama."""
    root = tmp_path_factory.mktemp("src")
    out = {}
    for arch in ("tiny-llama", "tiny-opt", "tiny-neox"):
        model, tok = load_model(arch)
        model.save_pretrained(root / arch, max_shard_size="200KB" if arch == "tiny-llama" else "5GB")
        tok.save_pretrained(root / arch)
        out[arch] = root / arch
    assert (out["tiny-llama"] / "model.safetensors.index.json").is_file()  # really sharded
    return out


@pytest.fixture(scope="module")
def calib():
    _, tok = load_model("tiny-llama")
    return calibration_samples(tok, "embedded", 4, 32)


def _fails(argv: list[str], capsys, pattern: str) -> None:
    """The command exits with 2 and its error message matches ``pattern``."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert re.search(pattern, capsys.readouterr().err), pattern


IDS = torch.randint(0, 256, (64 * 4,), generator=torch.Generator().manual_seed(0))


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}


class CountingStream(Stream):
    """A Stream that records, at each block's turn, how many blocks hold real (non-meta) weights."""

    def enter(self, index, block):
        super().enter(index, block)
        blocks = structure(self.model).blocks
        self.resident = getattr(self, "resident", []) + [
            sum(any(p.device.type != "meta" for p in b.parameters()) for b in blocks)]


CASES = [("wanda", "uniform", None), ("sparsegpt", "uniform", None), ("wanda", "owl", None),
         ("magnitude", "uniform", None), ("wanda", "besa", {"epochs": 1})]


@pytest.mark.parametrize("metric,allocation,params", CASES)
def test_onloaded_and_streamed_pruning_equal_the_in_memory_run(saved, calib, tmp_path, metric, allocation, params):
    model, tok = load_model("tiny-llama")
    ref = prune(model, tok, metric=metric, allocation=allocation, sparsity=0.5, calibration=calib,
                allocation_params=params, progress=False)
    dense_weights = _weights(load_model("tiny-llama")[0])
    expected, expected_nll = _weights(model), window_nlls(model, IDS, 64, progress=False)
    assert any(not torch.equal(expected[n], dense_weights[n]) for n in expected)  # the run pruned something

    onloaded, _ = load_model("tiny-llama")
    onload = Onload("cpu")
    res = prune(onloaded, tok, metric=metric, allocation=allocation, sparsity=0.5, calibration=calib,
                allocation_params=params,
                progress=False, residency=onload)
    assert onload.moves >= 3 and res.profile.layers == ref.profile.layers
    assert all(torch.equal(w, expected[n]) for n, w in _weights(onloaded).items())
    assert torch.equal(window_nlls(onloaded, IDS, 64, progress=False, residency=onload), expected_nll)

    skeleton, _, source = load_skeleton(str(saved["tiny-llama"]))
    out = tmp_path / "out"
    out.mkdir()
    stream = CountingStream(skeleton, source, "cpu", tmp_path / "scratch", "disk", out)
    res = prune(skeleton, tok, metric=metric, allocation=allocation, sparsity=0.5, calibration=calib,
                allocation_params=params,
                progress=False, residency=stream)
    assert res.profile.layers == ref.profile.layers and res.report == ref.report
    assert max(stream.resident) == 1  # one block's weights at a time
    assert all(p.device.type == "meta" for p in skeleton.parameters())  # everything freed afterwards
    stream.finish()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(w, expected[n]) for n, w in _weights(loaded).items())
    assert torch.equal(window_nlls(skeleton, IDS, 64, progress=False, residency=stream.written_reader()),
                       expected_nll)
    assert not list((tmp_path / "scratch").iterdir())  # activation files deleted as the loop moved on


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-opt", "tiny-neox"])
def test_block_major_perplexity_equals_the_full_forward(saved, tmp_path, arch):
    """Every window through block l, then block l+1, then the model's own head: the same NLLs as one full
    forward per window (OPT's final norm and projections, NeoX's embed_out included)."""
    model, _ = load_model(arch)
    expected = window_nlls(model, IDS, 64, progress=False)
    for residency in (Onload("cpu"), Residency("cpu"), Residency("disk", tmp_path)):
        assert torch.equal(window_nlls(model, IDS, 64, progress=False, residency=residency), expected)
    skeleton, _, source = load_skeleton(str(saved[arch]))
    stream = Stream(skeleton, source, "cpu", tmp_path, "disk")
    assert torch.equal(window_nlls(skeleton, IDS, 64, progress=False, residency=stream), expected)
    assert stream.weight_hash(skeleton) == weight_hash(model)
    if arch == "tiny-llama":  # the dataset-level entry point passes the residency on (the skeleton has no weights)
        tok, text = load_model(arch)[1], str(_short_text(tmp_path))
        got = perplexity(skeleton, tok, text, "test", seqlen=64, progress=False,
                         residency=Stream(skeleton, source, "cpu", tmp_path, "disk"))
        assert got.n_windows >= 40 and got.ppl == perplexity(model, tok, text, "test", seqlen=64, progress=False).ppl


def test_streamed_pruning_of_another_architecture(saved, calib, tmp_path):
    model, tok = load_model("tiny-neox")
    prune(model, tok, metric="sparsegpt", allocation="owl", sparsity=0.6, calibration=calib, progress=False)
    skeleton, _, source = load_skeleton(str(saved["tiny-neox"]))
    (tmp_path / "out").mkdir()
    stream = Stream(skeleton, source, "cpu", tmp_path, "cpu", tmp_path / "out")
    prune(skeleton, tok, metric="sparsegpt", allocation="owl", sparsity=0.6, calibration=calib, progress=False,
          residency=stream)
    loaded = AutoModelForCausalLM.from_pretrained(stream.finish())
    assert all(torch.equal(w, _weights(model)[n]) for n, w in _weights(loaded).items())


def test_calibration_statistics_are_the_same_with_activations_off_the_device(calib, tmp_path):
    model, _ = load_model("tiny-llama")
    expected = calibrate(model, calib.input_ids, "dense", ("sq_norm", "xtx"), progress=False)
    for residency in (Residency("cpu"), Residency("disk", tmp_path)):
        got = calibrate(model, calib.input_ids, "dense", ("sq_norm", "xtx"), progress=False, residency=residency)
        for name, st in expected.items():
            assert torch.equal(got[name].sq_norm, st.sq_norm) and torch.equal(got[name].xtx, st.xtx), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_disk_activations_round_trip_bit_for_bit_and_delete_their_file(tmp_path, dtype):
    store = Activations(None, "disk", tmp_path)
    tensors = [torch.randn(1, 5 + i, 7).to(dtype) for i in range(3)]
    for t in tensors:
        store.append(t)
    assert len(store) == 3 and len(list(tmp_path.iterdir())) == 1
    assert all(torch.equal(a, b) and a.dtype == dtype for a, b in zip(store, tensors, strict=True))
    assert torch.equal(store[1], tensors[1])
    store.close()
    assert not list(tmp_path.iterdir())


def test_bad_places_and_directories_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"activations='gpu' is not allowed; allowed: \['device', 'cpu', 'disk'\]"):
        Residency("gpu")
    with pytest.raises(ValueError, match="activations='disk' needs an offload directory"):
        Residency("disk")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=f"offload_dir='{blocker}/sub' cannot be written"):
        Residency("disk", blocker / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot be written"):
            Residency("disk", ro)


def test_a_checkpoint_missing_a_tensor_is_refused_before_any_work(saved, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in saved["tiny-opt"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    victim = "model.decoder.layers.1.fc1.weight"
    del tensors[victim]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    skeleton, _, source = load_skeleton(str(broken))
    with pytest.raises(ValueError, match=f"lacks tensor '{victim}'"):
        Stream(skeleton, source, "cpu")
    save = tmp_path / "pruned"
    _fails(["prune", "--model", str(broken), "--offload-dir", str(tmp_path / "off"), "--save", str(save),
            "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "r.json")], capsys, f"lacks tensor '{victim}'")
    assert not save.exists() and not (tmp_path / "r.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned")]


def test_an_interrupted_streamed_prune_leaves_nothing_that_loads(saved, tmp_path, monkeypatch, capsys):
    calls = []
    original = Stream.exit

    def failing_exit(self, index, block):
        calls.append(index)
        if index == 1:
            raise RuntimeError("killed midway")
        original(self, index, block)

    monkeypatch.setattr(Stream, "exit", failing_exit)
    save = tmp_path / "pruned"
    with pytest.raises(RuntimeError, match="killed midway"):  # not a refusal: the crash keeps its traceback
        cli.main(["prune", "--model", str(saved["tiny-llama"]), "--offload-dir", str(tmp_path / "off"), "--save",
                  str(save), "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "r.json")])
    assert calls == [0, 1]
    assert not save.exists() and not (tmp_path / "r.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["off"]  # no hidden half-written sibling
    assert not list((tmp_path / "off").iterdir())  # scratch removed


def _short_text(tmp_path):
    """4 kB of text: 62 evaluation windows of 64 byte tokens (equality does not need the whole embedded
    test split's 1046, which five evaluations here, two block-major through disk, paid for in minutes)."""
    path = tmp_path / "text" / "short.txt"
    path.parent.mkdir()
    path.write_text(" ".join(f"block {i % 3} weight {i} pruned at {i % 10 / 10:.1f};" for i in range(120)))
    return path


def test_cli_streamed_prune_and_eval_equal_the_in_memory_commands(saved, tmp_path, capsys):
    text = str(_short_text(tmp_path))
    common = ["--model", str(saved["tiny-llama"]), "--metric", "wanda", "--allocation", "owl", "--nsamples", "4",
              "--seqlen", "32", "--eval", "--eval-dataset", text, "--eval-seqlen", "64"]
    cli.main(["prune", *common, "--save", str(tmp_path / "a"), "--out", str(tmp_path / "a.json")])
    cli.main(["prune", *common, "--offload-dir", str(tmp_path / "off"), "--save", str(tmp_path / "b"),
              "--format", "compressed", "--out", str(tmp_path / "b.json")])
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert a["metrics"] == b["metrics"] and a["profile"]["layers"] == b["profile"]["layers"]
    assert a["model"]["weight_sha256"] == b["model"]["weight_sha256"]
    assert b["residency"]["kind"] == "stream" and a["residency"]["kind"] == "memory"
    dense, _ = load_model(str(tmp_path / "a"))
    compressed, _ = load_model(str(tmp_path / "b"))  # the streamed output, stored compressed
    assert all(torch.equal(w, _weights(dense)[n]) for n, w in _weights(compressed).items())
    assert json.loads((tmp_path / "b" / "sparsity_profile.json").read_text())["layers"] == a["profile"]["layers"]
    capsys.readouterr()
    for extra in ([], ["--onload"], ["--offload-dir", str(tmp_path / "off")]):
        cli.main(["eval", "--model", str(tmp_path / "a"), "--dataset", text, "--seqlen", "64", *extra,
                  "--out", str(tmp_path / "e.json")])
        assert json.loads((tmp_path / "e.json").read_text())["metrics"]["perplexity"] == a["metrics"]["perplexity"]
    assert not list((tmp_path / "off").iterdir())


def test_cli_refusals_name_the_option(saved, tmp_path, capsys):
    model = str(saved["tiny-llama"])
    _fails(["prune", "--model", model, "--offload-dir", str(tmp_path), "--eval", "zero-shot"], capsys,
           "zero-shot accuracy needs the model in memory")
    _fails(["eval", "--model", model, "--onload", "--tasks", "embedded"], capsys,
           "zero-shot accuracy needs the model in memory")
    _fails(["eval", "--model", model, "--activations", "disk"], capsys, "activations='disk' needs an offload directory")
    _fails(["prune", "--model", model, "--onload", "--mode", "dense"], capsys, "mode='dense'.*use mode='sequential'")
    _fails(["eval", "--model", "tiny-llama", "--offload-dir", str(tmp_path)], capsys,
           "'tiny-llama' is built in memory and has no checkpoint to stream")
    _fails(["eval", "--model", model, "--onload", "--sparse-backend", "torch-csr"], capsys,
           "--sparse-backend needs the model in memory")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(["eval", "--model", model, "--offload-dir", str(blocker / "sub")], capsys,
           f"offload_dir='{blocker}/sub' cannot be written")
    assert not list(tmp_path.glob("*.json"))


def test_placed_model_chooses_the_residency(saved, tmp_path):
    with placed_model(str(saved["tiny-llama"]), offload_dir=tmp_path / "off") as (model, _tok, residency):
        assert isinstance(residency, Stream) and residency.out is None and residency.place == "disk"
        assert all(p.device.type == "meta" for p in model.parameters())
        scratch = list((tmp_path / "off").iterdir())
        assert len(scratch) == 1
    assert not scratch[0].exists()
    with placed_model("tiny-llama", onload=True) as (model, _tok, residency):
        assert isinstance(residency, Onload) and residency.place == "cpu"
    with placed_model("tiny-llama") as (model, _tok, residency):
        assert type(residency) is Residency and not residency.blockwise


def test_the_embedded_model_streams_from_its_cache_with_tied_embeddings(tmp_path):
    """SmolLM2-135M ties lm_head to the embeddings (no lm_head tensor on disk): streamed OWL pruning and
    block-major perplexity equal the in-memory run."""
    model, tok = load_model("smollm2-135m")
    calib = calibration_samples(tok, "embedded", 2, 64)
    ids = calib.input_ids[:, :64].reshape(-1)[:256]
    ref = prune(model, tok, metric="wanda", allocation="owl", sparsity=0.6, calibration=calib, progress=False)
    expected = window_nlls(model, ids, 128, progress=False)
    skeleton, _, source = load_skeleton("smollm2-135m")
    (tmp_path / "out").mkdir()
    stream = Stream(skeleton, source, "cpu", tmp_path, "disk", tmp_path / "out")
    assert "lm_head.weight" in stream.ties and not stream.reader_.has("lm_head.weight")
    res = prune(skeleton, tok, metric="wanda", allocation="owl", sparsity=0.6, calibration=calib,
                progress=False, residency=stream)
    assert res.profile.layers == ref.profile.layers and res.report == ref.report
    assert torch.equal(window_nlls(skeleton, ids, 128, progress=False, residency=stream.after_prune()), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_onload_to_a_gpu_keeps_blocks_on_the_cpu_between_turns(calib):
    model, tok = load_model("tiny-llama")
    expected = prune(load_model("tiny-llama")[0], tok, metric="wanda", allocation="uniform", sparsity=0.5,
                     calibration=calib, progress=False)
    onload = Onload("cuda")
    res = prune(model, tok, metric="wanda", allocation="uniform", sparsity=0.5, calibration=calib,
                progress=False, residency=onload)
    assert res.report["actual"] == pytest.approx(expected.report["actual"])
    assert all(p.device.type == "cpu" for p in model.parameters())
