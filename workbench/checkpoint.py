"""Pruned checkpoints on disk: dense safetensors, or compressed in compressed-tensors' sparse layouts.

``dense`` is what ``save_pretrained`` writes (zeros stored; any ``from_pretrained`` reads it).
``sparse-bitmask`` stores each pruned linear as its non-zero values, a bit per weight saying where they
go, and per-row offsets; ``sparse-24-bitmask`` stores a 2:4 matrix as its two kept values per group of
four plus the bitmask. The layout is that of compressed-tensors 0.14.0.1, the last release that wrote
and read sparse layouts (0.15 removed them, and transformers needs >= 0.15): tensors
``<linear>.shape`` / ``.compressed`` / ``.bitmask`` (/ ``.row_offsets``) in place of ``<linear>.weight``,
the library's dtypes, shapes and bit order, and ``config.json``'s ``quantization_config`` with exactly the
keys that release writes. ``scripts/check_checkpoint_compressed_tensors.py`` proves it both ways with
that release installed apart (its ``ModelCompressor`` decompresses ours bit for bit; we read its own
bit for bit), and ``tests/data/compressed-tensors-0.14.json`` holds directories it wrote (as JSON
text), which the tests read and rewrite byte for byte. The writer and reader live here (the configs and bit packing come
from the pinned compressed-tensors); :func:`load_compressed` (and ``load_model``) read such a
directory back bit for bit, and also the workbench's earlier ``<linear>.weight.<part>`` naming.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .backend.reference import check_nm
from .errors import WorkbenchError
from .profile import SparsityProfile
from .quantize import QuantGrid, QuantSpec
from .registry import Plugin, Registry
from .results import atomic_directory

FORMATS: Registry[Plugin] = Registry("checkpoint format", "format")
FORMATS.add("dense", Plugin("dense", "zeros stored; any from_pretrained reads it"))
FORMATS.add("compressed", Plugin("compressed", "sparse-24-bitmask for a 2:4 pattern, else sparse-bitmask"))
FORMATS.add("sparse-bitmask", Plugin("sparse-bitmask", "compressed-tensors' bitmask layout: values, bits, row offsets"))
FORMATS.add("sparse-24-bitmask", Plugin("sparse-24-bitmask", "compressed-tensors' 2:4 layout: two values per four"))
FORMATS.add("pack-quantized", Plugin("pack-quantized", "compressed-tensors' packed integers of a quantized run "
                                     "(wbits < 16), with the pruning mask as a bitmask"))
_PARTS = {"sparse-bitmask": ("shape", "compressed", "bitmask", "row_offsets"),
          "sparse-24-bitmask": ("shape", "compressed", "bitmask")}
_PACKED = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_bitmask")


def resolve_format(fmt: str, pattern: str, wbits: int = 16) -> str:
    """The on-disk layout for ``--format``, the run's pattern and bits; ``compressed`` picks 2:4 or bitmask."""
    FORMATS.check(fmt)
    if fmt == "pack-quantized" and wbits == 16:
        raise WorkbenchError("format='pack-quantized' stores the integers of a quantized run: it needs wbits in "
                             "[2, 3, 4, 8], got 16; allowed without quantization: ['dense', 'compressed', "
                             "'sparse-bitmask', 'sparse-24-bitmask']")
    if fmt == "compressed":
        return "sparse-24-bitmask" if pattern == "2:4" else "sparse-bitmask"
    if fmt == "sparse-24-bitmask" and pattern != "2:4":
        raise WorkbenchError(f"format='sparse-24-bitmask' needs a 2:4 profile, but the pattern is {pattern!r}; "
                              "allowed for it: ['dense', 'compressed', 'sparse-bitmask']")
    return fmt


def save_pruned(model: nn.Module, tokenizer, profile: SparsityProfile, directory: str | Path,
                fmt: str = "dense", pattern: str = "unstructured", max_shard_size: str = "5GB") -> Path:
    """Write the pruned model, its tokenizer and ``sparsity_profile.json`` atomically in layout ``fmt``;
    nothing appears under ``directory`` unless the whole checkpoint was written."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        complete_checkpoint(tmp, tokenizer, profile, fmt, pattern, model)
    return directory


def quant_grids(model: nn.Module) -> dict[str, QuantGrid]:
    """The grids a run quantized the model's linears on (``linear.quant_grid``), by module name."""
    return {name: module.quant_grid for name, module in model.named_modules() if hasattr(module, "quant_grid")}


def complete_checkpoint(directory: Path, tokenizer, profile: SparsityProfile, fmt: str = "dense",
                        pattern: str = "unstructured", model: nn.Module | None = None) -> None:
    """Add the tokenizer and ``sparsity_profile.json`` to a directory of dense safetensors shards and
    config, and store it in layout ``fmt`` (a streamed prune writes its shards itself, then calls this);
    ``model``: names the stored tensors as transformers saved them, and holds the quantization grids that
    ``pack-quantized`` stores the integers of."""
    grids = quant_grids(model) if model is not None else {}
    specs = {g.spec for g in grids.values()}
    if len(specs) > 1:
        from collections import Counter

        common = Counter(g.spec for g in grids.values()).most_common(1)[0][0]
        odd = sorted(n for n, g in grids.items() if g.spec != common)
        raise WorkbenchError(f"the model's linears were quantized on {len(specs)} different grids (e.g. {odd[:2]} "
                             f"differ from the others' {common}); a checkpoint holds one: save it with "
                             "format='dense'")
    wbits = next(iter(specs)).wbits if specs else 16
    layout = resolve_format(fmt, pattern, wbits)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    profile.save(directory / "sparsity_profile.json")
    if layout == "dense":
        return
    stored = {name: key for key, name in checkpoint_names(model, _stored_keys(directory), strict=False).items()} \
        if model is not None else {}
    if layout == "pack-quantized":
        missing = sorted(set(profile.layers) - set(grids))
        if missing:
            raise WorkbenchError(f"format='pack-quantized': linears {missing[:3]} were not quantized; save dense")
        _compress_shards(directory, {stored.get(f"{n}.weight", f"{n}.weight"): n for n in grids},
                         lambda tensor, name: pack_weight(tensor, grids[name], name))
        _write_quantization_config(directory, grids)
    else:
        _compress_shards(directory, {stored.get(f"{n}.weight", f"{n}.weight"): n for n in profile.layers},
                         lambda tensor, name: compress_weight(tensor, layout, name))
        _write_sparsity_config(directory, layout, profile, pattern)


def checkpoint_names(model: nn.Module, keys, strict: bool = True) -> dict[str, str]:
    """Each checkpoint key -> the model's parameter name, with transformers' own renamings (LLaVA and Qwen2-VL
    store their language tower as ``language_model.model.*`` / ``model.*``, GPT-NeoX ``embed_out``); a tensor
    transformers must merge or split while loading is refused (this path reads tensors one by one), or, with
    ``strict=False``, left out (a caller that touches only some tensors)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # another transformers: names as stored
        return {k: k for k in keys}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    out = {}
    for key in keys:
        name, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if converted is not None:
            if not strict:
                continue
            raise WorkbenchError(f"checkpoint tensor {key!r} must be converted by transformers while loading (merged "
                                 "or split), which reading tensors one by one does not do")
        out[key] = name
    return out


def _stored_keys(directory: Path) -> list[str]:
    """The tensor names a checkpoint directory stores (every shard)."""
    from safetensors import safe_open

    keys = []
    for shard in _shards(directory):
        with safe_open(shard, framework="pt") as f:
            keys.extend(f.keys())
    return keys


def _shards(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (one file, or the shards its index names)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / f for f in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if not single.is_file():
        raise WorkbenchError(f"{directory} holds no model.safetensors or model.safetensors.index.json")
    return [single]


def _compress_shards(directory: Path, names: dict[str, str],
                     convert: Callable[[torch.Tensor, str], dict[str, torch.Tensor]]) -> None:
    """Replace each stored weight of ``names`` (checkpoint key -> the model's linear name) in every shard by its
    parts, ``convert(tensor, linear name)``, stored as ``<stored linear>.<part>`` (and update the shard index)."""
    from safetensors.torch import load_file, save_file

    renamed: dict[str, str] = {}
    seen: set[str] = set()
    for shard in _shards(directory):
        tensors = load_file(shard)
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            if key not in names:
                out[key] = tensor
                continue
            seen.add(key)
            parts = convert(tensor, names[key].removesuffix(".weight"))
            module = key.removesuffix(".weight")  # the library names the parts after the linear
            for part, value in parts.items():
                out[f"{module}.{part}"] = value
                renamed[f"{module}.{part}"] = shard.name
        save_file(out, shard, metadata={"format": "pt"})
    missing = sorted(set(names) - seen)
    if missing:
        raise WorkbenchError(f"linear {names[missing[0]]!r} is not stored under one name (transformers merges or "
                             f"splits it when loading; {len(missing)} such): save this model with format='dense'")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k not in names} | renamed
        index.write_text(json.dumps(data, indent=2, sort_keys=True))


def compress_weight(weight: torch.Tensor, layout: str, name: str = "weight") -> dict[str, torch.Tensor]:
    """One matrix in ``layout``, as compressed-tensors 0.14 stores it: ``shape`` (int64, ``(2,)`` for
    bitmask, ``(2, 1)`` for 2:4), ``compressed`` (kept values in the weight's dtype: flat for bitmask,
    ``(rows, cols / 2)`` for 2:4), ``bitmask`` (uint8, a bit per weight, little-endian within a byte,
    rows padded to whole bytes) and, for bitmask, ``row_offsets`` (int64, where each row's values start)."""
    from compressed_tensors.utils import pack_bitmasks

    weight = weight.detach().cpu()
    if weight.dim() != 2:
        raise WorkbenchError(f"{name}: only 2-D weights are compressed, got shape {tuple(weight.shape)}")
    keep = weight != 0
    if layout == "sparse-24-bitmask":
        keep = _two_of_four(weight, name)
        return {"shape": torch.tensor(list(weight.shape)).reshape(-1, 1),
                "compressed": weight[keep].reshape(weight.shape[0], -1), "bitmask": pack_bitmasks(keep)}
    counts = keep.sum(dim=1)
    return {"shape": torch.tensor(list(weight.shape)), "compressed": weight[keep], "bitmask": pack_bitmasks(keep),
            "row_offsets": torch.cumsum(counts, 0) - counts}


def _two_of_four(weight: torch.Tensor, name: str) -> torch.Tensor:
    """Exactly two kept positions per group of four inputs: the two largest magnitudes as ``torch.topk``
    picks them, which is the library's choice (so where a group holds fewer than two non-zeros, the zeros
    it keeps are the ones the library keeps); a group with more than two non-zeros is refused."""
    check_nm(2, 4, weight.shape[1], name)
    groups = weight.reshape(-1, 4).abs()
    chosen = groups.topk(2, dim=1).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, chosen, True).reshape(weight.shape)
    if bool((weight[~keep] != 0).any()):
        raise WorkbenchError(f"{name} is not 2:4 sparse (a group of four holds more than two non-zeros); "
                              "save it with format='sparse-bitmask' or 'dense'")
    return keep


def decompress_weight(parts: dict[str, torch.Tensor], layout: str) -> torch.Tensor:
    """The dense matrix back from :func:`compress_weight`'s parts (bit for bit)."""
    from compressed_tensors.utils import unpack_bitmasks

    shape = [int(s) for s in parts["shape"].flatten().tolist()]
    keep = unpack_bitmasks(parts["bitmask"], shape)
    values = parts["compressed"].flatten()
    if int(keep.sum()) != values.numel():
        raise WorkbenchError(f"compressed weight of shape {shape}: bitmask marks {int(keep.sum())} weights, "
                              f"{values.numel()} values stored")
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[keep] = values
    return dense


def pack_weight(weight: torch.Tensor, grid: QuantGrid, name: str = "weight") -> dict[str, torch.Tensor]:
    """One quantized matrix as compressed-tensors' ``pack-quantized`` stores it (its ``PackedQuantizationCompressor``
    decompresses it to the same weights): the signed integers q - 2^(b-1) packed into int32 (``weight_packed``),
    float32 scales (rows, groups), the original shape and, asymmetric, the signed zero points packed along rows;
    plus, where the layer is pruned, the project's ``weight_bitmask`` (the pruning mask, kept = 1: the library
    dropped its sparse layouts, and a kept weight that rounds to zero is not a pruned one)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    bits, offset = grid.spec.wbits, 2 ** (grid.spec.wbits - 1)
    if not grid.holds(weight):
        raise WorkbenchError(f"{name} is not on the grid it was quantized on, or a weight its mask prunes is not "
                             "zero (changed after quantizing?): its integers would not give it back; save it with "
                             "format='dense'")
    codes = grid.codes(weight)
    parts = {"weight_packed": pack_to_int32((codes - offset).to(torch.int8), bits),
             "weight_scale": grid.scale.float().contiguous(), "weight_shape": torch.tensor(list(weight.shape))}
    if not grid.spec.symmetric:
        parts["weight_zero_point"] = pack_to_int32((grid.zero - offset).to(torch.int8), bits, packed_dim=0).contiguous()
    if grid.kept_bits is not None:
        parts["weight_bitmask"] = grid.kept_bits
    return parts


def unpack_weight(parts: dict[str, torch.Tensor], spec: QuantSpec, dtype: torch.dtype,
                  name: str = "weight") -> tuple[torch.Tensor, QuantGrid]:
    """The weight :func:`pack_weight` stored, bit for bit, and its grid (with the pruning mask)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.utils import unpack_bitmasks

    shape = [int(s) for s in parts["weight_shape"].tolist()]
    bits, offset = spec.wbits, 2 ** (spec.wbits - 1)
    scale = parts["weight_scale"].float()
    if spec.symmetric:
        zero = torch.full_like(scale, float(offset))
    else:
        zero = unpack_from_int32(parts["weight_zero_point"], bits, torch.Size(scale.shape), packed_dim=0)
        zero = zero.float() + offset
    grid = QuantGrid(spec, scale, zero, parts.get("weight_bitmask"))
    codes = unpack_from_int32(parts["weight_packed"], bits, torch.Size(shape)).to(torch.int16) + offset
    weight = grid.values(codes, dtype)
    if grid.kept_bits is not None and bool(weight[~unpack_bitmasks(grid.kept_bits, shape)].any()):
        raise WorkbenchError(f"{name}: a weight the bitmask marks pruned is not zero: the checkpoint is inconsistent")
    return weight, grid


def _write_quantization_config(directory: Path, grids: dict[str, QuantGrid]) -> None:
    """``config.json``'s ``quantization_config`` for ``pack-quantized``: one compressed-tensors config group (the
    quantized linears, integer weights at the run's bits and grouping, float32 scales), status compressed."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    spec = next(iter(grids.values())).spec
    args = QuantizationArgs(num_bits=spec.wbits, type="int", symmetric=spec.symmetric,
                            strategy="group" if spec.group_size else "channel", group_size=spec.group_size,
                            scale_dtype=torch.float32)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=sorted(grids), weights=args)},
                                format="pack-quantized", quantization_status="compressed", ignore=["lm_head"])
    config_path = directory / "config.json"
    data = json.loads(config_path.read_text())
    data["quantization_config"] = {**config.model_dump(mode="json", exclude_none=True),
                                   "version": compressed_tensors.__version__}
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _packed_spec(quant: dict, directory: Path) -> QuantSpec:
    """The QuantSpec of a pack-quantized checkpoint's one config group."""
    groups = list((quant.get("config_groups") or {}).values())
    if len(groups) != 1 or not groups[0].get("weights"):
        raise WorkbenchError(f"{directory}: a pack-quantized checkpoint with {len(groups)} config groups is not "
                             "readable here; readable: the one group the workbench writes")
    w = groups[0]["weights"]
    return QuantSpec(int(w["num_bits"]), w.get("group_size") if w.get("strategy") == "group" else None,
                     bool(w["symmetric"])).check()


def _write_sparsity_config(directory: Path, layout: str, profile: SparsityProfile, pattern: str) -> None:
    """``config.json``'s ``quantization_config`` with the keys compressed-tensors 0.14 writes for a
    sparse-only model (``version``, ``quant_method``, ``sparsity_config``, an empty ``transform_config``;
    any other key there would be read as a quantization config and refused by its ``ModelCompressor``)."""
    import compressed_tensors
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

    cls = Sparse24BitMaskConfig if layout == "sparse-24-bitmask" else BitmaskConfig
    sparsity = cls(global_sparsity=profile.mean(), sparsity_structure="2:4" if pattern == "2:4" else
                   "unstructured", targets=sorted(profile.layers), ignore=["lm_head"]).model_dump()
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "sparsity_config": sparsity,
                                     "transform_config": {}, "version": compressed_tensors.__version__}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def compressed_layout(directory: str | Path) -> str | None:
    """The compressed layout a checkpoint directory is stored in, or None for a plain (dense) checkpoint."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return None
    quant = json.loads(config_path.read_text()).get("quantization_config") or {}
    if quant.get("format") == "pack-quantized" and "config_groups" in quant:
        return "pack-quantized"
    layout = (quant.get("sparsity_config") or {}).get("format")
    if layout is None and "config_groups" not in quant:
        return None
    if layout not in _PARTS or "config_groups" in quant:
        raise WorkbenchError(f"{directory}: compressed format {layout or quant.get('format')!r} is not readable "
                             f"here; readable: {sorted(_PARTS)} without quantization, and 'pack-quantized'")
    return layout


def load_compressed(directory: str | Path, dtype: torch.dtype | None = None,
                    trust_remote_code: bool = False) -> nn.Module:
    """Build the model of a compressed checkpoint and load its weights, decompressed, bit for bit (a
    pack-quantized one's linears get their grids back, ``linear.quant_grid``, so that it saves again alike)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    directory = Path(directory)
    layout = compressed_layout(directory)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    quant = getattr(config, "quantization_config", None) or {}
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state: dict[str, torch.Tensor] = {}
    for shard in _shards(directory):
        state.update(load_file(shard))
    names = _PACKED if layout == "pack-quantized" else _PARTS[layout]
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key in list(state):
        base, _, part = key.rpartition(".")
        if part in names:  # <linear>.<part>; the workbench's earlier layout: <linear>.weight.<part>
            parts.setdefault(base.removesuffix(".weight"), {})[part] = state.pop(key)
    float_dtype = dtype or next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    spec = _packed_spec(quant if isinstance(quant, dict) else quant.to_dict(), directory) \
        if layout == "pack-quantized" else None
    grids: dict[str, QuantGrid] = {}
    for name, group in parts.items():
        needed = ("weight_packed", "weight_scale", "weight_shape") + (() if spec is None or spec.symmetric else
                                                                      ("weight_zero_point",))
        missing = sorted(set(needed if spec else _PARTS[layout]) - set(group))
        if missing:
            raise WorkbenchError(f"{directory}: compressed tensor {name} lacks {[f'{name}.{m}' for m in missing]}")
        if spec is not None:
            state[f"{name}.weight"], grids[name] = unpack_weight(group, spec, float_dtype, name)
        else:
            state[f"{name}.weight"] = decompress_weight(group, layout)
    model = auto_class_of(config).from_config(config, dtype=float_dtype, trust_remote_code=trust_remote_code)
    renamed = checkpoint_names(model, state)  # stored names -> the model's (LLaVA, Qwen2-VL store older names)
    state = {renamed[k]: v for k, v in state.items()}
    grids = {checkpoint_names(model, [f"{n}.weight"])[f"{n}.weight"].removesuffix(".weight"): g
             for n, g in grids.items()}
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {}) | set(
        getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise WorkbenchError(f"{directory}: checkpoint does not match its config: missing tensors {missing[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]}")
    model.tie_weights()
    modules = dict(model.named_modules())
    for name, grid in grids.items():
        modules[name].quant_grid = grid
    return model.eval()


def auto_class_of(config):
    """AutoModelForCausalLM, or AutoModelForImageTextToText for a vision-language config (LLaVA, SmolVLM,
    Idefics3, Qwen2-VL): its language tower is what the workbench prunes."""
    # from the submodule, not the lazy package: two threads (dashboard pages) loading models at once made
    # ``from transformers import AutoModelForImageTextToText`` fail half-way through the package's lazy import
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "auto_map", None):
        return AutoModelForCausalLM
    return AutoModelForImageTextToText


def checkpoint_bytes(directory: str | Path) -> int:
    """Bytes of a checkpoint's weight files on disk."""
    return sum(p.stat().st_size for p in _shards(Path(directory)))
