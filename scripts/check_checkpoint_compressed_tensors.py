"""Prove that compressed checkpoints match compressed-tensors 0.14's sparse layouts, both ways, bit for bit.

compressed-tensors 0.14.0.1 is the last release that wrote and read ``sparse-bitmask`` and
``sparse-24-bitmask`` (0.15 removed them) and it does not install beside the workbench's pins, so this
runs in its own environment and calls the workbench's interpreter for the workbench's side:

    python3.11 -m venv /tmp/ctvenv
    /tmp/ctvenv/bin/pip install torch==2.13.0 compressed-tensors==0.14.0.1 safetensors psutil
    /tmp/ctvenv/bin/python scripts/check_checkpoint_compressed_tensors.py --workbench-python .venv/bin/python

(0.14.0.1 imports psutil without declaring it, hence the explicit install; pip brings transformers 4.57.)
For each layout, on tiny-llama pruned by magnitude (50% unstructured, and 2:4) with an all-zero row and
rows with fewer kept values added, so that padding and the zeros a 2:4 group keeps are exercised:

(a) ours -> library: the workbench writes the directory (``save_pruned``); the library's own
    ``ModelCompressor.from_pretrained`` parses its config, ``ModelCompressor.decompress`` loads it into
    a model whose weights were set to NaN, and every tensor equals the dense checkpoint bit for bit;
    the library's ``compress`` of the same dense weights gives the same tensor names, dtypes, shapes
    and bytes as the file we wrote; the ``quantization_config`` keys equal those the library writes.
(b) library -> ours: the library writes a directory through the steps llm-compressor's save takes
    (``from_pretrained_model``, ``compress_model``, ``save_pretrained``, ``update_config``; targets
    ``["Linear"]``, ignore ``["lm_head"]``), and the workbench's ``load_model`` reads it back bit for bit.

``--golden FILE`` also writes what the unit tests read (``tests/data/compressed-tensors-0.14.json``): a
one-block LLaMA whose linears are 2:4 sparse with extra zeros, dense and in both layouts as the library
wrote them (config.json and every tensor's dtype, shape and exact values, as JSON text: the repository
admits no .safetensors files). Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy
import torch

LAYOUTS = {"sparse-bitmask": "unstructured", "sparse-24-bitmask": "2:4"}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (a zero's sign included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().cpu().contiguous().reshape(-1).view(torch.uint8),
                       b.detach().cpu().contiguous().reshape(-1).view(torch.uint8))


def compare(label: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    """Print and return whether ``got`` holds every tensor of ``want`` bit for bit (and no other names)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if not same_bits(got[k], want[k]))
    ok = not (missing or extra or differ)
    print(f"{'OK  ' if ok else 'FAIL'} {label}: {len(want)} tensors"
          + ("" if ok else f"; missing {missing[:3]}, extra {extra[:3]}, differ {differ[:3]}"
                           + (f" ({got[differ[0]].dtype} {tuple(got[differ[0]].shape)} vs "
                              f"{want[differ[0]].dtype} {tuple(want[differ[0]].shape)})" if differ else "")))
    return ok


def add_edge_zeros(weight: torch.Tensor) -> None:
    """An all-zero row, and a row keeping one value per group of four (in place)."""
    with torch.no_grad():
        weight[0] = 0
        groups = weight[1].view(-1, 4)
        keep_one = groups.abs().argmax(dim=1, keepdim=True)
        groups.copy_(torch.zeros_like(groups).scatter_(1, keep_one, groups.gather(1, keep_one)))


# ------------------------------------------------------------------ the workbench's side (its own venv)

def workbench_write(work: Path) -> None:
    from workbench.checkpoint import save_pruned
    from workbench.models import load_model, prunable_linears
    from workbench.prune import prune

    for layout, pattern in LAYOUTS.items():
        model, tok = load_model("tiny-llama")
        profile = prune(model, tok, metric="magnitude", sparsity=0.5, pattern=pattern, progress=False).profile
        for linear in prunable_linears(model).values():
            add_edge_zeros(linear.weight)
        save_pruned(model, tok, profile, work / f"dense-{layout}", "dense", pattern)
        save_pruned(model, tok, profile, work / f"ours-{layout}", layout, pattern)
        print(f"workbench wrote ours-{layout} and dense-{layout}")


def workbench_read(work: Path) -> int:
    from safetensors.torch import load_file

    from workbench.checkpoint import compressed_layout
    from workbench.models import load_model

    ok = True
    for layout in LAYOUTS:
        directory = work / f"library-{layout}"
        assert compressed_layout(directory) == layout, compressed_layout(directory)
        model, _ = load_model(str(directory))
        ok &= compare(f"(b) {layout}: workbench load_model of the library's directory == dense",
                      model.state_dict(), load_file(work / f"dense-{layout}" / "model.safetensors"))
    return 0 if ok else 1


# ------------------------------------------------------------------ the library's side (compressed-tensors 0.14)

def _nan_model(config_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # any weight decompression leaves alone shows up
    return model


def library_write(dense_dir: Path, out: Path, layout: str, global_sparsity: float) -> None:
    """A directory written by compressed-tensors 0.14 through the steps llm-compressor's save takes."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dense_dir, torch_dtype=torch.float32)
    cls = Sparse24BitMaskConfig if layout == "sparse-24-bitmask" else BitmaskConfig
    config = cls(targets=["Linear"], ignore=["lm_head"], sparsity_structure=LAYOUTS[layout],
                 global_sparsity=global_sparsity)
    compressor = ModelCompressor.from_pretrained_model(model, sparsity_config_or_format=config)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    for f in dense_dir.iterdir():  # the tokenizer files, as a saved checkpoint carries them
        if not (out / f.name).exists() and f.name != "sparsity_profile.json":
            shutil.copy(f, out / f.name)


def library_checks(work: Path, layout: str) -> bool:
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ours, dense_dir = work / f"ours-{layout}", work / f"dense-{layout}"
    dense = load_file(dense_dir / "model.safetensors")
    compressor = ModelCompressor.from_pretrained(str(ours))  # an unknown config key raises here
    assert compressor.quantization_config is None and compressor.sparsity_config.format == layout
    print(f"OK   (a) {layout}: ModelCompressor.from_pretrained parsed our config "
          f"({type(compressor.sparsity_compressor).__name__})")
    model = _nan_model(dense_dir)
    compressor.decompress(str(ours), model)
    ok = compare(f"(a) {layout}: library decompress of our directory == dense", model.state_dict(), dense)
    reference = AutoModelForCausalLM.from_pretrained(dense_dir, torch_dtype=torch.float32)
    ok &= compare(f"(a) {layout}: our file == library compress of the same weights (names, dtypes, shapes, bytes)",
                  load_file(ours / "model.safetensors"), compressor.compress(reference))
    library_write(dense_dir, work / f"library-{layout}", layout,
                  compressor.sparsity_config.global_sparsity)
    ok &= compare(f"(a) {layout}: our file == the file the library wrote (names, dtypes, shapes, bytes)",
                  load_file(ours / "model.safetensors"), load_file(work / f"library-{layout}" / "model.safetensors"))
    theirs = json.loads((work / f"library-{layout}" / "config.json").read_text())["quantization_config"]
    mine = json.loads((ours / "config.json").read_text())["quantization_config"]
    same_keys = sorted(theirs) == sorted(mine) and sorted(theirs["sparsity_config"]) == sorted(
        mine["sparsity_config"]) and theirs["transform_config"] == mine["transform_config"]
    print(f"{'OK  ' if same_keys else 'FAIL'} (a) {layout}: quantization_config keys {sorted(mine)}, "
          f"sparsity_config keys {sorted(mine['sparsity_config'])} (library: {sorted(theirs)}, "
          f"{sorted(theirs['sparsity_config'])})")
    return ok and same_keys


def _as_json(directory: Path) -> dict:
    """A checkpoint directory's config.json and tensors (dtype, shape, exact values) as JSON text."""
    from safetensors.torch import load_file

    tensors = {}
    for name, t in sorted(load_file(directory / "model.safetensors").items()):
        values = t.flatten().tolist()
        if t.dtype == torch.float32:  # the shortest decimal that reads back as the same float32
            values = [float(str(numpy.float32(v))) for v in values]
        back = torch.tensor(values, dtype=torch.float64 if t.is_floating_point() else t.dtype).to(t.dtype)
        assert same_bits(back.reshape(t.shape), t), name  # what the tests rebuild is what the library wrote
        tensors[name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "values": values}
    return {"config": json.loads((directory / "config.json").read_text()), "tensors": tensors}


def _one_line_lists(text: str) -> str:
    """json.dumps(indent=1) with every flat list on one line."""
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + ", ".join(
        x.strip() for x in m.group(1).split(",")) + "]" if m.group(1) else "[]", text)


def write_golden(golden: Path) -> None:
    """A one-block LLaMA (a few KB) whose linears are 2:4 sparse with extra zeros: dense, and both layouts
    written by the library, stored as JSON text (the repository admits no .safetensors files)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                w = module.weight
                groups = w.view(-1, 4)
                keep = groups.abs().topk(2, dim=1).indices
                groups.copy_(torch.zeros_like(groups).scatter_(1, keep, groups.gather(1, keep)))
                add_edge_zeros(w)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "dense")
        for layout in LAYOUTS:
            library_write(Path(tmp) / "dense", Path(tmp) / layout, layout, 0.5)
        data = {"written_by": "compressed-tensors 0.14.0.1 (torch 2.13.0, transformers 4.57.6): "
                              "scripts/check_checkpoint_compressed_tensors.py --golden",
                "about": "dense: a one-block LLaMA whose linears are 2:4 sparse, plus an all-zero row and a "
                         "row keeping one value per group of four; sparse-bitmask, sparse-24-bitmask: the same "
                         "weights compressed by the library's ModelCompressor (compress_model, save_pretrained, "
                         "update_config). Each entry: config.json and the model.safetensors tensors.",
                **{name: _as_json(Path(tmp) / name) for name in ("dense", *LAYOUTS)}}
    golden.parent.mkdir(parents=True, exist_ok=True)
    golden.write_text(_one_line_lists(json.dumps(data, indent=1)) + "\n")
    print(f"wrote {golden}: {golden.stat().st_size} bytes")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workbench-python", default=".venv/bin/python",
                        help="the interpreter of the workbench's environment (default .venv/bin/python)")
    parser.add_argument("--work", type=Path, default=None, help="where to write the checkpoints (default: a temp dir)")
    parser.add_argument("--golden", type=Path, default=None, help="also write the unit tests' golden JSON file here")
    parser.add_argument("--side", choices=["workbench-write", "workbench-read"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "workbench-write":
        workbench_write(args.work)
        return 0
    if args.side == "workbench-read":
        return workbench_read(args.work)

    import compressed_tensors
    print(f"compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}")
    work = args.work or Path(tempfile.mkdtemp(prefix="ctcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    side = [args.workbench_python, str(Path(__file__).resolve()), "--work", str(work.resolve()), "--side"]
    subprocess.run([*side, "workbench-write"], check=True, cwd=root)
    ok = all([library_checks(work, layout) for layout in LAYOUTS])
    ok &= subprocess.run([*side, "workbench-read"], cwd=root).returncode == 0
    if args.golden is not None:
        write_golden(args.golden)
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED", f"(checkpoints under {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
