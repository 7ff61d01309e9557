"""Pruned + quantized checkpoints in compressed-tensors' ``pack-quantized`` layout: the integers against an
independent bit-level decoding, bit-for-bit round trips (RTN, GPTQ after Wanda, SparseGPT + GPTQ joint; channels
and groups; symmetric and asymmetric; 2 to 8 bits), the library's own decompressor and transformers reading
what we write, the pruning bitmask, and refusals that write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.checkpoint import checkpoint_bytes, load_compressed, save_pruned
from workbench.cli import main
from workbench.data import eval_tokens
from workbench.evaluate import perplexity_from_ids
from workbench.models import load_model, prunable_linears
from workbench.prune import prune


def _quantized(metric="wanda", sparsity=0.5, **quant):
    model, tok = load_model("tiny-llama")
    result = prune(model, tok, metric=metric, sparsity=sparsity, progress=False, **quant)
    return model, tok, result.profile


def _bits_of(a: torch.Tensor) -> bytes:
    return a.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _unpack_rows(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Independent decoding of the library's dense packing: element j of a row sits at bits [j*b, j*b + b) of the
    row's little-endian bit stream of int32 words, stored as q + 2^(b-1)."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    out = torch.empty(packed.shape[0], cols, dtype=torch.int64)
    for j in range(cols):
        start = j * bits
        word, offset = divmod(start, 32)
        value = words[:, word] >> offset
        if offset + bits > 32:  # the element straddles two words
            value = value | (words[:, word + 1] << (32 - offset))
        out[:, j] = value & ((1 << bits) - 1)
    return out - 2 ** (bits - 1)


CASES = [  # metric, quantization: every grid shape, bit width and pipeline
    ("wanda", {"wbits": 4, "group_size": 16}),
    ("wanda", {"wbits": 3, "symmetric": True}),
    ("wanda", {"wbits": 2, "group_size": 32, "quant_method": "gptq"}),
    ("sparsegpt", {"wbits": 8, "quant_method": "gptq"}),  # the joint OBS pass
    ("sparsegpt", {"wbits": 4, "group_size": 32, "symmetric": True, "quant_method": "gptq-after"}),
]


@pytest.mark.parametrize(("metric", "quant"), CASES)
def test_pack_quantized_round_trip_is_bit_for_bit(tmp_path, metric, quant):
    model, tok, profile = _quantized(metric, **quant)
    out = save_pruned(model, tok, profile, tmp_path / "q", "pack-quantized")
    back = load_compressed(out)
    mine, theirs = model.state_dict(), back.state_dict()
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        assert mine[key].dtype == theirs[key].dtype and _bits_of(mine[key]) == _bits_of(theirs[key]), key
    ids, _ = eval_tokens(tok, "embedded", "test")
    assert perplexity_from_ids(back, ids[:512], 128) == perplexity_from_ids(model, ids[:512], 128)
    again = save_pruned(back, tok, profile, tmp_path / "again", "pack-quantized")  # the grids came back too
    assert load_file(again / "model.safetensors").keys() == load_file(out / "model.safetensors").keys()
    for key, value in load_file(again / "model.safetensors").items():
        assert _bits_of(value) == _bits_of(load_file(out / "model.safetensors")[key]), key


def test_stored_integers_scales_and_zero_points_decode_to_the_weights(tmp_path):
    """Each weight equals scale * (q - z) with q and z read from the packed words by an independent decoder."""
    model, tok, profile = _quantized("wanda", wbits=3, group_size=16)
    stored = load_file(save_pruned(model, tok, profile, tmp_path / "q", "pack-quantized") / "model.safetensors")
    for name, linear in prunable_linears(model).items():
        rows, cols = linear.weight.shape
        assert f"{name}.weight" not in stored
        assert stored[f"{name}.weight_packed"].dtype == torch.int32
        assert stored[f"{name}.weight_packed"].shape == (rows, -(-cols * 3 // 32))
        assert stored[f"{name}.weight_shape"].tolist() == [rows, cols]
        q = _unpack_rows(stored[f"{name}.weight_packed"], 3, cols)
        z = _unpack_rows(stored[f"{name}.weight_zero_point"].t().contiguous(), 3, rows).t()  # packed along rows
        scale = stored[f"{name}.weight_scale"]
        assert scale.dtype == torch.float32 and scale.shape == (rows, cols // 16)
        assert q.min() >= -4 and q.max() <= 3
        expected = scale.repeat_interleave(16, 1) * (q - z.repeat_interleave(16, 1)).float()
        assert torch.equal(expected, linear.weight), name


def test_the_library_decompressor_gives_our_weights(tmp_path):
    """compressed-tensors' own PackedQuantizationCompressor.decompress, on our parts and our config group."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    for quant in ({"wbits": 4, "group_size": 32}, {"wbits": 8, "symmetric": True}):
        model, tok, profile = _quantized("wanda", **quant)
        out = save_pruned(model, tok, profile, tmp_path / str(quant["wbits"]), "pack-quantized")
        config = json.loads((out / "config.json").read_text())["quantization_config"]
        assert config["format"] == "pack-quantized" and config["quantization_status"] == "compressed"
        scheme = QuantizationScheme.model_validate(config["config_groups"]["group_0"])
        assert sorted(scheme.targets) == sorted(prunable_linears(model))
        stored = load_file(out / "model.safetensors")
        for name, linear in prunable_linears(model).items():
            parts = {k.removeprefix(f"{name}."): v for k, v in stored.items() if k.startswith(f"{name}.weight_")}
            parts.pop("weight_bitmask")
            weight = PackedQuantizationCompressor.decompress(parts, scheme)["weight"]
            assert torch.equal(weight.to(linear.weight.dtype), linear.weight), name


def test_transformers_reads_a_symmetric_pack_quantized_checkpoint(tmp_path):
    """from_pretrained keeps the linears compressed and computes the same logits (our bitmask is an extra
    tensor it ignores)."""
    from transformers import AutoModelForCausalLM

    model, tok, profile = _quantized("wanda", wbits=4, group_size=16, symmetric=True)
    out = save_pruned(model, tok, profile, tmp_path / "q", "pack-quantized")
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = eval_tokens(tok, "embedded", "test")[0][:64][None]
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_the_bitmask_keeps_the_pruning_mask_apart_from_weights_rounded_to_zero(tmp_path):
    model, tok, profile = _quantized("magnitude", sparsity=0.5, wbits=2, group_size=16)
    out = save_pruned(model, tok, profile, tmp_path / "q", "pack-quantized")
    from compressed_tensors.utils import unpack_bitmasks

    stored = load_file(out / "model.safetensors")
    rounded_to_zero = 0
    for name, linear in prunable_linears(model).items():
        kept = unpack_bitmasks(stored[f"{name}.weight_bitmask"], list(linear.weight.shape))
        assert kept.sum() == linear.weight.numel() - round(linear.weight.numel() * 0.5)  # 50% pruned per layer
        assert not linear.weight[~kept].any()
        rounded_to_zero += int((linear.weight[kept] == 0).sum())
    assert rounded_to_zero > 0  # at 2 bits some kept weights round to zero: the bitmask still marks them kept
    name = next(iter(prunable_linears(model)))  # a checkpoint whose bitmask disagrees with its integers: refused
    kept = unpack_bitmasks(stored[f"{name}.weight_bitmask"], list(model.get_submodule(name).weight.shape))
    from compressed_tensors.utils import pack_bitmasks

    stored[f"{name}.weight_bitmask"] = pack_bitmasks(torch.zeros_like(kept))
    save_file(stored, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{name}: a weight the bitmask marks pruned is not zero"):
        load_compressed(out)


def test_pack_quantized_is_smaller_than_dense(tmp_path):
    model, tok, profile = _quantized("wanda", wbits=4, group_size=32)
    dense = checkpoint_bytes(save_pruned(model, tok, profile, tmp_path / "d", "dense"))
    packed = checkpoint_bytes(save_pruned(model, tok, profile, tmp_path / "p", "pack-quantized"))
    linear_bytes = sum(lin.weight.numel() * 4 for lin in prunable_linears(model).values())
    # float32 linears become 4-bit integers (1/8), a bit of mask (1/32) and scales + zero points per 32 (~1/32)
    assert packed < dense - linear_bytes * (1 - 1 / 8 - 1 / 32 - 1 / 16)


def test_a_weight_changed_after_quantizing_is_refused_and_nothing_written(tmp_path):
    model, tok, profile = _quantized("wanda", wbits=4)
    linear = next(iter(prunable_linears(model).values()))
    with torch.no_grad():
        linear.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="is not on the grid it was quantized on"):
        save_pruned(model, tok, profile, tmp_path / "q", "pack-quantized")
    assert not (tmp_path / "q").exists()


def test_cli_refuses_pack_quantized_without_quantization_before_pruning(tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main(["prune", "--model", "tiny-llama", "--metric", "magnitude", "--save", str(out),
                 "--format", "pack-quantized", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code != 0 and "format='pack-quantized'" in err and "wbits" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "p.json").exists()


def test_cli_saves_pack_quantized_and_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["prune", "--model", "tiny-llama", "--metric", "wanda", "--wbits", "4", "--group-size", "32",
                 "--save", str(out), "--format", "pack-quantized", "--eval", "--eval-seqlen", "128",
                 "--out", str(tmp_path / "p.json")]) == 0
    assert "pruned model (pack-quantized)" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--seqlen", "128", "--out", str(tmp_path / "e.json")]) == 0
    pruned = json.loads((tmp_path / "p.json").read_text())["metrics"]["perplexity"]
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["perplexity"] == pruned


def test_a_streamed_run_exports_the_same_pack_quantized_checkpoint_as_one_in_memory(tmp_path):
    model, tok = load_model("tiny-llama")
    model.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    flags = ["--metric", "wanda", "--sparsity", "0.5", "--wbits", "4", "--group-size", "16", "--quant-method",
             "gptq", "--format", "pack-quantized", "--nsamples", "4", "--seqlen", "64"]
    assert main(["prune", "--model", str(tmp_path / "src"), *flags, "--offload-dir", str(tmp_path / "off"),
                 "--save", str(tmp_path / "streamed"), "--out", str(tmp_path / "a.json")]) == 0
    assert main(["prune", "--model", str(tmp_path / "src"), *flags, "--save", str(tmp_path / "memory"),
                 "--out", str(tmp_path / "b.json")]) == 0
    streamed = {k: v for f in sorted((tmp_path / "streamed").glob("*.safetensors")) for k, v in load_file(f).items()}
    memory = load_file(tmp_path / "memory" / "model.safetensors")  # the streamed run writes a shard per block
    assert streamed.keys() == memory.keys() and any(k.endswith(".weight_packed") for k in streamed)
    for key, value in memory.items():
        assert _bits_of(streamed[key]) == _bits_of(value), key


def test_a_grid_never_outlives_its_weights(tmp_path):
    """Pruning again or restoring the dense weights drops the kept grid: a later pack-quantized save cannot store
    integers of weights that are no longer on it (nor a mask that is no longer the model's)."""
    from workbench.prune import DenseCache

    model, tok, profile = _quantized("wanda", wbits=4, group_size=16)
    back = load_compressed(save_pruned(model, tok, profile, tmp_path / "q", "pack-quantized"))
    assert all(hasattr(lin, "quant_grid") for lin in prunable_linears(back).values())
    assert all(lin.quant_grid.scale.device.type == "cpu" for lin in prunable_linears(back).values())
    again = prune(back, tok, metric="magnitude", sparsity=0.6, progress=False)  # 16 bits: no new grid
    assert not any(hasattr(lin, "quant_grid") for lin in prunable_linears(back).values())
    with pytest.raises(ValueError, match="format='pack-quantized' stores the integers of a quantized run"):
        save_pruned(back, tok, again.profile, tmp_path / "stale", "pack-quantized")
    assert not (tmp_path / "stale").exists()
    model, tok, _ = _quantized("wanda", wbits=4)
    cache = DenseCache.build(load_model("tiny-llama")[0], __import__("workbench.data", fromlist=["x"])
                             .calibration_samples(tok, "embedded", 2, 32), ("sq_norm",), progress=False)
    cache.restore(model)
    assert not any(hasattr(lin, "quant_grid") for lin in prunable_linears(model).values())


def test_linears_on_different_grids_are_refused_by_name(tmp_path):
    from workbench.pruners import quantize_linear
    from workbench.quantize import QuantSpec

    model, tok, profile = _quantized("wanda", wbits=4, group_size=16)
    name, linear = next(iter(prunable_linears(model).items()))
    quantize_linear(linear, QuantSpec(8), "rtn")
    with pytest.raises(ValueError, match=rf"quantized on 2 different grids \(e.g. \['{name}'\]"):
        save_pruned(model, tok, profile, tmp_path / "mixed", "pack-quantized")
    assert not (tmp_path / "mixed").exists()
