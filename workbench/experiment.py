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

EVALS = ("ppl", "zero-shot")


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
        from .pruners import check_metric

        self.evals = tuple(self.evals)
        check_metric(self.metric, self.group)
        if self.allocation != "dense":
            check_allocator(self.allocation)
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed; allowed: {list(MODES)}")
        bad = [e for e in self.evals if e not in EVALS]
        if bad:
            raise ValueError(f"evals={list(self.evals)!r}: {bad[0]!r} is not allowed; allowed: {list(EVALS)}")
        data_mod.check_dataset(self.calib_dataset)
        data_mod.check_dataset(self.eval_dataset)
        if "zero-shot" in self.evals:
            from .zeroshot import check_zero_shot_args, resolve_tasks

            check_zero_shot_args(self.limit, self.zs_batch_size)
            resolve_tasks(self.tasks)
        if not isinstance(self.alloc_params, dict):
            raise ValueError(f"alloc_params={self.alloc_params!r} must be a mapping of allocator parameters")
        if self.allocation != "dense":
            from .allocation import check_params

            check_params(self.allocation, self.alloc_params, self.metric)
        from .prune import check_target

        check_target(self.pattern, self.allocation, self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["evals"] = list(self.evals)
        return out


def run_experiment(config: ExperimentConfig, model=None, tokenizer=None, progress: bool = True,
                   on_stage=None, cache=None) -> dict[str, Any]:
    """Load (unless given), prune in place, evaluate; return the result record (not written to disk).

    ``allocation="dense"`` evaluates the unpruned model. ``on_stage(name)`` is called as the run
    moves through ``load``, ``prune``, ``ppl``, ``zero-shot`` (for progress displays). ``cache``: a
    DenseCache of ``model`` built from this config's calibration; dense-mode runs then prune from it
    (no forward pass). It is refused when its calibration is not the config's.
    """
    from .evaluate import perplexity
    from .models import load_model, model_hash
    from .prune import prune
    from .results import make_record

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
    if config.allocation != "dense":
        stage("prune")
        calibration = None
        if cache is not None:
            check_cache(config, cache)
        elif config.metric != "magnitude" or config.allocation != "uniform":
            calibration = data_mod.calibration_samples(tokenizer, config.calib_dataset, config.nsamples,
                                                       config.seqlen, config.seed)
        from .tuning import resolve_auto

        params, tuning = resolve_auto(config.allocation, config.alloc_params, model, tokenizer, config.sparsity,
                                      cache=cache, calibration=calibration, progress=progress)
        result = prune(model, tokenizer, metric=config.metric, allocation=config.allocation,
                       sparsity=config.sparsity, pattern=config.pattern, calibration=calibration,
                       mode=config.mode, group=config.group, allocation_params=params,
                       cache=cache, progress=progress)
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
        ppl = perplexity(model, tokenizer, dataset=config.eval_dataset, seqlen=config.eval_seqlen, progress=progress)
        metrics["perplexity"] = ppl.ppl
        data["eval"] = ppl.to_dict()
    if "zero-shot" in config.evals:
        from .zeroshot import zero_shot

        stage("zero-shot")
        result = zero_shot(model, tokenizer, tasks=config.tasks, limit=config.limit, batch_size=config.zs_batch_size)
        metrics.update(result.metrics())
        data["zero_shot"] = result.to_dict()
    method = {"metric": config.metric, "allocation": config.allocation, "sparsity": config.sparsity,
              "pattern": config.pattern, "mode": config.mode, "group": config.group, "params": params}
    record = make_record("prune" if result_profile is not None else "eval",
                         model={"id": config.model, "weight_sha256": model_hash(model), "dtype": config.dtype,
                                "device": config.device},
                         method=method, data=data, metrics=metrics, wall_time_s=time.perf_counter() - start,
                         extra={"config": config.to_dict(), **extra})
    return record


def _calibration_of(config: ExperimentConfig) -> dict[str, Any]:
    """The calibration provenance ``config`` asks for (dataset defaults filled in)."""
    defaults = data_mod.default_calibration(config.calib_dataset)
    return {"dataset": config.calib_dataset, "nsamples": config.nsamples or defaults["nsamples"],
            "seqlen": config.seqlen or defaults["seqlen"], "seed": config.seed}


def cache_fits(config: ExperimentConfig, cache) -> bool:
    """Whether a run of ``config`` may prune from ``cache``: dense mode, the same calibration, the
    metric's statistics present (e.g. SparseGPT needs X^T X, which a Wanda cache lacks)."""
    from .pruners import NEEDS

    if config.mode != "dense" or config.allocation == "dense":
        return False
    same = all(cache.provenance.get(k) == v for k, v in _calibration_of(config).items())
    return same and cache.has(NEEDS[config.metric])


def check_cache(config: ExperimentConfig, cache) -> None:
    """Refuse a cache a run cannot use (its record would name a calibration it did not use)."""
    if not cache_fits(config, cache):
        raise ValueError(f"cache: a DenseCache of calibration {cache.provenance} cannot serve mode={config.mode!r}, "
                         f"metric={config.metric!r}, calibration {_calibration_of(config)}")
