"""Result records: one JSON file per run with its configuration, provenance and metrics.

Every record carries what is needed to reproduce or distrust a number: model id and weight hash,
dataset and text hash, seqlen, nsamples, seed, method and its parameters, package versions and wall
time. Files are written atomically (temporary file + rename): a crash never leaves half a record.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

SCHEMA_VERSION = 1
_PACKAGES = ("torch", "transformers", "datasets", "safetensors", "gguf", "numpy", "lm_eval", "cupy-cuda13x")


def package_versions() -> dict[str, str]:
    """Versions of the packages that can move a number (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        out["workbench"] = metadata.version("sparsity-workbench")
    except metadata.PackageNotFoundError:
        pass
    return out


class RunRecord(TypedDict, total=False):
    """The one result record of a run (written as JSON; every front end reads the same keys)."""

    schema: int
    kind: str                    # "prune" | "eval"
    created: str
    model: dict[str, Any]        # id, weight_sha256, dtype, device
    method: dict[str, Any]       # metric, allocation, sparsity, pattern, mode, group, params
    data: dict[str, Any]         # calibration / eval / zero_shot provenance
    metrics: dict[str, Any]      # actual_sparsity, perplexity, zero-shot accuracies
    wall_time_s: float | None
    versions: dict[str, str]
    platform: dict[str, Any]
    config: dict[str, Any]       # the run's settings by flat name (workbench.spec.FLAT)
    spec: dict[str, Any]         # the RunSpec as given (RunSpec.model_validate reads it back)
    residency: dict[str, Any]
    profile: dict[str, Any]
    sparsity_report: dict[str, Any]
    timings: dict[str, float]
    tuning: dict[str, Any]
    peak_gpu_memory_bytes: int
    status: str                  # set by the grid runner: ok | error
    run: dict[str, Any]


def make_record(kind: str, model: dict[str, Any], method: dict[str, Any], metrics: dict[str, Any],
                data: dict[str, Any] | None = None, wall_time_s: float | None = None,
                extra: dict[str, Any] | None = None) -> RunRecord:
    """Assemble a result record; ``model`` holds id and weight hash, ``data`` the dataset provenance."""
    record = {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "method": method,
        "data": data or {},
        "metrics": metrics,
        "wall_time_s": wall_time_s,
        "versions": package_versions(),
        "platform": platform_info(),
    }
    if extra:
        record.update(extra)
    return record


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else platform.processor()), or '' where neither says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def platform_info() -> dict[str, Any]:
    """Where a record was computed. Float results on the CPU depend on the CPU's kernels (MKL / oneDNN take other
    code paths on other instruction sets) and the thread count, so both are kept: at 70% sparsity SmolLM2's
    perplexity moved by 1.7% between two machines (docs/results.md#how-far-these-numbers-travel)."""
    import torch

    return {"machine": platform.machine(), "system": platform.system(), "argv": sys.argv[1:], "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target`` to fill; on success it takes ``target``'s name, on any
    failure it is removed and ``target`` is untouched. ``replace=False`` keeps a ``target`` that already
    exists (a cache another process built first) and drops the new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists() and not replace:
            return
        old = target.with_name(f".{target.name}-old-{uuid.uuid4().hex[:8]}") if target.exists() else None
        if old is not None:
            target.rename(old)
        try:
            tmp.rename(target)
        except OSError:
            if old is not None:
                old.rename(target)
            if replace or not target.exists():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Load one result record."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def compact_params(params: dict) -> str:
    """Allocator parameters in a table cell: numbers rounded, a DSA function as its stages and λ."""
    parts = []
    for key, value in params.items():
        if key == "function" and isinstance(value, dict):
            value = (f"{'+'.join(value.get('pre', []))} → {value.get('reduction')} → "
                     f"{'+'.join(value.get('post', []))}, λ {value.get('lam', 0):.3g}")
        elif isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)
