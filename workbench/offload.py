"""Where a model's blocks live between their turns in the block loop, and where activations wait.

* :class:`Residency` (default): the whole model sits on its device; nothing moves.
* :class:`Onload` (``--onload``): the model stays in CPU memory; each block moves to the compute device
  for its turn and back after it; the modules outside the blocks (embeddings, final norm, head) move
  to the device while they are used.
* :class:`Stream` (``--offload-dir DIR``): the model is a skeleton on the meta device; each block is read
  from the checkpoint's safetensors shards when its turn comes (accelerate's ``set_module_tensor_to_device``
  puts the tensors in place), optionally written to an output checkpoint after it, and freed.

:func:`workbench.calibrate.calibrate`'s loop (the one capture loop) calls ``enter``/``exit`` around each
block, so calibration, pruning and block-major perplexity compute exactly what the in-memory run
computes, with one block's weights plus the activations resident. :class:`Activations` holds the hidden
states of all windows at one point of the model: on the device, in CPU memory, or in a file on disk.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .errors import WorkbenchError
from .models import EMBEDDED_MODELS, TINY_MODELS, structure, weight_hash

PLACES = ("device", "cpu", "disk")  # where activations can wait


class _OnDevice(list):
    """Hidden states kept as computed (on the compute device): a plain list, as the loop always had."""

    def close(self) -> None:
        """Nothing to free by hand: the tensors go when the last reference does."""


class Activations:
    """Hidden states of every window at one point of the model, in window order, kept off the compute device;
    ``[i]`` is window i on ``device``. ``place``: ``cpu`` (CPU memory) or ``disk`` (a raw file in
    ``directory``, read back window by window, so it never counts as resident memory)."""

    def __init__(self, device: torch.device | None = None, place: str = "cpu", directory: Path | None = None):
        if place not in PLACES:
            raise WorkbenchError(f"activations={place!r} is not allowed; allowed: {list(PLACES)}")
        if place == "disk" and directory is None:
            raise WorkbenchError("activations='disk' needs an offload directory (--offload-dir DIR)")
        self.device, self.place = device, place
        self._items: list = []  # CPU tensors, or (offset, bytes, shape, dtype) into the file
        self._path = Path(directory) / f"activations-{uuid.uuid4().hex}.bin" if place == "disk" else None
        self._size = 0

    def append(self, hidden: torch.Tensor) -> None:
        hidden = hidden.detach()
        if self.place != "disk":
            self._items.append(hidden.to("cpu", copy=True))
            return
        data = hidden.contiguous().cpu().view(torch.uint8).numpy().tobytes()
        with open(self._path, "ab") as f:
            f.write(data)
        self._items.append((self._size, len(data), tuple(hidden.shape), hidden.dtype))
        self._size += len(data)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self._items[index]
        if self.place != "disk":
            return item.to(self.device or "cpu")
        offset, nbytes, shape, dtype = item
        with open(self._path, "rb") as f:
            f.seek(offset)
            buffer = bytearray(f.read(nbytes))
        return torch.frombuffer(buffer, dtype=dtype).view(shape).to(self.device or "cpu")

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        """Drop the stored states (and delete the file)."""
        self._items = []
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def activation_store(device: torch.device | None, place: str, directory: Path | None):
    """An empty store for one point's hidden states in ``place`` (``device``: a plain list)."""
    if place == "device":
        return _OnDevice()
    return Activations(device, place, directory)


class Residency:
    """The whole model stays on its device (the default); the loop's hooks do nothing. Activations wait in
    ``place`` (``device``, ``cpu`` or ``disk`` under ``directory``)."""

    device: torch.device | None = None

    def __init__(self, place: str = "device", directory: str | Path | None = None,
                 device: str | torch.device | None = None):
        if device is not None:
            self.device = torch.device(device)
        self.place = place
        self.directory = _check_directory(directory, "offload_dir") if directory is not None else None
        activation_store(self.device, place, self.directory)  # refuses a bad place early

    def describe(self) -> dict:
        """What a result record says about where the run kept the model and its activations."""
        return {"kind": "memory", "activations": self.place}

    @property
    def blockwise(self) -> bool:
        """Whether evaluation must go block-major (blocks or activations are not all on the device)."""
        return type(self) is not Residency or self.place != "device"

    def enter(self, index: int, block: nn.Module) -> None:
        """Make block ``index``'s weights usable on the compute device."""

    def exit(self, index: int, block: nn.Module) -> None:
        """Block ``index``'s turn is over (it may have been pruned)."""

    @contextmanager
    def outside(self, model: nn.Module) -> Iterator[None]:
        """The modules outside the blocks (embeddings, final norm, head) are usable inside the context."""
        yield

    def activations(self):
        """An empty store for one point's hidden states (list-like, with ``close()``)."""
        return activation_store(self.device, self.place, self.directory)

    def weight(self, name: str, linear: nn.Linear) -> torch.Tensor:
        """The current weight of prunable linear ``name`` wherever it lives (allocation scores, reports)."""
        return linear.weight

    def weight_hash(self, model: nn.Module) -> str:
        from .models import model_hash

        return model_hash(model)

    def compute_device(self, model: nn.Module) -> torch.device:
        return self.device if self.device is not None else next(model.parameters()).device

    def reader(self) -> Residency:
        """The residency that reads the model as it is now, writing nothing (for dense passes)."""
        return self

    def after_prune(self) -> Residency:
        """The residency that evaluates the pruned model (a stream reads back what it wrote)."""
        return self


def _outside_tensors(model: nn.Module) -> list[tuple[nn.Module, str, str, bool]]:
    """(module, local name, full name, is_parameter) of every tensor outside the decoder blocks."""
    prefix = structure(model).prefix + "."
    out = []
    for mod_name, module in model.named_modules():
        if (mod_name + ".").startswith(prefix):
            continue
        for local, _ in module.named_parameters(recurse=False):
            out.append((module, local, f"{mod_name}.{local}".lstrip("."), True))
        for local, _ in module.named_buffers(recurse=False):
            out.append((module, local, f"{mod_name}.{local}".lstrip("."), False))
    return out


def _check_directory(directory: str | Path, what: str) -> Path:
    """Create ``directory`` if needed and prove a file can be written there; the error names the path."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as err:
        raise WorkbenchError(f"{what}={str(directory)!r} cannot be written ({type(err).__name__}: {err.strerror}); "
                              "give a writable directory") from None
    return directory


class Onload(Residency):
    """The model in CPU memory; block ``l`` moves to ``device`` for its turn, the outside modules while used."""

    def __init__(self, device: str | torch.device, place: str = "cpu", directory: str | Path | None = None):
        self.device = torch.device(device)
        super().__init__(place, directory)
        self.moves = 0  # blocks moved to the device (shows the loop onloaded)

    def describe(self) -> dict:
        return {"kind": "onload", "device": str(self.device), "activations": self.place}

    def enter(self, index: int, block: nn.Module) -> None:
        block.to(self.device)
        self.moves += 1

    def exit(self, index: int, block: nn.Module) -> None:
        block.to("cpu")

    def weight(self, name: str, linear: nn.Linear) -> torch.Tensor:
        return linear.weight.to(self.device)  # scored where the statistics are

    @contextmanager
    def outside(self, model: nn.Module) -> Iterator[None]:
        tensors = _outside_tensors(model)
        _move(tensors, self.device)
        try:
            yield
        finally:
            _move(tensors, torch.device("cpu"))


def _move(tensors, device: torch.device) -> None:
    for module, local, _full, is_param in tensors:
        if is_param:
            param = module._parameters[local]
            param.data = param.data.to(device)  # the same Parameter object: tied weights stay tied
        else:
            module._buffers[local] = module._buffers[local].to(device)


class CheckpointReader:
    """Tensors of a safetensors checkpoint directory (one file or an index of shards), read one by one."""

    def __init__(self, directory: str | Path):
        from .checkpoint import compressed_layout

        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.directory / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(self.directory / "model.safetensors", framework="pt") as f:
                self.weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise WorkbenchError(f"{self.directory} holds no model.safetensors or model.safetensors.index.json: "
                                  "streaming reads safetensors checkpoints")
        if compressed_layout(self.directory) is not None:
            raise WorkbenchError(f"{self.directory} is a compressed checkpoint; stream from a dense one "
                                  "(--format dense)")
        self.keys = {k: k for k in self.weight_map}  # the model's tensor name -> the checkpoint's

    def bind(self, model: nn.Module) -> CheckpointReader:
        """Name the checkpoint's tensors as ``model`` does, with transformers' own key renamings (e.g. GPT-NeoX's
        ``embed_out`` -> ``lm_head``); a checkpoint that needs tensors merged or split is refused."""
        from .checkpoint import checkpoint_names

        try:
            names = checkpoint_names(model, self.weight_map)
        except WorkbenchError as err:
            raise WorkbenchError(f"checkpoint {self.directory}: {err}; use --onload") from None
        self.keys = {name: key for key, name in names.items()}
        return self

    def has(self, name: str) -> bool:
        return name in self.keys

    def read(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors, as CPU copies (the file's memory map is closed before returning)."""
        from safetensors import safe_open

        missing = [n for n in names if n not in self.keys]
        if missing:
            raise WorkbenchError(f"checkpoint {self.directory} lacks tensor {missing[0]!r}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[self.keys[name]], []).append(name)
        for file, group in by_file.items():
            path = self.directory / file
            if not path.is_file():
                raise WorkbenchError(f"checkpoint {self.directory}: shard {file} (holding {group[0]!r}) is missing")
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in group:
                    t = f.get_tensor(self.keys[name])
                    out[name] = t.to(dtype=dtype or t.dtype, copy=True)
        return out


def _tied_sources(model: nn.Module) -> dict[str, str]:
    """state-dict key -> the key of the tensor it is tied to (transformers' tie keys, and tensors shared)."""
    seen: dict[int, str] = {}
    out = dict(getattr(model, "all_tied_weights_keys", None) or {})
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in seen and name not in out:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


class Stream(Residency):
    """Block weights read from ``source`` (a safetensors checkpoint) at each block's turn and freed after it;
    with ``out``, each block is written there after its turn (as one shard of a loadable checkpoint).
    Activations wait in ``place`` (default: on disk under ``directory`` when given, else in CPU memory)."""

    def __init__(self, model: nn.Module, source: str | Path, device: str | torch.device = "cpu",
                 directory: str | Path | None = None, place: str | None = None, out: str | Path | None = None):
        self.reader_ = CheckpointReader(source).bind(model)
        self.model = model
        self.ties = _tied_sources(model)
        self._check_complete(model)
        self.device = torch.device(device)
        super().__init__(place or ("disk" if directory is not None else "cpu"), directory)
        self.dtype = next(model.parameters()).dtype
        self.out = Path(out) if out is not None else None
        layout = structure(model)
        self.n_blocks = len(layout.blocks)
        self.prefix = layout.prefix
        self.written: dict[str, str] = {}  # tensor -> shard file of the output

    def _check_complete(self, model: nn.Module) -> None:
        """Every tensor the model needs is in the checkpoint (refused before any work, naming the tensor)."""
        needed = [k for k in model.state_dict() if k not in self.ties]
        missing = [k for k in needed if not self.reader_.has(k)]
        if missing:
            raise WorkbenchError(f"checkpoint {self.reader_.directory} lacks tensor {missing[0]!r}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                  + f"; its config's model needs {len(needed)} tensors")

    def describe(self) -> dict:
        return {"kind": "stream", "source": str(self.reader_.directory), "device": str(self.device),
                "activations": self.place}

    # ------------------------------------------------------------------ blocks
    def _block_names(self, index: int, block: nn.Module) -> dict[str, str]:
        base = f"{self.prefix}.{index}."
        return {local: base + local for local in block.state_dict()}

    def enter(self, index: int, block: nn.Module) -> None:
        from accelerate.utils import set_module_tensor_to_device

        names = self._block_names(index, block)
        tensors = self.reader_.read(list(names.values()), self.dtype)
        for local, full in names.items():
            set_module_tensor_to_device(block, local, self.device, value=tensors.pop(full))

    def exit(self, index: int, block: nn.Module) -> None:
        from accelerate.utils import set_module_tensor_to_device

        names = self._block_names(index, block)
        if self.out is not None:
            state = block.state_dict()
            self._write(f"block-{index:05d}.safetensors", {names[k]: v for k, v in state.items()})
        for local in names:
            set_module_tensor_to_device(block, local, "meta")
        _return_freed_memory()

    @contextmanager
    def outside(self, model: nn.Module) -> Iterator[None]:
        from accelerate.utils import set_module_tensor_to_device

        tensors = [t for t in _outside_tensors(model) if self.reader_.has(t[2])]
        values = self.reader_.read([t[2] for t in tensors], self.dtype)
        for module, local, full, _ in tensors:
            set_module_tensor_to_device(module, local, self.device, value=values.pop(full))
        if self.ties:
            model.tie_weights()
        try:
            yield
        finally:
            for module, local, _full, _ in tensors:
                set_module_tensor_to_device(module, local, "meta")
            if self.ties:
                model.tie_weights()

    def _write(self, file: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, self.out / file,
                  metadata={"format": "pt"})
        self.written.update({k: file for k in tensors})

    # ------------------------------------------------------------------ whole-model questions
    def weight(self, name: str, linear: nn.Linear) -> torch.Tensor:
        key = f"{name}.weight"
        if self.out is not None and key in self.written:
            return _read_one(self.out / self.written[key], key, self.dtype).to(self.device)
        return self.reader_.read([key], self.dtype)[key].to(self.device)

    def weight_hash(self, model: nn.Module) -> str:
        """:func:`workbench.models.weight_hash` of the source weights, read one tensor at a time (the embedded
        model's cache records it, as ``load_model`` uses)."""
        meta = self.reader_.directory / "workbench.json"
        if meta.is_file():
            return json.loads(meta.read_text())["weight_hash"]
        return weight_hash(model, read=lambda key: self.reader_.read([self.ties.get(key, key)], self.dtype)[
            self.ties.get(key, key)])

    def finish(self) -> Path:
        """Write the output's shard index (and config) once every block was written; returns the directory."""
        if self.out is None:
            raise WorkbenchError("this stream writes no output (out=None)")
        blocks = {f for f in self.written.values() if f.startswith("block-")}
        if len(blocks) != self.n_blocks:
            raise RuntimeError(f"stream output {self.out}: {len(blocks)} of {self.n_blocks} blocks written")
        if "outside.safetensors" not in self.written.values():  # embeddings, norms, head: never pruned
            names = [full for _m, _l, full, _p in _outside_tensors(self.model) if self.reader_.has(full)]
            self._write("outside.safetensors", self.reader_.read(names, self.dtype))
        weight_map = dict(self.written)
        total = sum((self.out / f).stat().st_size for f in set(weight_map.values()))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        self.model.config.save_pretrained(self.out)
        return self.out

    def reader(self) -> Stream:
        """A stream over the same source that writes nothing (the dense pass before pruning)."""
        if self.out is None:
            return self
        clone = object.__new__(Stream)
        clone.__dict__.update(self.__dict__)
        clone.out = None
        return clone

    def after_prune(self) -> Stream:
        return self.written_reader() if self.out is not None else self

    def written_reader(self) -> Stream:
        """A stream that reads the output written so far (evaluation of the pruned model)."""
        clone = object.__new__(Stream)
        clone.__dict__.update(self.__dict__)
        clone.reader_ = CheckpointReader(self.finish()).bind(self.model)
        clone.out = None
        return clone


def _return_freed_memory() -> None:
    """Hand the freed block's memory back to the OS: glibc keeps freed tensors below its (grown) mmap threshold
    in the heap, and resident memory would creep up by most of a block per block otherwise."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _read_one(path: Path, key: str, dtype: torch.dtype | None) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        t = f.get_tensor(key)
        return t.to(dtype=dtype or t.dtype, copy=True)


# ---------------------------------------------------------------------- models to stream

def checkpoint_dir(name_or_path: str) -> Path:
    """The safetensors checkpoint directory a streamed run reads: the embedded model's cache, or a local
    model directory (tiny test models live in memory only: save one with ``save_pretrained`` first)."""
    from .models import embedded_checkpoint_dir

    if name_or_path in EMBEDDED_MODELS:
        return embedded_checkpoint_dir(name_or_path)
    if name_or_path in TINY_MODELS:
        raise WorkbenchError(f"model={name_or_path!r} is built in memory and has no checkpoint to stream; save it "
                              "with save_pretrained and pass the directory")
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise WorkbenchError(f"model={name_or_path!r}: streaming needs a local model directory with config.json and "
                              "safetensors shards (or the embedded model); download a hub model first")
    return path


def load_skeleton(name_or_path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """``(model, tokenizer, directory)``: the model's modules with every weight on the meta device (buffers
    such as rotary frequencies are real), to be filled block by block by :class:`Stream`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoTokenizer

    from .checkpoint import auto_class_of

    directory = checkpoint_dir(name_or_path)
    CheckpointReader(directory)  # refuses a directory without safetensors, or a compressed one
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = auto_class_of(config).from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer, directory


def fits_on_device(model: nn.Module, device: str | torch.device, margin: float = 0.8) -> bool:
    """Whether ``model``'s weights fit in ``margin`` of the device's free memory (always True on the CPU):
    a CUDA run onloads block by block when they do not."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    free, _total = torch.cuda.mem_get_info(device)
    return size <= margin * free


@contextmanager
def placed_model(name_or_path: str, dtype: str | torch.dtype | None = None, device: str = "cpu",
                 trust_remote_code: bool = False, onload: bool = False, offload_dir: str | Path | None = None,
                 activations: str | None = None, prunes: bool = False, out: str | Path | None = None):
    """Yield ``(model, tokenizer, residency)`` for one run and remove its scratch files afterwards.

    ``offload_dir``: stream the model from its checkpoint (activations on disk there by default; when the
    run ``prunes``, the pruned model is written to ``out`` or, without it, to a scratch folder there).
    ``onload``: the model in CPU memory, blocks on ``device`` one at a time (chosen by itself on a CUDA
    device the model does not fit).
    ``activations``: ``device`` | ``cpu`` | ``disk`` (needs ``offload_dir``).
    """
    from .models import load_model, resolve_dtype

    if activations is not None and activations not in PLACES:
        raise WorkbenchError(f"activations={activations!r} is not allowed; allowed: {list(PLACES)}")
    if activations == "disk" and offload_dir is None:
        raise WorkbenchError("activations='disk' needs an offload directory (--offload-dir DIR)")
    scratch = None
    if offload_dir is not None:
        root = _check_directory(offload_dir, "offload_dir")
        scratch = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root))
    try:
        if offload_dir is not None:
            model, tokenizer, source = load_skeleton(name_or_path, resolve_dtype(dtype), trust_remote_code)
            if structure(model).multimodal:
                raise WorkbenchError(f"model={name_or_path!r} is a vision-language model: streaming its language "
                                     "tower from disk is not built; prune it in memory or with onload (its vision "
                                     "parts stay in memory, untouched)")
            target = (Path(out) if out is not None else scratch / "pruned") if prunes else None
            if target is not None:
                target.mkdir(parents=True, exist_ok=True)
            residency: Residency = Stream(model, source, device, scratch, activations or "disk", target)
        else:
            model, tokenizer = load_model(name_or_path, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
            if onload or not fits_on_device(model, device):
                residency = Onload(device, activations or "cpu", scratch)
            else:
                model = model.to(device)
                residency = Residency(activations or "device", scratch, device)
        yield model, tokenizer, residency
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
