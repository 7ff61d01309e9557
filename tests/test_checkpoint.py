"""Compressed checkpoints: the on-disk layout against a hand computation and against a directory written
by compressed-tensors 0.14.0.1 itself (tests/data/compressed-tensors-0.14.json, made by
scripts/check_checkpoint_compressed_tensors.py, which also proves the library reads ours), bit-identical
round trips (unstructured, 2:4, sharded), same perplexity after reload, and refusals that write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
from workbench.profile import SparsityProfile
from workbench.prune import prune

# config.json and the tensors (dtype, shape, exact values) of directories written by compressed-tensors 0.14.0.1,
# as JSON text (the repository admits no .safetensors files); the fixture below rebuilds the directories
GOLDEN = Path(__file__).parent / "data" / "compressed-tensors-0.14.json"
LAYOUTS = {"sparse-bitmask": "unstructured", "sparse-24-bitmask": "2:4"}
# the quantization_config keys compressed-tensors 0.14 writes for a sparse-only model, and no other: any
# other key is read as a quantization config, which its ModelCompressor.from_compression_config refuses
QUANT_KEYS = ["quant_method", "sparsity_config", "transform_config", "version"]
SPARSITY_KEYS = ["format", "global_sparsity", "ignore", "registry_requires_subclass", "sparsity_structure",
                 "targets"]
PARTS = {"sparse-bitmask": {"shape": ((2,), torch.int64), "bitmask": (None, torch.uint8),
                            "row_offsets": (None, torch.int64), "compressed": (None, None)},
         "sparse-24-bitmask": {"shape": ((2, 1), torch.int64), "bitmask": (None, torch.uint8),
                               "compressed": (None, None)}}


def _pruned(pattern: str = "unstructured", sparsity: float = 0.5):
    model, tok = load_model("tiny-llama")
    result = prune(model, tok, metric="magnitude", sparsity=sparsity, pattern=pattern, progress=False)
    return model, tok, result.profile


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    """The directories compressed-tensors 0.14 wrote: dense/, sparse-bitmask/, sparse-24-bitmask/."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ct014")
    data = json.loads(GOLDEN.read_text())
    for name in ("dense", *LAYOUTS):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(data[name]["config"]))
        tensors = {}
        for key, t in data[name]["tensors"].items():
            dtype = getattr(torch, t["dtype"])
            tensors[key] = torch.tensor(t["values"], dtype=torch.float64 if dtype.is_floating_point else dtype
                                        ).to(dtype).reshape(t["shape"])
        save_file(tensors, root / name / "model.safetensors", metadata={"format": "pt"})
    return root


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _assert_layout(stored: dict[str, torch.Tensor], linears: list[str], layout: str) -> None:
    """Each linear stored as ``<linear>.<part>`` (no ``.weight``), each part with the library's shape and dtype."""
    for name in linears:
        assert f"{name}.weight" not in stored
        assert not any(k.startswith(f"{name}.weight.") for k in stored)
        for part, (shape, dtype) in PARTS[layout].items():
            value = stored[f"{name}.{part}"]
            assert shape is None or tuple(value.shape) == shape, (name, part, value.shape)
            assert dtype is None or value.dtype == dtype, (name, part, value.dtype)


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
    assert parts["shape"].tolist() == [3, 10] and parts["shape"].dtype == torch.int64
    assert parts["bitmask"].dtype == torch.uint8 and parts["row_offsets"].dtype == torch.int64
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
    assert parts["shape"].tolist() == [[2], [8]]                             # (2, 1), as the library writes it
    assert parts["compressed"].shape == (2, 4)                               # half of each row
    # the two largest magnitudes per group as torch.topk picks them (the library's choice; where a group
    # has fewer than two non-zeros the zeros it keeps are topk's, pinned by the golden directory below)
    kept = [[1, 3, 6, 7], [0, 2, 5, 6]]
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
    assert sorted(config) == QUANT_KEYS and sorted(config["sparsity_config"]) == SPARSITY_KEYS
    assert config["quant_method"] == "compressed-tensors" and config["transform_config"] == {}
    assert config["sparsity_config"]["format"] == layout
    assert config["sparsity_config"]["targets"] == sorted(prunable_linears(model))
    _assert_layout(load_file(out / "model.safetensors"), list(prunable_linears(model)), layout)
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
    assert f"{name}.bitmask" in index and f"{name}.weight" not in index
    _assert_same_weights(model, load_compressed(out))


def test_formats_refused_with_the_allowed_values():
    assert resolve_format("compressed", "2:4") == "sparse-24-bitmask"
    assert resolve_format("compressed", "4:8") == "sparse-bitmask"
    with pytest.raises(ValueError, match=r"format='zip' is not allowed; allowed: \['dense', 'compressed'"):
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
    name = next(iter(prunable_linears(model)))
    del tensors[f"{name}.bitmask"]
    save_file(tensors, out / "model.safetensors")
    with pytest.raises(ValueError, match=rf"compressed tensor {name} lacks \['{name}.bitmask'\]"):
        load_compressed(out)


def _golden_linears(golden: Path) -> list[str]:
    return sorted(k.removesuffix(".bitmask") for k in load_file(golden / "sparse-24-bitmask" / "model.safetensors")
                  if k.endswith(".bitmask"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_directory_written_by_compressed_tensors_014_loads_bit_for_bit(golden, layout):
    dense = load_file(golden / "dense" / "model.safetensors")
    stored = load_file(golden / layout / "model.safetensors")
    _assert_layout(stored, _golden_linears(golden), layout)  # the facts our writer follows, as the library wrote them
    assert len(_golden_linears(golden)) == 7
    config = json.loads((golden / layout / "config.json").read_text())["quantization_config"]
    assert sorted(config) == QUANT_KEYS and sorted(config["sparsity_config"]) == SPARSITY_KEYS
    state = load_compressed(golden / layout).state_dict()
    for key, value in dense.items():
        assert _same_bits(state[key], value), key
    assert _same_bits(state["lm_head.weight"], dense["model.embed_tokens.weight"])  # tied


@pytest.mark.parametrize("layout,pattern", list(LAYOUTS.items()))
def test_our_writer_stores_the_same_bytes_as_compressed_tensors_014(golden, tmp_path, layout, pattern):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(golden / "dense", dtype=torch.float32)
    linears = prunable_linears(model)
    assert sorted(linears) == _golden_linears(golden)
    profile = SparsityProfile(layers={n: float((m.weight == 0).float().mean()) for n, m in linears.items()},
                              numels={n: m.weight.numel() for n, m in linears.items()}, target=0.5,
                              allocator="uniform")
    out = save_pruned(model, None, profile, tmp_path / "c", layout, pattern)
    ours, theirs = load_file(out / "model.safetensors"), load_file(golden / layout / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:  # names, dtypes, shapes and bytes, the bitmask's padding and the zeros 2:4 keeps included
        assert _same_bits(ours[key], theirs[key]), key
    mine = json.loads((out / "config.json").read_text())["quantization_config"]
    library = json.loads((golden / layout / "config.json").read_text())["quantization_config"]
    assert sorted(mine) == sorted(library) and sorted(mine["sparsity_config"]) == sorted(library["sparsity_config"])
    for key in ("format", "sparsity_structure", "ignore", "registry_requires_subclass"):
        assert mine["sparsity_config"][key] == library["sparsity_config"][key], key
    assert mine["quant_method"] == library["quant_method"] and mine["transform_config"] == library["transform_config"]


def test_the_workbench_earlier_weight_dot_part_naming_still_loads(golden, tmp_path):
    """Checkpoints written before the names followed the library (<linear>.weight.<part>, a (2,) 2:4 shape)."""
    from safetensors.torch import save_file

    out = tmp_path / "old"
    shutil.copytree(golden / "sparse-24-bitmask", out)
    tensors = load_file(out / "model.safetensors")
    old = {}
    for key, value in tensors.items():
        base, _, part = key.rpartition(".")
        old[f"{base}.weight.{part}" if part in PARTS["sparse-24-bitmask"] else key] = (
            value.flatten() if part == "shape" else value)
    save_file(old, out / "model.safetensors")
    dense = load_file(golden / "dense" / "model.safetensors")
    state = load_compressed(out).state_dict()
    assert all(_same_bits(state[k], v) for k, v in dense.items())
