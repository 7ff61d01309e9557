"""Build a resources/kernels/*.cu file *unmodified* with g++ and the CUDA-emulation header, and launch its kernels.

Each source is concatenated after ``#include "cuda_emu.h"`` with generated ``launch_<name>`` wrappers
(one per kernel listed in ``workbench.backend.kernels.KERNELS``), compiled with ``-fsanitize=thread`` so
that every memory access of the kernel goes through the header's checks (bounds, races, uninitialised
shared memory; see cuda_emu.h), linked *without* the TSan runtime, and loaded with ctypes. Libraries are
cached by the hash of everything that goes into them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from workbench.backend.kernels import KERNELS, kernel_source

HEADER = Path(__file__).with_name("cuda_emu.h")
ORDERS = {"ascending": 0, "descending": 1, "random": 2}
_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float, "double": ctypes.c_double,
           "unsigned int": ctypes.c_uint}
_DTYPES = {"float": {torch.float32}, "double": {torch.float64}, "int": {torch.int32}, "unsigned char": {torch.uint8},
           "unsigned int": {torch.int32, torch.uint32}, "unsigned short": {torch.int16, torch.uint16}}
_CACHE = Path(tempfile.gettempdir()) / "workbench-cuda-emu"


class EmulatorError(AssertionError):
    """The emulator saw a race, an out-of-bounds access, an uninitialised read or a divergent barrier."""


def _wrapper(name: str, types: tuple[str, ...]) -> str:
    fields = "".join(f" {t} a{i};" for i, t in enumerate(types))
    params = ", ".join(f"{t} a{i}" for i, t in enumerate(types))
    values = ", ".join(f"a{i}" for i in range(len(types)))
    call = ", ".join(f"args_{name}.a{i}" for i in range(len(types)))
    return (f"struct args_{name}_t {{{fields} }};\n"
            f"static EMU_STATE args_{name}_t args_{name};\n"
            f"static void run_{name}() {{ {name}({call}); }}\n"
            f'extern "C" EMU_UNCHECKED void launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz, {params}) {{\n"
            f"  args_{name} = args_{name}_t{{{values}}};\n"
            f'  emu::launch("{name}", dim3(gx, gy, gz), dim3(bx, by, bz), run_{name});\n}}\n')


def _build(stem: str, text: str) -> Path:
    digest = hashlib.sha256((text + HEADER.read_text()).encode()).hexdigest()[:16]
    _CACHE.mkdir(parents=True, exist_ok=True)
    lib = _CACHE / f"{stem}-{digest}.so"
    if lib.exists():
        return lib
    work = Path(tempfile.mkdtemp(dir=_CACHE))
    cpp, obj, tmp = work / f"{stem}.cpp", work / f"{stem}.o", work / f"{stem}.so"
    cpp.write_text(text)
    for cmd in (["g++", "-std=c++17", "-O1", "-fPIC", "-w", "-fsanitize=thread", "-c", "-o", str(obj), str(cpp)],
                ["g++", "-shared", "-Wl,-z,defs", "-o", str(tmp), str(obj)]):  # no TSan runtime: hooks are ours
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"g++ failed on {stem}:\n{res.stderr}")
    os.replace(tmp, lib)
    return lib


class EmulatedModule:
    """The kernels of one .cu source, runnable on the CPU under the emulator's checks."""

    def __init__(self, filename: str, source: str | None = None):
        self.filename = filename
        self.source = kernel_source(filename) if source is None else source
        self.kernels = {n: types for n, (f, types) in KERNELS.items() if f == filename}
        text = f'#include "{HEADER}"\n#line 1 "{filename}"\n{self.source}\n' + "".join(
            _wrapper(n, t) for n, t in self.kernels.items())
        self.lib = ctypes.CDLL(str(_build(Path(filename).stem, text)))
        self.lib.emu_error.restype = ctypes.c_char_p
        self.lib.emu_configure.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
        self.lib.emu_add_buffer.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_int]

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], *args,
               order: str = "ascending", seed: int = 0) -> None:
        """Run kernel ``name``; tensors (CPU, contiguous) are passed by pointer and registered as the only
        global memory the kernel may touch, scalars by C type. Raises EmulatorError on any finding."""
        types = self.kernels[name]
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        self.lib.emu_configure(ORDERS[order], seed)
        self.lib.emu_clear_buffers()
        cargs = []
        for i, (value, ctype) in enumerate(zip(args, types, strict=True)):
            if ctype.endswith("*"):
                assert isinstance(value, torch.Tensor) and value.is_contiguous() and not value.is_cuda, (
                    f"{name} argument {i} ({ctype}) must be a contiguous CPU tensor")
                base = ctype.removeprefix("const ").removesuffix("*").strip()
                assert value.dtype in _DTYPES[base], (
                    f"{name} argument {i} ({ctype}) got {value.dtype}, needs {sorted(map(str, _DTYPES[base]))}")
                self.lib.emu_add_buffer(value.data_ptr(), value.numel() * value.element_size(), i)
                cargs.append(ctypes.c_void_p(value.data_ptr()))
            else:
                cargs.append(_CTYPES[ctype](value))
        getattr(self.lib, f"launch_{name}")(*(ctypes.c_uint(v) for v in grid + block), *cargs)
        error = self.lib.emu_error().decode().strip()
        if error:
            raise EmulatorError(f"{self.filename}: {error}")
