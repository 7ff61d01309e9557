"""One prune-and-evaluate run from a validated configuration, ending in a result record.

The CLI's ``prune``, the reproduction notebooks, the widgets' *Prune & evaluate* and the dashboard all
call :func:`run_experiment`, so a number means the same thing wherever it was produced.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import data as data_mod
from .calibrate import MODES
from .errors import WorkbenchError

EVALS = ("ppl", "zero-shot")
DENSE = "dense"  # the allocation of a run that prunes nothing (the dense baseline row)
_TEXT = ("model", "metric", "allocation", "pattern", "mode", "calib_dataset", "eval_dataset", "dtype", "device")
_COUNTS = {"nsamples": 1, "seqlen": 2, "eval_seqlen": 2, "limit": 1}  # optional integers and their minimum


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(config: ExperimentConfig) -> None:
    """Each field's type (and integer ranges) before any value check, so no value reaches code that
    assumes its type; an error names the field and what it accepts."""
    for name in _TEXT:
        if not isinstance(getattr(config, name), str):
            raise WorkbenchError(f"{name}={getattr(config, name)!r} must be a string")
    if config.group is not None and not isinstance(config.group, str):
        raise WorkbenchError(f"group={config.group!r} must be None or a string (row | matrix)")
    for name, low in _COUNTS.items():
        value = getattr(config, name)
        if value is not None and (not _is_int(value) or value < low):
            raise WorkbenchError(f"{name}={value!r} must be None (the default) or an integer >= {low}")
    if not _is_int(config.seed) or config.seed < 0:
        raise WorkbenchError(f"seed={config.seed!r} must be an integer >= 0")
    if not isinstance(config.trust_remote_code, bool):
        raise WorkbenchError(f"trust_remote_code={config.trust_remote_code!r} must be True or False")
    if isinstance(config.evals, str) or not isinstance(config.evals, list | tuple) \
            or not all(isinstance(e, str) for e in config.evals):
        raise WorkbenchError(f"evals={config.evals!r} must be a list of evaluations; allowed items: {list(EVALS)}")
    if not isinstance(config.alloc_params, dict) or not all(isinstance(k, str) for k in config.alloc_params):
        raise WorkbenchError(f"alloc_params={config.alloc_params!r} must be a mapping of allocator parameter names "
                              "to values")
    if not isinstance(config.tasks, str) and not (isinstance(config.tasks, list | tuple) and config.tasks):
        raise WorkbenchError(f"tasks={config.tasks!r} must be 'embedded', 'paper' or task names")


def _check_device(device: str) -> None:
    """The device's form only: a grid written for a GPU machine is still valid here (load_model says
    when the device is absent)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise WorkbenchError(f"device={device!r} is not a device; allowed: cpu, cuda, cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"device={device!r} is not supported; allowed: cpu, cuda, cuda:N")


@dataclass
class ExperimentConfig:
    """Everything that defines a run; checked on construction so a bad value fails before any work."""

    model: str = "smollm2-135m"
    metric: str = "wanda"
    allocation: str = "uniform"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    alloc_params: dict[str, Any] = field(default_factory=dict)
    mode: str = "sequential"
    group: str | None = None
    calib_dataset: str = "embedded"
    nsamples: int | None = None
    seqlen: int | None = None
    seed: int = 0
    evals: tuple[str, ...] = ("ppl",)
    eval_dataset: str = "embedded"
    eval_seqlen: int | None = None
    tasks: str = "embedded"
    limit: int | None = None
    zs_batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from .allocation import check_allocator
        from .models import resolve_dtype
        from .pruners import check_metric

        _check_types(self)
        self.evals = tuple(self.evals)
        resolve_dtype(self.dtype)
        _check_device(self.device)
        check_metric(self.metric, self.group)
        if self.prunes:
            check_allocator(self.allocation)
        if self.mode not in MODES:
            raise WorkbenchError(f"mode={self.mode!r} is not allowed; allowed: {list(MODES)}")
        bad = [e for e in self.evals if e not in EVALS]
        if bad:
            raise WorkbenchError(f"evals={list(self.evals)!r}: {bad[0]!r} is not allowed; allowed: {list(EVALS)}")
        data_mod.check_dataset(self.calib_dataset, "calib_dataset")
        data_mod.check_dataset(self.eval_dataset, "eval_dataset")
        if "zero-shot" in self.evals:
            from .zeroshot import check_zero_shot_args, resolve_tasks

            check_zero_shot_args(self.limit, self.zs_batch_size)
            resolve_tasks(self.tasks)
        if self.prunes:
            from .allocation import check_params

            check_params(self.allocation, self.alloc_params, self.metric)
            if any(isinstance(v, str) and v == "auto" for v in self.alloc_params.values()):
                from .tuning import check_auto

                check_auto(self.allocation, self.alloc_params)
                data_mod.check_held_out(self.eval_dataset, "eval_dataset")  # tuning reads its validation text
        from .prune import check_target

        check_target(self.pattern, self.allocation, self.sparsity)

    @property
    def prunes(self) -> bool:
        """False for the dense baseline (allocation ``"dense"``): nothing is calibrated or pruned."""
        return self.allocation != DENSE

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["evals"] = list(self.evals)
        return out


def run_experiment(config: ExperimentConfig, model=None, tokenizer=None, progress: bool = True,
                   on_stage=None, cache=None, residency=None) -> dict[str, Any]:
    """Load (unless given), prune in place, evaluate; return the result record (not written to disk).

    ``allocation="dense"`` evaluates the unpruned model. ``on_stage(name)`` is called as the run
    moves through ``load``, ``prune``, ``ppl``, ``zero-shot`` (for progress displays). ``cache``: a
    DenseCache of ``model`` built from this config's calibration; dense-mode runs then prune from it
    (no forward pass). It is refused when its calibration is not the config's. ``residency``: ``model`` is
    onloaded or streamed block by block (:func:`workbench.offload.placed_model`); pruning and perplexity
    then run block-major with the same numbers.
    """
    from .evaluate import perplexity
    from .models import load_model
    from .offload import Residency
    from .prune import prune
    from .results import make_record

    if residency is not None and residency.blockwise:
        check_placed(config)
    residency = residency or Residency()
    stage = on_stage or (lambda _name: None)
    start = time.perf_counter()
    if model is None:
        stage("load")
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device,
                                      trust_remote_code=config.trust_remote_code)
    metrics: dict[str, Any] = {}
    data: dict[str, Any] = {}
    params = dict(config.alloc_params)  # with any "auto" value replaced by the value searched
    extra: dict[str, Any] = {}
    if config.prunes:
        stage("prune")
        calibration = None
        if cache is not None:
            check_cache(config, cache)
        elif config.metric != "magnitude" or config.allocation != "uniform":
            calibration = data_mod.calibration_samples(tokenizer, config.calib_dataset, config.nsamples,
                                                       config.seqlen, config.seed)
        from .tuning import resolve_auto

        params, tuning = resolve_auto(config.allocation, config.alloc_params, model, tokenizer, config.sparsity,
                                      cache=cache, calibration=calibration, progress=progress,
                                      dataset=config.eval_dataset)
        result = prune(model, tokenizer, metric=config.metric, allocation=config.allocation,
                       sparsity=config.sparsity, pattern=config.pattern, calibration=calibration,
                       mode=config.mode, group=config.group, allocation_params=params,
                       cache=cache, progress=progress, residency=residency)
        metrics["actual_sparsity"] = result.report["actual"]
        data["calibration"] = result.provenance
        extra = {"profile": result.profile.to_dict(), "sparsity_report": result.report, "timings": result.timings}
        if tuning is not None:
            extra["tuning"] = tuning
        result_profile = result.profile
    else:
        result_profile = None
    if "ppl" in config.evals:
        stage("ppl")
        ppl = perplexity(model, tokenizer, dataset=config.eval_dataset, seqlen=config.eval_seqlen, progress=progress,
                         residency=residency.after_prune() if result_profile is not None else residency)
        metrics["perplexity"] = ppl.ppl
        data["eval"] = ppl.to_dict()
    if "zero-shot" in config.evals:
        from .zeroshot import zero_shot

        stage("zero-shot")
        result = zero_shot(model, tokenizer, tasks=config.tasks, limit=config.limit, batch_size=config.zs_batch_size)
        metrics.update(result.metrics())
        data["zero_shot"] = result.to_dict()
    if config.device.startswith("cuda"):
        import torch

        extra["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(config.device)
    method = {"metric": config.metric, "allocation": config.allocation, "sparsity": config.sparsity,
              "pattern": config.pattern, "mode": config.mode, "group": config.group, "params": params}
    record = make_record("prune" if result_profile is not None else "eval",
                         model={"id": config.model, "weight_sha256": residency.weight_hash(model),
                                "dtype": config.dtype, "device": config.device},
                         method=method, data=data, metrics=metrics, wall_time_s=time.perf_counter() - start,
                         extra={"config": config.to_dict(), "residency": residency.describe(), **extra})
    return record


def check_placed(config: ExperimentConfig) -> None:
    """What an onloaded or streamed run (or one keeping activations off the device) cannot do, refused
    before any work."""
    if "zero-shot" in config.evals:
        raise WorkbenchError("evals: zero-shot accuracy needs the model in memory (lm-eval drives it); with "
                              "--onload/--offload-dir evaluate perplexity, then run `workbench eval --tasks` on the "
                              "saved checkpoint")
    if any(v == "auto" for v in config.alloc_params.values()):
        raise WorkbenchError("alloc_params: 'auto' values are searched on an in-memory model; give the value "
                              "itself with --onload/--offload-dir")
    if config.prunes and config.mode != "sequential":
        raise WorkbenchError(f"mode={config.mode!r}: an onloaded or streamed model prunes block by block; "
                              "use mode='sequential'")


def _calibration_of(config: ExperimentConfig) -> dict[str, Any]:
    """The calibration provenance ``config`` asks for (dataset defaults filled in)."""
    defaults = data_mod.default_calibration(config.calib_dataset)
    return {"dataset": config.calib_dataset, "nsamples": config.nsamples or defaults["nsamples"],
            "seqlen": config.seqlen or defaults["seqlen"], "seed": config.seed}


def cache_fits(config: ExperimentConfig, cache) -> bool:
    """Whether a run of ``config`` may prune from ``cache``: dense mode, the same calibration, the
    metric's statistics present (e.g. SparseGPT needs X^T X, which a Wanda cache lacks)."""
    from .pruners import NEEDS

    if config.mode != "dense" or not config.prunes:
        return False
    same = all(cache.provenance.get(k) == v for k, v in _calibration_of(config).items())
    return same and cache.has(NEEDS[config.metric])


def check_cache(config: ExperimentConfig, cache) -> None:
    """Refuse a cache a run cannot use (its record would name a calibration it did not use)."""
    if not cache_fits(config, cache):
        raise WorkbenchError(f"cache: a DenseCache of calibration {cache.provenance} cannot serve "
                             f"mode={config.mode!r}, "
                              f"metric={config.metric!r}, calibration {_calibration_of(config)}")
