"""The one runner: a :class:`~workbench.spec.RunSpec` in, a result record out (load, place, prune, evaluate, save).

The CLI's ``prune``, the grid notebooks, the demo, the widgets' *Prune & evaluate*, the dashboard and Ray workers
all call :func:`run`, so a number means the same thing wherever it was produced.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from . import data as data_mod
from .errors import WorkbenchError
from .results import RunRecord, make_record
from .spec import MethodSpec, RunSpec

STAGES = ("load", "prune", "ppl", "zero-shot")  # what ``on_stage`` is told, in order


def run(spec: RunSpec, *, model=None, tokenizer=None, cache=None, residency=None, progress: bool = True,
        on_stage=None) -> RunRecord:
    """Run ``spec`` and return its record (not written to disk); the pruned model is saved when ``spec.save`` says.

    ``model``/``tokenizer``: an already loaded model (pruned in place); otherwise it is loaded as
    ``spec.model`` and ``spec.placement`` say (onloaded or streamed block by block when asked, or when a CUDA
    device cannot hold it). ``cache``: a DenseCache of ``model`` from this spec's calibration, so that a dense-mode
    run prunes without a forward pass. ``on_stage(name)`` is told each of :data:`STAGES` as the run reaches it.
    """
    stage = on_stage or (lambda _name: None)
    if model is not None:
        return _run_loaded(spec, model, tokenizer, cache, residency, progress, stage)
    if spec.placement.placed or spec.model.device.startswith("cuda"):
        return _run_placed(spec, progress, stage)
    from .models import load_model

    stage("load")
    model, tokenizer = load_model(spec.model.name, dtype=spec.model.dtype, device=spec.model.device,
                                  trust_remote_code=spec.model.trust_remote_code)
    return _run_loaded(spec, model, tokenizer, None, None, progress, stage)


def _run_placed(spec: RunSpec, progress: bool, stage) -> RunRecord:
    """The model onloaded or streamed; a streamed run writes ``save.dir`` block by block (nothing appears under
    that name unless the whole checkpoint was written)."""
    from .checkpoint import complete_checkpoint
    from .offload import Stream, placed_model
    from .profile import SparsityProfile
    from .results import atomic_directory
    from .spec import check_placed

    m, p, s = spec.model, spec.placement, spec.save
    stage("load")
    streamed_save = s.dir is not None and p.offload_dir is not None and spec.prunes
    target = atomic_directory(s.dir) if streamed_save else nullcontext(None)
    with target as out, placed_model(m.name, m.dtype, m.device, m.trust_remote_code, onload=p.onload,
                                     offload_dir=p.offload_dir, activations=p.activations, prunes=spec.prunes,
                                     out=out) as (model, tokenizer, residency):
        if residency.blockwise:
            check_placed(spec)  # an automatic onload (the model does not fit the device) is checked once chosen
        record = _run_loaded(spec, model, tokenizer, None, residency, progress, stage, save=False)
        if isinstance(residency, Stream) and out is not None:
            residency.finish()
            complete_checkpoint(out, tokenizer, SparsityProfile.from_dict(record["profile"]), s.format,
                                spec.method.pattern, model)
        elif s.dir is not None and spec.prunes:
            _save(spec, model, tokenizer, record)
    return record


def _run_loaded(spec: RunSpec, model, tokenizer, cache, residency, progress: bool, stage,
                save: bool = True) -> RunRecord:
    """Prune in place, evaluate, save: the run on a model already where it will stay."""
    from .evaluate import perplexity
    from .multimodal import multimodal_record
    from .offload import Residency

    residency = residency or Residency()
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    params: dict[str, Any] = {}
    pruned = False
    if spec.prunes:
        stage("prune")
        result, params, tuning = _prune(spec, model, tokenizer, cache, residency, progress)
        metrics["actual_sparsity"] = result.report["actual"]
        if "bits_per_weight" in result.report:  # quantized: storage per weight (values, mask, grids)
            metrics["bits_per_weight"] = result.report["bits_per_weight"]
        data["calibration"] = result.provenance
        extra = {"profile": result.profile.to_dict(), "sparsity_report": result.report, "timings": result.timings}
        if tuning is not None:
            extra["tuning"] = tuning
        pruned = True
    ev = spec.evaluation
    if "ppl" in ev.evals:
        stage("ppl")
        ppl = perplexity(model, tokenizer, dataset=ev.dataset, seqlen=ev.seqlen, progress=progress,
                         residency=residency.after_prune() if pruned else residency)
        metrics["perplexity"] = ppl.ppl
        data["eval"] = ppl.to_dict()
    if "zero-shot" in ev.evals:
        from .zeroshot import zero_shot

        stage("zero-shot")
        result = zero_shot(model, tokenizer, tasks=ev.tasks, limit=ev.limit, batch_size=ev.zs_batch_size)
        metrics.update(result.metrics())
        data["zero_shot"] = result.to_dict()
    if spec.model.device.startswith("cuda"):
        import torch

        extra["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(spec.model.device)
    m = spec.method
    method = {"metric": m.metric, "allocation": m.allocation.name, "sparsity": m.sparsity, "pattern": m.pattern,
              "mode": m.mode, "group": m.group, "params": params}
    if m.quant().enabled:  # what was quantized how (records without it: 16 bits)
        method["quantization"] = {"wbits": m.wbits, "group_size": m.group_size, "symmetric": m.symmetric,
                                  "method": m.quant_method}
    record = make_record("prune" if pruned else "eval",
                         model={"id": spec.model.name, "weight_sha256": residency.weight_hash(model),
                                "dtype": spec.model.dtype, "device": spec.model.device,
                                **multimodal_record(model)},
                         method=method, data=data, metrics=metrics, wall_time_s=time.perf_counter() - start,
                         extra={"config": spec.flat(), "spec": spec.to_dict(), "residency": residency.describe(),
                                **extra})
    if save and pruned and spec.save.dir is not None:
        _save(spec, model, tokenizer, record)
    return record


def _prune(spec: RunSpec, model, tokenizer, cache, residency, progress: bool):
    """Calibrate (unless a fitting cache is given), tune any 'auto' parameter, prune: (result, params, tuning)."""
    from .prune import prune
    from .tuning import resolve_auto

    m, c = spec.method, spec.calibration
    calibration = None
    if cache is not None:
        check_cache(spec, cache)
    elif (m.metric != "magnitude" or m.allocation.name != "uniform" or c.images
          or (m.quant().enabled and m.quant_method != "rtn")):
        calibration = data_mod.calibration_samples(tokenizer, c.dataset, c.nsamples, c.seqlen, c.seed)
        if c.images:  # image-text calibration of a vision-language model
            from .multimodal import image_calibration

            calibration = image_calibration(calibration, model, tokenizer, c.images)
    params, tuning = resolve_auto(m.allocation.name, m.allocation.params(), model, tokenizer, m.sparsity,
                                  cache=cache, calibration=calibration, progress=progress,
                                  dataset=spec.evaluation.dataset)
    if tuning is not None:  # the tuned values replace 'auto' (and are checked against the declarations again)
        m = MethodSpec.model_validate({**m.model_dump(exclude_unset=True),
                                       "allocation": {"name": m.allocation.name, **params}})
    result = prune(model, tokenizer, m, calibration=calibration, cache=cache, progress=progress,
                   residency=residency)
    return result, params, tuning


def _save(spec: RunSpec, model, tokenizer, record: RunRecord) -> None:
    from .checkpoint import save_pruned
    from .profile import SparsityProfile

    save_pruned(model, tokenizer, SparsityProfile.from_dict(record["profile"]), spec.save.dir, spec.save.format,
                spec.method.pattern)


def cache_fits(spec: RunSpec, cache) -> bool:
    """Whether a run of ``spec`` may prune from ``cache``: dense mode, the same calibration, the metric's
    statistics present (e.g. SparseGPT needs X^T X, which a Wanda cache lacks; so does LSA's allocation)."""
    from .allocation import check_allocator
    from .pruners import NEEDS

    if spec.method.mode != "dense" or not spec.prunes:
        return False
    wanted = spec.calibration.provenance()
    same = all(cache.provenance.get(k) == v for k, v in wanted.items()) and \
        cache.provenance.get("images", []) == wanted.get("images", [])  # text windows never stand in for images
    hessians = ("xtx",) if check_allocator(spec.method.allocation.name).needs_hessians else ()
    return same and cache.has((*NEEDS[spec.method.metric], *hessians))


def check_cache(spec: RunSpec, cache) -> None:
    """Refuse a cache a run cannot use (its record would name a calibration it did not use)."""
    if not cache_fits(spec, cache):
        raise WorkbenchError(f"cache: a DenseCache of calibration {cache.provenance} cannot serve "
                             f"mode={spec.method.mode!r}, metric={spec.method.metric!r}, calibration "
                             f"{spec.calibration.provenance()}")
