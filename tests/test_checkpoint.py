"""Compressed checkpoints: the on-disk layout against a hand computation, bit-identical round trips
(unstructured, 2:4, sharded), same perplexity after reload, and refusals that write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from workbench.checkpoint import (
    checkpoint_bytes,
    compress_weight,
    decompress_weight,
    load_compressed,
    resolve_format,
    save_pruned,
)
from workbench.cli import main
from workbench.data import eval_tokens
from workbench.evaluate import perplexity_from_ids
from workbench.models import load_model, prunable_linears
from workbench.prune import prune


def _pruned(pattern: str = "unstructured", sparsity: float = 0.5):
    model, tok = load_model("tiny-llama")
    result = prune(model, tok, metric="magnitude", sparsity=sparsity, pattern=pattern, progress=False)
    return model, tok, result.profile


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_bitmask_layout_matches_a_hand_computation():
    w = torch.tensor([[0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0],
                      [3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0],
                      [0.0] * 10])
    parts = compress_weight(w, "sparse-bitmask")
    assert parts["shape"].tolist() == [3, 10]
    assert parts["compressed"].tolist() == [1.5, -2.0, 3.0, 4.0, 5.0]      # row-major non-zeros
    assert parts["row_offsets"].tolist() == [0, 2, 5]                       # where each row's values start
    # one bit per weight, bit j of byte k is column 8k+j (little-endian), rows padded to 2 bytes
    expected = [[sum(1 << j for j in range(8) if 8 * k + j < 10 and w[r, 8 * k + j] != 0) for k in range(2)]
                for r in range(3)]
    assert parts["bitmask"].tolist() == expected == [[2, 2], [9, 1], [0, 0]]
    assert torch.equal(decompress_weight(parts, "sparse-bitmask"), w)


def test_two_four_layout_keeps_two_values_per_group_of_four():
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
                      [3.0, 0.0, 0.0, 0.0, 0.0, -1.0, 7.0, 0.0]])
    parts = compress_weight(w, "sparse-24-bitmask")
    assert parts["compressed"].shape == (2, 4)                               # half of each row
    # the non-zeros, topped up with the group's first zeros: kept columns per row
    kept = [[1, 3, 4, 5], [0, 1, 5, 6]]
    assert parts["compressed"].tolist() == [[w[r, c].item() for c in kept[r]] for r in range(2)]
    assert parts["bitmask"].tolist() == [[sum(1 << c for c in kept[r])] for r in range(2)]
    assert torch.equal(decompress_weight(parts, "sparse-24-bitmask"), w)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        compress_weight(torch.ones(2, 8), "sparse-24-bitmask")


@pytest.mark.parametrize("pattern,layout", [("unstructured", "sparse-bitmask"), ("2:4", "sparse-24-bitmask")])
def test_compressed_round_trip_is_bit_identical_with_the_same_perplexity(tmp_path, pattern, layout):
    model, tok, profile = _pruned(pattern)
    out = save_pruned(model, tok, profile, tmp_path / "c", "compressed", pattern)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["sparsity_config"]["format"] == layout
    assert config["sparsity_config"]["targets"] == sorted(prunable_linears(model))
    stored = load_file(out / "model.safetensors")
    assert not any(f"{name}.weight" in stored for name in prunable_linears(model))  # only compressed parts
    again, _ = load_model(str(out))
    _assert_same_weights(model, again)
    ids = eval_tokens(tok, "embedded", "test")[0][: 4 * 128]
    assert perplexity_from_ids(again, ids, 128, progress=False) == perplexity_from_ids(model, ids, 128,
                                                                                       progress=False)


def test_compressed_is_smaller_and_shrinks_with_sparsity(tmp_path):
    sizes = {}
    for sparsity in (0.5, 0.8):
        model, tok, profile = _pruned(sparsity=sparsity)
        sizes[sparsity] = checkpoint_bytes(save_pruned(model, tok, profile, tmp_path / f"c{sparsity}", "compressed"))
    dense = checkpoint_bytes(save_pruned(model, tok, profile, tmp_path / "d"))
    linear_bytes = sum(lin.weight.numel() for lin in prunable_linears(model).values()) * 4
    # 30% more zeros saves 30% of the linears' float32 values (plus row offsets), the bitmask stays
    assert sizes[0.5] - sizes[0.8] == pytest.approx(0.3 * linear_bytes, rel=0.02)
    assert sizes[0.8] < sizes[0.5] < dense


def test_sharded_compressed_checkpoint_round_trips(tmp_path):
    model, tok, profile = _pruned()
    out = save_pruned(model, tok, profile, tmp_path / "c", "sparse-bitmask", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1
    name = next(iter(prunable_linears(model)))
    assert f"{name}.weight.bitmask" in index and f"{name}.weight" not in index
    _assert_same_weights(model, load_compressed(out))


def test_formats_refused_with_the_allowed_values():
    assert resolve_format("compressed", "2:4") == "sparse-24-bitmask"
    assert resolve_format("compressed", "4:8") == "sparse-bitmask"
    with pytest.raises(ValueError, match=r"format='zip' is not supported; allowed: \['dense', 'compressed'"):
        resolve_format("zip", "unstructured")
    with pytest.raises(ValueError, match="needs a 2:4 profile, but the pattern is 'unstructured'"):
        resolve_format("sparse-24-bitmask", "unstructured")


def test_cli_refuses_a_24_format_for_an_unstructured_run_before_pruning(tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main(["prune", "--model", "tiny-llama", "--metric", "magnitude", "--save", str(out),
                 "--format", "sparse-24-bitmask", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "needs a 2:4 profile" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_saves_compressed_and_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["prune", "--model", "tiny-llama", "--metric", "magnitude", "--pattern", "2:4", "--save", str(out),
                 "--format", "compressed", "--eval", "--eval-seqlen", "128", "--out", str(tmp_path / "p.json")]) == 0
    assert "pruned model (sparse-24-bitmask)" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--seqlen", "128", "--out", str(tmp_path / "e.json")]) == 0
    pruned = json.loads((tmp_path / "p.json").read_text())["metrics"]["perplexity"]
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["perplexity"] == pruned


def test_a_checkpoint_missing_a_part_is_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    model, tok, profile = _pruned()
    out = save_pruned(model, tok, profile, tmp_path / "c", "compressed")
    tensors = load_file(out / "model.safetensors")
    name = f"{next(iter(prunable_linears(model)))}.weight"
    del tensors[f"{name}.bitmask"]
    save_file(tensors, out / "model.safetensors")
    with pytest.raises(ValueError, match=rf"compressed tensor {name} lacks \['{name}.bitmask'\]"):
        load_compressed(out)
