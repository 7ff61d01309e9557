"""Build a kernels/*.cu file *unmodified* with g++ and the CUDA-emulation header, and launch its kernels.

Each source is concatenated after ``#include "cuda_emu.h"`` with generated ``launch_<name>`` wrappers
(one per kernel listed in ``workbench.backend.kernels.KERNELS``), compiled to a shared library and loaded
with ctypes. Libraries are cached by the hash of everything that goes into them.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import tempfile
from pathlib import Path

import torch

from workbench.backend.kernels import KERNELS, kernel_source

HEADER = Path(__file__).with_name("cuda_emu.h")
_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float, "double": ctypes.c_double,
           "unsigned int": ctypes.c_uint}
_CACHE = Path(tempfile.gettempdir()) / "workbench-cuda-emu"


def _wrapper(name: str, types: tuple[str, ...]) -> str:
    params = ", ".join(f"{t} a{i}" for i, t in enumerate(types))
    call = ", ".join(f"a{i}" for i in range(len(types)))
    return (f'extern "C" void launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f"unsigned bz, {params}) {{\n"
            f"  emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), [=]() {{ {name}({call}); }});\n}}\n")


class EmulatedModule:
    """The kernels of one .cu source, runnable on the CPU."""

    def __init__(self, filename: str, source: str | None = None):
        self.filename = filename
        self.source = kernel_source(filename) if source is None else source
        self.kernels = {n: types for n, (f, types) in KERNELS.items() if f == filename}
        text = f'#include "{HEADER}"\n#line 1 "{filename}"\n{self.source}\n' + "".join(
            _wrapper(n, t) for n, t in self.kernels.items())
        digest = hashlib.sha256((text + HEADER.read_text()).encode()).hexdigest()[:16]
        _CACHE.mkdir(parents=True, exist_ok=True)
        lib = _CACHE / f"{Path(filename).stem}-{digest}.so"
        if not lib.exists():
            cpp = _CACHE / f"{Path(filename).stem}-{digest}.cpp"
            cpp.write_text(text)
            tmp = lib.with_suffix(".so.tmp")
            res = subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-o", str(tmp), str(cpp)],
                                 capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"g++ failed on {filename}:\n{res.stderr}")
            tmp.rename(lib)
        self.lib = ctypes.CDLL(str(lib))

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], *args) -> None:
        """Run kernel ``name``; tensors (CPU, contiguous) are passed by pointer, scalars by C type."""
        types = self.kernels[name]
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        cargs = []
        for value, ctype in zip(args, types, strict=True):
            if ctype.endswith("*"):
                assert isinstance(value, torch.Tensor) and value.is_contiguous() and not value.is_cuda
                cargs.append(ctypes.c_void_p(value.data_ptr()))
            else:
                cargs.append(_CTYPES[ctype](value))
        getattr(self.lib, f"launch_{name}")(*grid, *block, *cargs)
