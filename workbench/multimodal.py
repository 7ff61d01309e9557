"""Vision-language models: the workbench prunes their language tower and leaves the rest untouched.

* Structure: :mod:`workbench.models` finds the tower's decoder blocks (LLaVA and Qwen2-VL:
  ``model.language_model.layers``; SmolVLM / Idefics3: ``model.text_model.layers``); the vision encoder and the
  projector / connector beside it are never pruned nor counted in the target, and their weight hashes are taken
  at load and checked after pruning (:func:`check_frozen`, in every record).
* Models (built in :mod:`workbench.models`): tiny random LLaVA, SmolVLM and Qwen2-VL (seeded, byte tokenizer)
  for tests, and ``smolvlm-embedded``: SmolVLM's architecture whose language model is the real embedded
  SmolLM2-135M and whose vision encoder and connector are small and random (seeded). Its text perplexity is
  SmolLM2's; its answers about images mean nothing, and its records say so.
* Records (:func:`multimodal_record`): ``frozen_unchanged`` is true when the hashes were taken at load and found
  equal after pruning (false: no hashes from load to check against).
* Inputs: :func:`image_inputs` turns image files and a prompt into the model's keyword arguments (the
  architecture's own Hugging Face image processor, sized from the model config, and the image tokens the
  language tower expects), for a forward pass, generation or image-text calibration.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import WorkbenchError

# --------------------------------------------------------------------------- frozen parts

def check_frozen(model: nn.Module) -> dict[str, str]:
    """The vision parts' hashes now, after checking they equal those taken at load (a pruning bug otherwise)."""
    from .models import frozen_hashes

    now = frozen_hashes(model)
    before = getattr(model, "workbench_frozen_hashes", None)
    if before is not None and before != now:
        changed = sorted(k for k in now if before.get(k) != now[k])
        raise RuntimeError(f"the vision parts {changed} changed while the language tower was pruned")
    return now


def multimodal_record(model: nn.Module) -> dict:
    """What a record says of a vision-language model: its language tower, the vision parts' hashes (checked
    unchanged) and, for a model with a random vision part, that its image answers mean nothing; {} otherwise."""
    from .models import structure

    layout = structure(model)
    if not layout.multimodal:
        return {}
    out = {"language_tower": layout.prefix.removesuffix(".layers"), "frozen_sha256": check_frozen(model),
           "frozen_unchanged": getattr(model, "workbench_frozen_hashes", None) is not None}
    if getattr(model, "workbench_note", None):
        out["note"] = model.workbench_note
    return out


# --------------------------------------------------------------------------- image inputs

def read_image(path: str | Path, name: str = "image"):
    """An RGB image from a file, or one line naming the parameter and the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise WorkbenchError(f"{name}={str(path)!r} cannot be read as an image ({type(err).__name__}); allowed: a "
                             "PNG, JPEG or other file Pillow opens") from None


def image_processor(model: nn.Module):
    """The architecture's Hugging Face image processor, sized from the model's vision config."""
    kind = model.config.model_type
    vision = model.config.vision_config
    if kind == "llava":
        from transformers import CLIPImageProcessor

        size = vision.image_size
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if kind in ("smolvlm", "idefics3"):
        from transformers import SmolVLMImageProcessorPil  # the default one wants torchvision

        size = {"longest_edge": vision.image_size}
        return SmolVLMImageProcessorPil(do_image_splitting=False, size=size, max_image_size=size)
    if kind == "qwen2_vl":
        from transformers import Qwen2VLImageProcessor

        side = vision.patch_size * vision.spatial_merge_size * 4
        return Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side, patch_size=vision.patch_size,
                                     merge_size=vision.spatial_merge_size,
                                     temporal_patch_size=vision.temporal_patch_size)
    raise WorkbenchError(f"model type {kind!r} takes no images here; allowed: llava, smolvlm, idefics3, qwen2_vl")


def _smolvlm_marks(model: nn.Module, tokenizer) -> tuple[int, int]:
    """The ids of SmolVLM's tokens around an image and before a global image: the config's (models built here)
    or the tokenizer's ``<fake_token_around_image>`` and ``<global-img>`` (SmolVLM / Idefics3 from the hub)."""
    c = model.config
    if getattr(c, "fake_image_token_id", None) is not None:
        return c.fake_image_token_id, c.global_image_token_id
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<fake_token_around_image>", "<global-img>")]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise WorkbenchError("model: its tokenizer has no <fake_token_around_image> / <global-img> tokens, which a "
                             "SmolVLM / Idefics3 prompt puts around an image")
    return ids[0], ids[1]


def _image_token_ids(model: nn.Module, tokenizer, pixels: dict) -> list[int]:
    """The token ids that stand for one image in the prompt, as the language tower expects them."""
    c = model.config
    kind = c.model_type
    if kind == "llava":
        side = c.vision_config.image_size // c.vision_config.patch_size
        extra = 1 if c.vision_feature_select_strategy == "full" else 0
        return [c.image_token_index] * (side * side + extra)
    if kind in ("smolvlm", "idefics3"):
        side = c.vision_config.image_size // c.vision_config.patch_size
        count = side * side // (c.scale_factor ** 2)
        around, global_img = _smolvlm_marks(model, tokenizer)
        return [around, global_img] + [c.image_token_id] * count + [around]
    if kind == "qwen2_vl":
        count = int(pixels["image_grid_thw"][0].prod()) // c.vision_config.spatial_merge_size ** 2
        return [c.vision_start_token_id] + [c.image_token_id] * count + [c.vision_end_token_id]
    raise WorkbenchError(f"model type {kind!r} takes no images here; allowed: llava, smolvlm, idefics3, qwen2_vl")


def image_inputs(model: nn.Module, tokenizer, image: str | Path, prompt: str) -> dict[str, torch.Tensor]:
    """Keyword arguments of one image + prompt forward: the image's pixels and the prompt's ids headed by the
    image's tokens."""
    pixels = dict(image_processor(model)(read_image(image), return_tensors="pt"))
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist()
    ids = torch.tensor([_image_token_ids(model, tokenizer, pixels) + prompt_ids])
    dtype = next(model.parameters()).dtype
    out = {"input_ids": ids, **{k: v.to(dtype) if v.is_floating_point() else v for k, v in pixels.items()}}
    if model.config.model_type == "qwen2_vl":  # M-RoPE reads which tokens are image tokens (1) or text (0)
        out["mm_token_type_ids"] = (ids == model.config.image_token_id).long()
    return out


def image_calibration(calibration, model: nn.Module, tokenizer, images: list[str | Path]):
    """Image-text calibration: window i becomes image i mod len(images) (its tokens first) followed by the start
    of text window i, cut to the same length, with the image's pixels as the window's extra model inputs.
    Qwen2-VL is refused: its M-RoPE positions differ per window, and the capture loop shares one set of block
    keyword arguments across windows."""
    import dataclasses

    from .models import structure

    if not structure(model).multimodal:
        raise WorkbenchError(f"calib_images: model {model.config._name_or_path!r} is not a vision-language model; "
                             "allowed: LLaVA, SmolVLM / Idefics3 (calibrate a causal LM on text)")
    if model.config.model_type == "qwen2_vl":
        raise WorkbenchError("calib_images: Qwen2-VL's image positions (M-RoPE) differ per window, which the capture "
                             "loop does not carry; calibrate it on text (allowed: LLaVA, SmolVLM / Idefics3)")
    if not images:
        raise WorkbenchError("calib_images: give at least one image file")
    per_image = [image_inputs(model, tokenizer, path, "") for path in images]  # read (and refused) before any work
    seqlen = calibration.input_ids.shape[1]
    rows, extras = [], []
    for i, window in enumerate(calibration.input_ids):
        inputs = per_image[i % len(images)]
        head = inputs["input_ids"][0]
        head = head[: head.numel() - len(tokenizer("")["input_ids"])]  # the image's tokens, not the empty prompt's
        if head.numel() >= seqlen:
            raise WorkbenchError(f"calib_images: an image takes {head.numel()} tokens, the calibration seqlen is "
                                 f"{seqlen}; allowed: seqlen > {head.numel()}")
        rows.append(torch.cat([head, window[: seqlen - head.numel()]]))
        extras.append({k: v for k, v in inputs.items() if k != "input_ids"})
    return dataclasses.replace(calibration, input_ids=torch.stack(rows), window_kwargs=tuple(extras),
                               images=tuple(str(p) for p in images))
