"""Model loading and block / linear discovery."""

import pytest
import torch
from torch import nn

from workbench import models
from workbench.models import TINY_MODELS, get_blocks, load_model, prunable_linears

EXPECTED_LINEARS = {
    "tiny-llama": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "tiny-opt": ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"],
    "tiny-neox": ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
}
EXPECTED_LINEARS["tiny-mistral"] = EXPECTED_LINEARS["tiny-qwen2"] = EXPECTED_LINEARS["tiny-llama"]
BLOCK_PREFIX = {"tiny-llama": "model.layers", "tiny-mistral": "model.layers", "tiny-qwen2": "model.layers",
                "tiny-opt": "model.decoder.layers", "tiny-neox": "gpt_neox.layers"}


@pytest.mark.parametrize("arch", TINY_MODELS)
def test_discovery_on_every_architecture(arch):
    model, tokenizer = load_model(arch)
    blocks = get_blocks(model)
    assert len(blocks) == 3
    linears = prunable_linears(model)
    expected = [f"{BLOCK_PREFIX[arch]}.{i}.{name}" for i in range(3) for name in EXPECTED_LINEARS[arch]]
    assert sorted(linears) == sorted(expected)
    # the complement: every nn.Linear not listed is the output head, never a block linear
    others = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in linears]
    assert all("lm_head" in n or "embed_out" in n for n in others), others
    assert not any("embed" in n or "lm_head" in n for n in linears)
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 258)


def test_tiny_model_is_seeded():
    a, _ = load_model("tiny-llama", seed=3)
    b, _ = load_model("tiny-llama", seed=3)
    c, _ = load_model("tiny-llama", seed=4)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.workbench_weight_hash == b.workbench_weight_hash != c.workbench_weight_hash


def test_byte_tokenizer_round_trips_and_adds_bos():
    tok = models.byte_tokenizer()
    text = "Sparsity — 50 % ünïcode"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id == 256
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_weight_hash_sees_a_single_changed_weight(tiny):
    model, _ = load_model("tiny-llama")
    before = models.weight_hash(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0, 0] += 1.0
    assert models.weight_hash(model) != before


def test_dtype_and_bad_names(tmp_path):
    model, _ = load_model("tiny-llama", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='int3'"):
        load_model("tiny-llama", dtype="int3")
    with pytest.raises(ValueError, match="model='no-such-model-xyz'.*Allowed"):
        load_model("no-such-model-xyz")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="arch='tiny-gpt9'"):
        models.tiny_config("tiny-gpt9")


def test_local_directory_round_trip(tmp_path):
    model, tok = load_model("tiny-qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    assert type(again).__name__ == "Qwen2ForCausalLM"
    ids = tok2("abc", return_tensors="pt").input_ids
    assert torch.allclose(model(ids).logits, again(ids).logits)


@pytest.mark.slow
def test_embedded_model_is_a_clean_llama_from_cache(smollm, monkeypatch):
    model, tokenizer = smollm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert len(get_blocks(model)) == 30
    linears = prunable_linears(model)
    assert len(linears) == 30 * 7
    assert linears["model.layers.0.mlp.down_proj"].weight.shape == (576, 1536)
    assert next(model.parameters()).dtype == torch.float32
    # a second load reads the safetensors cache: building from GGUF again would raise here
    monkeypatch.setattr(models, "_build_embedded_cache", lambda *a: pytest.fail("rebuilt the cache"))
    again, _ = load_model("smollm2-135m")
    assert again.workbench_weight_hash == model.workbench_weight_hash
    ids = tokenizer("def main():\n    return 0", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
