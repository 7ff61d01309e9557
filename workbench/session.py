"""Session: a loaded model and its dense statistics, held for the interactive front ends.

The widgets and the dashboard ask a session for allocation profiles (uniform / OWL / DSA / any
registered allocator) many times a second while a slider moves: the dense calibration pass and the
per-layer Wanda scores are computed once, so a re-allocation costs no forward pass. Runs (prune and
evaluate) go through :func:`workbench.runner.run` on the session's model, one at a
time (a lock queues concurrent requests), and the dense weights are put back before each run.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .allocation import AllocationInput, allocate
from .data import DEFAULT_DATASET, calibration_samples
from .errors import WorkbenchError
from .models import layer_infos
from .profile import SparsityProfile
from .spec import RunSpec

CURVE_ALLOCATORS = ("uniform", "owl", "dsa")


class Session:
    """Model + tokenizer + DenseCache (Wanda statistics of the dense model), loaded lazily."""

    def __init__(self, model: str = "smollm2-135m", nsamples: int | None = None, seqlen: int | None = None,
                 seed: int = 0, device: str = "cpu", progress: bool = False, dataset: str = DEFAULT_DATASET):
        self.model_name, self.device, self.progress, self.dataset = model, device, progress, dataset
        self.calibration_settings = {"nsamples": nsamples, "seqlen": seqlen, "seed": seed}
        self._model = self._tokenizer = self._cache = self._inputs = None
        self._calibration = self._xtx = None  # the windows of the cache; X^T X of the dense model, on first need
        self._state_lock = threading.Lock()  # lazy loading
        self.run_lock = threading.Lock()  # one prune-and-evaluate run at a time

    # ------------------------------------------------------------------ lazy state
    def _load(self) -> None:
        from .models import load_model
        from .prune import DenseCache

        with self._state_lock:
            if self._cache is not None:
                return
            model, tokenizer = load_model(self.model_name, device=self.device)
            settings = self.calibration_settings
            calibration = calibration_samples(tokenizer, self.dataset, settings["nsamples"], settings["seqlen"],
                                              settings["seed"])
            cache = DenseCache.build(model, calibration, ("sq_norm",), progress=self.progress)
            self._model, self._tokenizer, self._cache, self._calibration = model, tokenizer, cache, calibration

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def cache(self):
        self._load()
        return self._cache

    def _dense_xtx(self) -> dict:
        """X^T X of every linear's inputs in the dense model over the cache's windows: one more dense pass, made
        the first time an allocator reads Hessians (LSA), so that the other allocators' curves cost nothing more."""
        from .calibrate import calibrate

        cache = self.cache  # loaded before the run lock (a run takes the state lock inside it)
        with self.run_lock:  # a run prunes the model in place: the pass needs its dense weights
            if self._xtx is None:
                cache.restore(self.model)
                self._xtx = calibrate(self.model, self._calibration.input_ids, "dense", ("xtx",),
                                      window_kwargs=self._calibration.window_kwargs,
                                      progress=self.progress)
        return self._xtx

    def inputs(self) -> AllocationInput:
        """Layer infos, (memoised) Wanda scores of the dense weights and, on first need, their Hessians."""
        if self._inputs is None:
            from .pruners import layer_scores

            cache = self.cache
            stats = cache.stats
            scores: dict[str, torch.Tensor] = {}

            def score(name: str) -> torch.Tensor:
                if name not in scores:
                    scores[name] = layer_scores("wanda", cache.weights[name], stats[name])
                return scores[name]

            self._inputs = AllocationInput(layer_infos(self.model), score, weights=cache.weights.__getitem__,
                                           hessians=lambda name: self._dense_xtx()[name].hessian())
        return self._inputs

    # ------------------------------------------------------------------ allocation
    def profile(self, allocation: str, sparsity: float, **params: Any) -> SparsityProfile:
        """The allocator's profile for ``sparsity`` from the cached dense statistics (no forward pass)."""
        return allocate(allocation, self.inputs(), sparsity, **params)

    def curves(self, sparsity: float, lam: float = 0.08, M: float = 5.0, function: Any = "readme",
               allocators: tuple[str, ...] = CURVE_ALLOCATORS, params: dict[str, dict] | None = None,
               ) -> tuple[dict[str, SparsityProfile], dict[str, str]]:
        """Profiles of ``allocators`` at one target (OWL at ``lam``/``M``, DSA with ``function``, any other at
        ``params[name]`` or its declared defaults); those that cannot allocate give a message instead."""
        chosen = {"owl": {"lam": lam, "M": M}, "dsa": {"function": function}, **(params or {})}
        profiles, errors = {}, {}
        for name in allocators:
            try:
                profiles[name] = self.profile(name, sparsity, **chosen.get(name, {}))
            except ValueError as err:
                errors[name] = str(err)
        return profiles, errors

    # ------------------------------------------------------------------ runs
    def run(self, spec: RunSpec, on_stage=None) -> dict[str, Any]:
        """Prune-and-evaluate on the session's model (dense weights restored first); queued by a lock.
        A dense-mode run on the session's calibration prunes from the session's dense statistics."""
        from .runner import cache_fits, run

        if spec.model.name != self.model_name:
            raise WorkbenchError(f"model={spec.model.name!r} differs from the session's model {self.model_name!r}")
        with self.run_lock:
            self.cache.restore(self.model)
            try:
                cache = self.cache if cache_fits(spec, self.cache) else None
                return run(spec, model=self.model, tokenizer=self.tokenizer, cache=cache, progress=self.progress,
                           on_stage=on_stage)
            finally:
                self.cache.restore(self.model)
