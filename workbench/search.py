"""Evolutionary search over DSA allocation functions (the part the public DSA code lacks), beside a
random search of the same budget; multi-fidelity fitness as in EvoPress (IST-DASLab/EvoPress).

Fitness is measured on the *validation* split (never test; a dataset whose validation text is not held
out from its test text is refused, :func:`workbench.data.check_held_out`) after pruning the dense model
with the candidate's allocation (Wanda scores of the dense model, per-row masks). Two fidelities:

* cheap: ``cheap_fitness`` (default ``kl``: mean next-token KL divergence from the dense model, whose
  log-probabilities are cached once) on ``cheap_windows`` x ``cheap_seqlen`` validation tokens;
* full: ``fitness`` (default ``ppl``: the papers' perplexity protocol) on ``fitness_windows`` x
  ``fitness_seqlen`` validation tokens.

Every new candidate is scored cheaply; of each generation's new candidates only the ``promote`` best
(``max(promote, elite)`` in generation 0) are scored at full fidelity. Elites and the best are chosen and
compared only at full fidelity; parents are ranked with full-fidelity candidates first (by full fitness),
then cheap-only ones (by cheap fitness). ``cheap_windows=0`` scores every candidate at full fidelity.

Evolution: truncation (the worse half of the ranked pool does not breed), tournament selection, crossover
between stages, mutation of one part, elitism (the ``elite`` best full-fidelity functions survive, at no
cost). Every new individual is a function not evaluated before (redrawn up to ``NOVELTY_TRIES`` times).
The random baseline draws, chunk by chunk, as many distinct functions as the evolution's generations
scored and promotes as many per chunk: the same budget at both fidelities. The two kinds share no score:
each pays for every fitness it uses (its own caches, counted in ``paid``).

Selection noise: the best of hundreds of candidates on the same validation windows is chosen partly on
their noise, so the final choice of each kind and the hand-made baselines are re-scored on
``heldout_windows`` x ``fitness_seqlen`` validation tokens never used during the search (the end of the
validation text; the search's windows are its start) and reported beside the in-search value.

Function sets: ``workbench`` (every op of :mod:`workbench.allocation.dsa.ops`, λ in [0.01, 0.3], mapping
direction ±1) or ``dsa-public`` (the public DSA code's ops only, direction +1, λ fixed at 0.08 as there).

A candidate is cheap: dense statistics, scores and each row's sort order are computed once
(:class:`SearchContext`); block values are memoised per (pre ops, reduction); masks change only where a
linear's count of pruned weights changed (pruned positions zeroed, un-pruned ones restored from the dense
copy); a function whose counts equal an evaluated one's reuses its fitness. Seeded and deterministic on
the CPU; the state is written atomically after every generation, and ``resume=True`` ends exactly where
an uninterrupted run ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, StrictBool, model_validator
from tqdm.auto import tqdm

from .allocation import AllocationInput, groups
from .allocation.base import spread_over, unit_weights
from .allocation.dsa import ops
from .allocation.dsa.function import AllocationFunction, InvalidFunction, dsa
from .backend import kernels
from .data import DEFAULT_DATASET, check_held_out, eval_tokens
from .errors import WorkbenchError
from .evaluate import kl_of, log_probs_of, mean_nll, perplexity_of, split_windows, window_log_probs
from .level_space import LevelSpace, LevelVector, check_step
from .models import layer_infos, prunable_linears
from .prefix_cache import PrefixCache
from .registry import Plugin, Registry
from .results import write_json_atomic
from .spec import CalibrationSpec, ModelSpec, Spec

STATE_VERSION = 5  # 5: no score shared between kinds, paid fitness per record, held-out re-score
NOVELTY_TRIES = 50  # redraws of a child (or random draw) whose function was already evaluated
FITNESS: Registry[Plugin] = Registry("fitness kind", "fitness")
FITNESS.add("ppl", Plugin("ppl", "perplexity of the pruned model on validation windows"))
FITNESS.add("kl", Plugin("kl", "KL divergence of the pruned model's next-token distribution from the dense one's"))
FUNCTION_SETS: Registry[Plugin] = Registry("function set", "function_set")
FUNCTION_SETS.add("workbench", Plugin("workbench", "every op, λ and direction searched"))
FUNCTION_SETS.add("dsa-public", Plugin("dsa-public", "the public DSA code's ops only, direction +1, λ 0.08"))
PUBLIC_LAMBDA = 0.08  # the public DSA code fixes λ
KINDS = ("evolution", "random")


# --------------------------------------------------------------------------- configuration

class SearchConfig(Spec):
    """The search specification: everything that defines a search's result (a checkpoint resumes only with the
    same values). Typed and frozen like :class:`workbench.spec.RunSpec`; the CLI's ``search`` flags are generated
    from these fields (type, default, help written once, here)."""

    sparsity: float = Field(0.7, description="target sparsity of every candidate allocation, in [0, 1)")
    population: int = Field(32, description="candidates per generation")
    generations: int = Field(14, description="generations of evolution")
    elite: int = Field(2, description="best candidates carried into the next generation unchanged")
    tournament: int = Field(3, description="tournament size of parent selection")
    seed: int = Field(0, description="seed of the search's random draws")
    random_baseline: StrictBool = Field(True, description="also run the equal-budget random search")
    fitness: str = Field("ppl", description="full-fidelity fitness: ppl | kl")
    fitness_windows: int = Field(8, description="validation windows at full fidelity")
    fitness_seqlen: int = Field(512, description="window length of the full-fidelity fitness")
    cheap_fitness: str = Field("kl", description="first-stage fitness: ppl | kl")
    cheap_windows: int = Field(1, description="validation windows of the first stage (0: every candidate at full "
                                              "fidelity)")
    # KL 1 x 64: Spearman 0.922 with the full fitness (benchmarks/search_cost.py)
    cheap_seqlen: int = Field(64, description="window length of the first stage")
    promote: int = Field(1, description="new candidates per generation scored at full fidelity (the best of the "
                                        "first stage)")
    heldout_windows: int = Field(8, description="fresh validation windows (x fitness_seqlen, never used by the "
                                                "search) on which the final choices and baselines are re-scored; "
                                                "0 skips")
    function_set: str = Field("workbench", description="ops the functions may use: every op with λ and direction "
                                                       "searched (workbench), or the public DSA code's space "
                                                       "(dsa-public: its ops only, direction +1, λ 0.08)")
    granularity: Literal["block", "sublayer", "projection"] = Field(
        "block", description="allocation unit the functions are searched at: block (the paper), sublayer "
                             "(attention / MLP of each block) or projection (each linear)")
    space: Literal["functions", "levels"] = Field(
        "functions", description="what a candidate is: a DSA allocation function (functions) or each unit's "
                                 "sparsity level on a grid (levels, EvoPress: level-switch offspring of one parent)")
    level_step: float = Field(0.02, description="levels space: sparsity between adjacent levels (the target must "
                                                "be a multiple)")

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any) -> Any:
        """Today's checks and wording, before pydantic coerces anything."""
        from .profile import check_sparsity

        if not isinstance(data, dict):
            return data
        get = lambda name: data.get(name, cls.model_fields[name].default)  # noqa: E731
        check_sparsity(get("sparsity"), "sparsity")
        for name, low in (("population", 2), ("generations", 1), ("tournament", 1), ("promote", 1),
                          ("fitness_windows", 1), ("fitness_seqlen", 2), ("cheap_windows", 0), ("cheap_seqlen", 2),
                          ("heldout_windows", 0), ("seed", 0)):
            value = get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise WorkbenchError(f"{name}={value!r} must be an integer >= {low}")
        elite, population = get("elite"), get("population")
        if isinstance(elite, bool) or not isinstance(elite, int) or not 0 <= elite < population:
            raise WorkbenchError(f"elite={elite!r} must be an integer in [0, population={population})")
        for name in ("fitness", "cheap_fitness"):
            if get(name) not in FITNESS:
                raise WorkbenchError(f"{name}={get(name)!r} is not allowed; allowed: {FITNESS.names()}")
        FUNCTION_SETS.check(get("function_set"))
        if get("space") == "levels":
            check_step(get("level_step"), get("sparsity"))
        return data

    @property
    def multi_fidelity(self) -> bool:
        return self.cheap_windows > 0

    def to_dict(self) -> dict:
        """Every field (defaults included): what a checkpoint stores and compares on resume."""
        return self.model_dump()


SearchSpec = SearchConfig  # the search specification, beside workbench.spec.RunSpec


@dataclass(frozen=True)
class SearchSetup:
    """What a search runs on: the model and calibration sections of a run specification, the search specification
    and the dataset whose validation split scores candidates. The CLI and every Ray worker build the same
    candidate context from it (:meth:`build`)."""

    model: ModelSpec
    calibration: CalibrationSpec
    search: SearchConfig
    fitness_dataset: str = DEFAULT_DATASET

    def __post_init__(self) -> None:
        check_held_out(self.fitness_dataset, "fitness_dataset")
        if self.calibration.images:
            raise WorkbenchError("calib_images: a search's dense statistics come from text windows only; allowed for "
                                 "a search: no images (prune with --calib-images instead)")

    def build(self, progress: bool = True):
        """(model, tokenizer, SearchContext): the model loaded, its dense Wanda statistics, the candidate context."""
        from .data import calibration_samples
        from .models import load_model
        from .prune import DenseCache

        m, c = self.model, self.calibration
        model, tokenizer = load_model(m.name, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
        calibration = calibration_samples(tokenizer, c.dataset, c.nsamples, c.seqlen, c.seed)
        cache = DenseCache.build(model, calibration, ("sq_norm",), progress=progress)
        return model, tokenizer, SearchContext(model, tokenizer, cache, self.search, dataset=self.fitness_dataset)


# --------------------------------------------------------------------------- cheap candidate evaluation

def allocation_key(counts: dict[str, int]) -> str:
    """Identity of an allocation: the hash of its pruned-weights-per-row counts (same counts, same masks)."""
    return hashlib.sha256(json.dumps(list(counts.values())).encode()).hexdigest()[:16]


class SearchContext:
    """Everything a candidate needs, computed once from a DenseCache (Wanda statistics of the dense model).

    The context owns the prunable weights of ``model`` while it is used: it keeps track of how many
    weights of each row are pruned and changes only what a new allocation changes.
    """

    def __init__(self, model, tokenizer, cache, config: SearchConfig, dataset: str = DEFAULT_DATASET,
                 name: str = "fitness_dataset"):
        from .pruners import layer_scores

        check_held_out(dataset, name)
        self.model, self.config, self.cache = model, config, cache
        self.linears = prunable_linears(model)
        ids, text = eval_tokens(tokenizer, dataset, "validation")
        self._check_budget(ids.numel(), dataset)
        stats = cache.stats
        cache.restore(model)
        scores = {n: layer_scores("wanda", lin.weight, stats[n]) for n, lin in self.linears.items()}
        self.inputs = AllocationInput(layer_infos(model), scores.__getitem__, weights=cache.weights.__getitem__)
        self.grouped = groups(self.inputs, config.granularity)
        self.levels = LevelSpace(list(self.grouped), unit_weights(self.inputs, self.grouped), config.sparsity,
                                 config.level_step, config.granularity) if config.space == "levels" else None
        self.scores = scores
        self.orders = {n: kernels.row_order(s) for n, s in scores.items()}
        self.counts = {n: 0 for n in self.linears}  # pruned weights per row, as the model holds them now
        self.stages = {"full": (config.fitness, config.fitness_windows, config.fitness_seqlen)}
        if config.multi_fidelity:
            self.stages["cheap"] = (config.cheap_fitness, config.cheap_windows, config.cheap_seqlen)
        self.ids = {k: ids[: w * s] for k, (_m, w, s) in self.stages.items()}  # the search's: the start
        if config.heldout_windows:  # the re-score's: the end of the validation text, never seen by the search
            self.stages["heldout"] = (config.fitness, config.heldout_windows, config.fitness_seqlen)
            self.ids["heldout"] = ids[ids.numel() - config.heldout_windows * config.fitness_seqlen:]
        self.reference = {k: window_log_probs(model, self.ids[k], s)  # dense log-probs, once per search
                          for k, (m, _w, s) in self.stages.items() if m == "kl"}
        # a candidate runs only the blocks after those a cached one shares: level offspring share most of their
        # parent's; functions change every block, and the held-out stage scores a handful: nothing kept there
        self.prefix = PrefixCache(model)
        for k, (_m, _w, s) in self.stages.items():
            self.prefix.add(k, split_windows(self.ids[k], s), keep=config.space == "levels" and k != "heldout")
        self.fitness_data = {"dataset": dataset, "split": text.split, "text_sha256": text.sha256,
                             "tokens": ids.numel(),
                             **{k: {"metric": m, "windows": w, "seqlen": s} for k, (m, w, s) in self.stages.items()}}
        if config.heldout_windows:
            self.fitness_data["heldout"]["token_range"] = [ids.numel() - self.ids["heldout"].numel(), ids.numel()]

    def _check_budget(self, available: int, dataset: str) -> None:
        """Every stage fits the validation text, and the held-out windows fit after the search's tokens."""
        c = self.config
        for fidelity, (windows, seqlen) in (("fitness", (c.fitness_windows, c.fitness_seqlen)),
                                            ("cheap", (c.cheap_windows, c.cheap_seqlen))):
            if windows * seqlen > available:
                raise WorkbenchError(f"{fidelity}_windows={windows} x {fidelity}_seqlen={seqlen} needs "
                                     f"{windows * seqlen} "
                                      f"tokens; the validation split of {dataset!r} has {available} "
                                      f"(allowed: {fidelity}_windows <= {available // seqlen} at this seqlen)")
        used = max(c.fitness_windows * c.fitness_seqlen, c.cheap_windows * c.cheap_seqlen)
        if c.heldout_windows * c.fitness_seqlen > available - used:
            raise WorkbenchError(f"heldout_windows={c.heldout_windows} x fitness_seqlen={c.fitness_seqlen} "
                                 f"does not fit "
                                  f"after the search's {used} of the {available} validation tokens of {dataset!r} "
                                  f"(allowed: heldout_windows <= {(available - used) // c.fitness_seqlen}; 0 skips "
                                  "the held-out re-score)")

    # -- allocation
    def profile(self, candidate: AllocationFunction | LevelVector):
        """The profile of a candidate of either space (a function's DSA allocation, or the levels as recorded)."""
        c = self.config
        if isinstance(candidate, LevelVector):
            ratios = spread_over(self.grouped, self.levels.ratios(candidate))
            return self.inputs.profile(ratios, c.sparsity, "levels", c.granularity,
                                       {"levels": candidate.to_list(), "level_step": c.level_step})
        return dsa(self.inputs, c.sparsity, candidate, granularity=c.granularity)

    def allocation(self, fn: AllocationFunction | LevelVector) -> dict:
        """Per-unit ratios and per-linear counts of a candidate, or invalid with the reason."""
        try:
            profile = self.profile(fn)
        except InvalidFunction as err:
            return {"valid": False, "error": str(err), "ratios": None, "counts": None, "allocation_key": None}
        counts = self.counts_of(profile)
        key = allocation_key(counts)
        return {"valid": True, "error": None, "ratios": list(profile.unit_means().values()), "counts": counts,
                "allocation_key": key}

    def counts_of(self, profile) -> dict[str, int]:
        """Pruned weights per row of each linear under a per-layer profile (as the search prunes)."""
        return {n: int(lin.in_features * profile.layers[n]) for n, lin in self.linears.items()}

    @torch.no_grad()
    def set_counts(self, counts: dict[str, int]) -> None:
        """Prune each row's lowest-scoring counts[name] weights, changing only the positions that differ
        from the current masks (zeroed when newly pruned, restored from the dense copy when un-pruned)."""
        for name, lin in self.linears.items():
            old, new = self.counts[name], counts[name]
            if new == old:
                continue
            lo, hi = min(old, new), max(old, new)
            idx = self.orders[name][:, lo:hi].to(lin.weight.device).long()
            if new > old:
                lin.weight.scatter_(1, idx, 0.0)
            else:
                dense = self.cache.weights[name].to(lin.weight.device, lin.weight.dtype)
                lin.weight.scatter_(1, idx, dense.gather(1, idx))
            self.counts[name] = new

    def baseline_counts(self) -> dict[str, dict[str, int]]:
        """Counts of the hand-made allocations a search should beat: uniform, and OWL at its defaults (same
        scores, same masking, same granularity as every candidate)."""
        from .allocation import allocate

        return {name: self.counts_of(allocate(name, self.inputs, self.config.sparsity,
                                              granularity=self.config.granularity)) for name in ("uniform", "owl")}

    def restore(self) -> None:
        """The dense weights back (the model as it was before the search)."""
        self.set_counts({n: 0 for n in self.linears})

    # -- fitness
    def fitness(self, counts: dict[str, int], fidelity: str) -> float:
        """Fitness of an allocation at ``fidelity`` (lower is better; inf if not finite)."""
        metric, _windows, seqlen = self.stages[fidelity]
        self.set_counts(counts)
        outputs = self.prefix.logits(fidelity, self.prefix.signature(self.counts))
        if metric == "ppl":  # the protocol's perplexity (evaluate.perplexity_from_ids), from the cached prefix
            value = perplexity_of(torch.cat([mean_nll(logits, window) for window, logits in outputs]), seqlen)
        else:  # evaluate.window_kl's mean, from the cached prefix
            kls = [kl_of(log_probs_of(logits), ref) for (_w, logits), ref in zip(outputs, self.reference[fidelity],
                                                                                  strict=True)]
            value = float(torch.stack(kls).mean())
        return value if math.isfinite(value) else math.inf


class SerialPool:
    """Fitness of a list of (counts, fidelity) jobs, one after another on the search's own context; the
    Ray pool (:mod:`workbench.distributed`) does the same on workers, in parallel, returning in job order."""

    parallel = False

    def __init__(self, context: SearchContext):
        self.ctx = context

    def fitness(self, jobs: list[tuple[dict[str, int], str]]) -> list[tuple[float, float]]:
        """(fitness, seconds) of each job, in order."""
        out = []
        for counts, fidelity in jobs:
            start = time.perf_counter()
            out.append((self.ctx.fitness(counts, fidelity), time.perf_counter() - start))
        return out


# --------------------------------------------------------------------------- genetic operators

@dataclass(frozen=True)
class FunctionSet:
    """The ops each stage may use, and whether λ and the mapping direction are searched."""

    pre: tuple[str, ...]
    reductions: tuple[str, ...]
    post: tuple[str, ...]
    fixed_lam: float | None = None  # None: λ searched
    fixed_direction: int | None = None  # None: direction ±1 searched


def function_set(name: str = "workbench") -> FunctionSet:
    """``workbench``: every op, λ and direction searched; ``dsa-public``: the public DSA code's space."""
    if name == "workbench":
        return FunctionSet(tuple(ops.PRE), tuple(ops.REDUCTIONS), tuple(ops.POST))
    if name == "dsa-public":
        return FunctionSet(tuple(ops.PUBLIC_PRE), tuple(ops.PUBLIC_REDUCTIONS), tuple(ops.PUBLIC_POST),
                           fixed_lam=PUBLIC_LAMBDA, fixed_direction=1)
    raise WorkbenchError(f"function_set={name!r} is not allowed; allowed: {list(FUNCTION_SETS)}")


def random_function(rng: random.Random, space: FunctionSet | None = None) -> AllocationFunction:
    """A function drawn uniformly from ``space`` (default: every op): 1–2 pre ops, a reduction, 1–2 post
    ops, λ in [0.02, 0.2] and a direction (unless the space fixes them)."""
    space = space or function_set()
    pre = tuple(rng.choice(space.pre) for _ in range(rng.randint(1, 2)))
    reduction = rng.choice(space.reductions)
    post = tuple(rng.choice(space.post) for _ in range(rng.randint(1, 2)))
    lam = round(rng.uniform(0.02, 0.2), 3) if space.fixed_lam is None else space.fixed_lam
    direction = rng.choice((1, -1)) if space.fixed_direction is None else space.fixed_direction
    return AllocationFunction(pre=pre, reduction=reduction, post=post, lam=lam, direction=direction)


def novel(draw, seen: set[str]) -> AllocationFunction:
    """``draw()`` until its function's key is not in ``seen`` (at most NOVELTY_TRIES times); adds the key."""
    for _ in range(NOVELTY_TRIES):
        fn = draw()
        if fn.key() not in seen:
            break
    seen.add(fn.key())
    return fn


def crossover(a: AllocationFunction, b: AllocationFunction, rng: random.Random) -> AllocationFunction:
    """Each of pre / reduction / post / λ / direction from parent a or b with probability 1/2."""
    pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
    return AllocationFunction(pick(a.pre, b.pre), pick(a.reduction, b.reduction), pick(a.post, b.post),
                              pick(a.lam, b.lam), pick(a.direction, b.direction))


def mutate(f: AllocationFunction, rng: random.Random, space: FunctionSet | None = None) -> AllocationFunction:
    """One change within ``space``: an op, the reduction, λ (log-normal step, kept in [0.01, 0.3]), the
    mapping direction, or the length of the pre or post chain (an op added or dropped, keeping 1–2 ops as
    random functions have). λ and direction are not mutated where the space fixes them."""
    space = space or function_set()
    pre, reduction, post, lam, direction = list(f.pre), f.reduction, list(f.post), f.lam, f.direction
    kinds = ("pre", "reduction", "post") + (("lam",) if space.fixed_lam is None else ()) \
        + (("direction",) if space.fixed_direction is None else ()) + ("length",)
    what = rng.choice(kinds)
    if what == "pre":
        pre[rng.randrange(len(pre))] = rng.choice(space.pre)
    elif what == "reduction":
        reduction = rng.choice(space.reductions)
    elif what == "post":
        post[rng.randrange(len(post))] = rng.choice(space.post)
    elif what == "lam":
        lam = round(min(0.3, max(0.01, lam * math.exp(rng.gauss(0.0, 0.3)))), 4)
    elif what == "direction":
        direction = -direction
    else:
        chain, choices = (pre, space.pre) if rng.random() < 0.5 else (post, space.post)
        if len(chain) > 1:
            del chain[rng.randrange(len(chain))]
        else:
            chain.insert(rng.randrange(len(chain) + 1), rng.choice(choices))
    return AllocationFunction(tuple(pre), reduction, tuple(post), lam, direction)


def rank_key(record: dict) -> tuple[int, float]:
    """Order of a pool: full-fidelity candidates by full fitness, then cheap-only ones by cheap fitness,
    then invalid ones (never compares fitness across fidelities)."""
    if not record["valid"]:
        return (2, math.inf)
    if record["full_fitness"] is not None:
        return (0, record["full_fitness"])
    return (1, record["cheap_fitness"])


def tournament(ranked: list, size: int, rng: random.Random):
    """The best of ``size`` entries drawn with replacement from ``ranked`` (best first)."""
    return ranked[min(rng.randrange(len(ranked)) for _ in range(size))]


# --------------------------------------------------------------------------- the two spaces

class FunctionSpace:
    """DSA allocation functions: random draws; offspring by tournament, crossover (p 0.9) and one mutation."""

    name, field = "functions", "function"

    def __init__(self, config: SearchConfig):
        self.ops, self.tournament = function_set(config.function_set), config.tournament

    def decode(self, data: dict) -> AllocationFunction:
        return AllocationFunction.from_dict(data)

    def encode(self, candidate: AllocationFunction) -> dict:
        return candidate.to_dict()

    def random(self, rng: random.Random) -> AllocationFunction:
        return random_function(rng, self.ops)

    def first(self, rng: random.Random, size: int, seen: set[str]) -> list[AllocationFunction]:
        """Generation 0: ``size`` distinct random functions."""
        return [novel(lambda: self.random(rng), seen) for _ in range(size)]

    def anchors(self) -> set[str]:
        """Keys of generation-0 candidates scored at full fidelity whatever their cheap fitness (none here)."""
        return set()

    def breed(self, parents: list, rng: random.Random, size: int, seen: set[str]) -> list[AllocationFunction]:
        """``size`` new functions bred from ``parents`` (ranked, best first)."""
        def child() -> AllocationFunction:
            a, b = tournament(parents, self.tournament, rng), tournament(parents, self.tournament, rng)
            return mutate(crossover(a, b, rng) if rng.random() < 0.9 else a, rng, self.ops)

        return [novel(child, seen) for _ in range(size)]


class LevelsSpace:
    """Per-unit sparsity levels (EvoPress, :mod:`workbench.level_space`): the search starts from the uniform
    profile; every offspring is a level switch of the one parent, the best candidate at full fidelity so far."""

    name, field = "levels", "levels"

    def __init__(self, grid: LevelSpace):
        self.grid = grid

    def decode(self, data: list) -> LevelVector:
        return LevelVector.from_list(data)

    def encode(self, candidate: LevelVector) -> list[int]:
        return candidate.to_list()

    def random(self, rng: random.Random) -> LevelVector:
        return self.grid.random(rng)

    def first(self, rng: random.Random, size: int, seen: set[str]) -> list[LevelVector]:
        """Generation 0: the uniform profile and ``size - 1`` distinct offspring of it."""
        start = self.grid.uniform()
        seen.add(start.key())
        return [start, *self.breed([start], rng, size - 1, seen)]

    def anchors(self) -> set[str]:
        """The uniform start competes at full fidelity (EvoPress adds the parent at the last stage)."""
        return {self.grid.uniform().key()}

    def breed(self, parents: list, rng: random.Random, size: int, seen: set[str]) -> list[LevelVector]:
        parent = parents[0]
        return [novel(lambda: self.grid.switch(parent, rng), seen) for _ in range(size)]


def search_space(config: SearchConfig, context: SearchContext) -> FunctionSpace | LevelsSpace:
    """The candidate space ``config.space`` names, over the context's units."""
    return FunctionSpace(config) if config.space == "functions" else LevelsSpace(context.levels)


# --------------------------------------------------------------------------- state and checkpoints

@dataclass
class SearchState:
    config: dict
    generation: int = -1  # last completed generation of the evolution
    elites: list[str] = field(default_factory=list)  # function keys of the current elites
    rng: list | None = None
    random_chunks: int = 0  # random-search chunks completed
    random_rng: list | None = None
    history: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": STATE_VERSION, "config": self.config, "generation": self.generation,
                "elites": self.elites, "rng": self.rng, "random_chunks": self.random_chunks,
                "random_rng": self.random_rng, "history": self.history, "meta": self.meta}


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def load_state(path: Path) -> SearchState:
    """Read a checkpoint; a malformed or truncated one is a clear error (and is never overwritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION:
            raise WorkbenchError(f"version {data.get('version')!r} is not {STATE_VERSION}")
        state = SearchState(config=dict(data["config"]), generation=int(data["generation"]),
                            elites=[str(k) for k in data["elites"]], rng=data["rng"],
                            random_chunks=int(data["random_chunks"]), random_rng=data["random_rng"],
                            history=list(data["history"]), meta=dict(data.get("meta", {})))
        return state
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WorkbenchError(f"checkpoint {path} is malformed or truncated ({type(err).__name__}: {err}); "
                              "remove it to start afresh or point --out elsewhere") from None


# --------------------------------------------------------------------------- the search

class Search:
    """Evolution + random baseline over a SearchContext, checkpointed in ``out``."""

    def __init__(self, context: SearchContext, config: SearchConfig, out: str | Path, resume: bool = False,
                 progress: bool = True, meta: dict | None = None, baselines: bool = True, pool=None):
        self.ctx, self.config, self.out, self.progress = context, config, Path(out), progress
        self.space = search_space(config, context)
        self.pool = pool or SerialPool(context)
        self._allocations: dict[str, dict] = {}  # function key -> allocation computed ahead (parallel pools)
        self._ahead: dict[tuple[str, str], tuple[float, float]] = {}  # (allocation key, fidelity) -> fitness
        self._borrowed = 0.0  # seconds of fitness computed ahead that the record being scored used
        self.want_baselines = baselines
        self.state_path = self.out / "state.json"
        if self.state_path.exists():
            if not resume:
                raise WorkbenchError(f"out={str(self.out)!r} already holds a search; pass resume=True (--resume)")
            self.state = load_state(self.state_path)
            older = {"granularity": "block", "space": "functions", "level_step": 0.02}  # what older ones lacked
            if {**older, **self.state.config} != config.to_dict():
                raise WorkbenchError(f"the checkpoint's configuration {self.state.config} differs from "
                                     f"{config.to_dict()}")
            try:
                for rec in self.state.history:
                    self.space.decode(rec[self.space.field])
            except (ValueError, KeyError, TypeError) as err:
                raise WorkbenchError(f"checkpoint {self.state_path} is malformed ({type(err).__name__}: {err}); "
                                     "remove it to start afresh or point --out elsewhere") from None
        else:
            self.state = SearchState(config=config.to_dict(), meta=meta or {})
        self._index()

    def _note_machine(self) -> None:
        """Each start or resume names its machine (CPU, its kernels, threads) and the first record it scores: float
        results differ between CPUs, so a search resumed elsewhere says which candidates each machine scored."""
        from .results import platform_info

        info = {key: value for key, value in platform_info().items() if key != "argv"}
        self.state.meta.setdefault("machines", []).append({**info, "from_record": len(self.state.history)})

    def _index(self) -> None:
        """Caches rebuilt from the history, one set per kind (a kind never uses a score another kind paid
        for): records by function key, fitness by allocation key."""
        self.by_function: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
        self.by_allocation: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
        for rec in self.state.history:
            self.by_function[rec["kind"]].setdefault(rec["function_key"], rec)
            self._remember(rec)

    def _remember(self, record: dict) -> None:
        """The fitness a valid record holds, kept by its allocation (the same counts give the same fitness)."""
        if record["valid"]:
            known = self.by_allocation[record["kind"]].setdefault(record["allocation_key"],
                                                                  {"cheap": None, "full": None})
            for fidelity in ("cheap", "full"):
                if record[f"{fidelity}_fitness"] is not None:
                    known[fidelity] = record[f"{fidelity}_fitness"]

    # -- scoring

    def _score(self, fn: AllocationFunction, kind: str, generation: int) -> dict:
        """A new record for ``fn``: its allocation and its fitness at the first fidelity."""
        start = time.perf_counter()
        key = fn.key()
        record = {"kind": kind, "generation": generation, self.space.field: self.space.encode(fn),
                  "function_key": key,
                  "cached": None, "cheap_fitness": None, "full_fitness": None, "fitness": None, "fidelity": None,
                  "full_at": None, "paid": []}
        if key in self.by_function[kind]:  # same behaviour, same result: evaluations are deterministic
            old = self.by_function[kind][key]
            record.update({k: old[k] for k in ("valid", "error", "ratios", "allocation_key", "cheap_fitness",
                                                "full_fitness")}, cached="function")
            counts = None
        else:
            alloc = dict(self._allocations.pop(key, None) or self.ctx.allocation(fn))
            counts = alloc.pop("counts")
            record.update(alloc)
        self._borrowed = 0.0
        if record["valid"] and record["cached"] is None:
            known = self.by_allocation[kind].get(record["allocation_key"])
            first = self._first()
            if known and known[first] is not None:
                record.update(cached="allocation", cheap_fitness=known["cheap"], full_fitness=known["full"])
            else:
                record[f"{first}_fitness"] = self._fitness(counts, first, record["allocation_key"], record)
            record["_counts"] = counts
        self._settle(record)
        record["seconds"] = time.perf_counter() - start + self._borrowed
        self.state.history.append(record)
        if record["full_fitness"] is not None and record["full_at"] is None:
            record["full_at"] = self.evaluations(kind)
        self.by_function[kind].setdefault(key, record)
        return record

    def _first(self) -> str:
        return "cheap" if self.config.multi_fidelity else "full"

    def _fitness(self, counts: dict[str, int], fidelity: str, allocation_key: str, record: dict) -> float:
        """The fitness computed ahead for this allocation (parallel pools), else computed now; ``record``
        pays for it (its ``paid`` list names each fidelity computed for it)."""
        record["paid"].append(fidelity)
        ahead = self._ahead.pop((allocation_key, fidelity), None)
        if ahead is None:
            return self.pool.fitness([(counts, fidelity)])[0][0]  # timed by the caller's clock
        self._borrowed += ahead[1]  # computed elsewhere: its seconds count for this record
        return ahead[0]

    def _compute_ahead(self, jobs: dict[tuple[str, str], dict[str, int]]) -> None:
        """Fitness of every (allocation key, fidelity) the serial replay will ask for, in one parallel batch."""
        todo = [(k, c) for k, c in jobs.items() if k not in self._ahead]
        if todo:
            results = self.pool.fitness([(counts, fidelity) for (_key, fidelity), counts in todo])
            self._ahead.update({k: r for (k, _c), r in zip(todo, results, strict=True)})

    def _ahead_of_scoring(self, population: list[AllocationFunction], kind: str) -> None:
        """For a parallel pool: the allocations of new functions, then the fitness of every allocation the
        serial pass would evaluate, computed on the workers before the pass replays (and finds them ready)."""
        if not self.pool.parallel:
            return
        first, jobs, new = self._first(), {}, {}
        for fn in population:
            if fn.key() not in self.by_function[kind]:
                new.setdefault(fn.key(), fn)
        allocations = (self.pool.allocations(list(new.values())) if self.space.name == "functions"
                       else [self.ctx.allocation(c) for c in new.values()])  # levels: nothing to compute
        self._allocations.update(zip(new, allocations, strict=True))
        for key in new:
            alloc = self._allocations[key]
            known = self.by_allocation[kind].get(alloc["allocation_key"]) or {}
            if alloc["valid"] and known.get(first) is None:
                jobs.setdefault((alloc["allocation_key"], first), alloc["counts"])
        self._compute_ahead(jobs)

    def _ahead_of_promotion(self, pending: list[dict]) -> None:
        """For a parallel pool: the full fitness of every promoted allocation not known yet."""
        if not self.pool.parallel:
            return
        jobs = {}
        for rec in pending:
            if (self.by_allocation[rec["kind"]].get(rec["allocation_key"]) or {}).get("full") is None:
                jobs.setdefault((rec["allocation_key"], "full"), rec.get("_counts") or self._counts_of(rec))
        self._compute_ahead(jobs)

    def _counts_of(self, record: dict) -> dict[str, int]:
        """A record's counts, recomputed from its candidate (deterministic) when they were not kept."""
        return self.ctx.allocation(self.space.decode(record[self.space.field]))["counts"]

    def _settle(self, record: dict) -> None:
        """fitness/fidelity fields from what is known; a non-finite fitness makes the record invalid."""
        for fidelity in ("full", "cheap"):
            value = record[f"{fidelity}_fitness"]
            if value is not None:
                if not math.isfinite(value):
                    record.update(valid=False, error=f"{fidelity} fitness not finite", fitness=None, fidelity=None)
                    return
                record.update(fitness=value, fidelity=fidelity)
                break
        self._remember(record)

    def _promote(self, records: list[dict], count: int, anchors: set[str] = frozenset()) -> None:
        """Score the ``count`` best cheap-only records of ``records`` at full fidelity, and the ``anchors``."""
        cheap_only = sorted((r for r in records if r["valid"] and r["full_fitness"] is None), key=rank_key)
        pending = cheap_only[:count] + [r for r in cheap_only[count:] if r["function_key"] in anchors]
        self._ahead_of_promotion(pending)
        for rec in pending:
            start = time.perf_counter()
            self._borrowed = 0.0
            known = self.by_allocation[rec["kind"]].get(rec["allocation_key"], {})
            if known.get("full") is not None:
                rec["full_fitness"] = known["full"]
            else:
                counts = rec.get("_counts") or self._counts_of(rec)  # resumed: recomputed (deterministic)
                rec["full_fitness"] = self._fitness(counts, "full", rec["allocation_key"], rec)
            rec["full_at"] = self.evaluations(rec["kind"])
            self._settle(rec)
            rec["seconds"] += time.perf_counter() - start + self._borrowed

    def _checkpoint(self) -> None:
        for rec in self.state.history:
            rec.pop("_counts", None)
        write_json_atomic(self.state_path, self.state.to_dict())
        write_json_atomic(self.out / "history.json", self.state.history)
        self._write_progress()
        best = {kind: self.best(kind) for kind in KINDS}
        heldout = self.state.meta.get("heldout", {})
        best = {k: {**v, "heldout_fitness": heldout.get(k, {}).get("heldout_fitness")} for k, v in best.items() if v}
        if heldout:
            best["heldout"] = heldout
        best["paid"] = {kind: self.paid(kind) for kind in KINDS}
        write_json_atomic(self.out / "best.json", best)
        if best.get("evolution") and self.space.name == "functions":  # for `--alloc-param function=...`
            write_json_atomic(self.out / "best_function.json", best["evolution"]["function"])
        for kind, name in (("evolution", "best_profile.json"), ("random", "best_random_profile.json")):
            if best.get(kind):  # for `--allocation profile --alloc-param path=...` and the curves widget
                candidate = self.space.decode(best[kind][self.space.field])
                self.ctx.profile(candidate).save(self.out / name)

    def _write_progress(self, phase: str | None = None) -> None:
        """``progress.json`` for monitors: steps done of all, seconds spent, the hand-made baselines."""
        c, st = self.config, self.state
        total = c.generations * (2 if c.random_baseline else 1)
        done = st.generation + 1 + st.random_chunks
        seconds = sum(h.get("seconds", 0.0) for h in st.history) + st.meta.get("baseline_seconds", 0.0)
        write_json_atomic(self.out / "progress.json", {
            "phase": phase or (("done" if "heldout" in st.meta or not c.heldout_windows else "heldout")
                               if done >= total else "random" if st.generation + 1 >= c.generations
                               else "evolution"),
            "steps_done": done, "steps": total, "generation": st.generation + 1, "generations": c.generations,
            "random_chunks": st.random_chunks, "seconds": seconds,
            "baselines": st.meta.get("baselines", {}), "heldout": st.meta.get("heldout", {})})

    def best(self, kind: str = "evolution") -> dict | None:
        """The record of ``kind`` with the lowest full-fidelity fitness (None before any)."""
        full = [h for h in self.state.history if h["kind"] == kind and h["valid"] and h["full_fitness"] is not None]
        return min(full, key=lambda h: h["full_fitness"]) if full else None

    def paid(self, kind: str = "evolution") -> dict[str, int]:
        """Fitness computations ``kind`` paid for, per fidelity (cached reuses within the kind cost nothing;
        no score is ever taken from the other kind)."""
        out = {"cheap": 0, "full": 0}
        for h in self.state.history:
            if h["kind"] == kind:
                for fidelity in h.get("paid", ()):
                    out[fidelity] += 1
        return out

    def evaluations(self, kind: str = "evolution") -> int:
        """Distinct functions scored so far by ``kind``."""
        return sum(1 for h in self.state.history if h["kind"] == kind)

    # -- evolution
    def _pool(self, generation: int) -> list[dict]:
        """Generation ``generation``'s records plus the current elites (each function once), ranked (best first)."""
        new = [h for h in self.state.history if h["kind"] == "evolution" and h["generation"] == generation]
        keys = {h["function_key"] for h in new}  # an elite found in this generation is listed once
        elites = [self.by_function["evolution"][k] for k in self.state.elites if k not in keys]
        return sorted(elites + new, key=rank_key)

    def _next_population(self, rng: random.Random) -> list:
        """New candidates bred from the ranked pool (truncation: its better half; the best first)."""
        ranked = self._pool(self.state.generation)
        parents = [self.space.decode(h[self.space.field]) for h in ranked[: max(2, len(ranked) // 2)]]
        seen = set(self.by_function["evolution"])
        return self.space.breed(parents, rng, self.config.population - len(self.state.elites), seen)

    def _promotions(self, generation: int) -> int:
        return max(self.config.promote, self.config.elite) if generation == 0 else self.config.promote

    def run(self) -> dict:
        """Run to the end (resuming from the checkpoint) and return the best of each kind."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._note_machine()
        if self.want_baselines and "baselines" not in self.state.meta:
            self._write_progress("baselines")
            start = time.perf_counter()
            counts = self.ctx.baseline_counts()
            fidelities = ("full", "heldout") if self.config.heldout_windows else ("full",)
            values = iter(self.pool.fitness([(c, f) for c in counts.values() for f in fidelities]))
            scored = {name: {f: next(values)[0] for f in fidelities} for name in counts}
            self.state.meta["baselines"] = {name: v["full"] for name, v in scored.items()}
            if self.config.heldout_windows:
                self.state.meta["baselines_heldout"] = {name: v["heldout"] for name, v in scored.items()}
            self.state.meta["baseline_seconds"] = time.perf_counter() - start
        self._write_progress()
        rng = random.Random(self.config.seed)
        if self.state.rng is not None:
            _set_rng(rng, self.state.rng)
        for gen in tqdm(range(self.state.generation + 1, self.config.generations), desc="DSA evolution",
                        disable=not self.progress):
            if gen == 0:
                population = self.space.first(rng, self.config.population, set())
            else:
                population = self._next_population(rng)
            self._generation(population, "evolution", gen, self._promotions(gen),
                             self.space.anchors() if gen == 0 else set())
            ranked = [h for h in self._pool(gen) if h["valid"] and h["full_fitness"] is not None]
            self.state.elites = [h["function_key"] for h in ranked[: self.config.elite]]
            self.state.generation, self.state.rng = gen, _rng_state(rng)
            self._checkpoint()
        if self.config.random_baseline:
            self._random_search()
        self._rescore()
        if not (self.out / "best.json").is_file():  # a finished state restored alone: nothing ran, write its outputs
            self._checkpoint()
        return {"evolution": self.best("evolution"), "random": self.best("random")}

    def _rescore(self) -> None:
        """Each kind's final choice (and the hand-made baselines) re-scored once on the held-out validation
        windows, which no candidate was selected on; kept in ``meta["heldout"]`` beside the in-search value."""
        if not self.config.heldout_windows or "heldout" in self.state.meta:
            return
        self._write_progress("heldout")
        entries, jobs = {}, []
        for kind in KINDS:
            rec = self.best(kind)
            if rec:
                entries[kind] = {"function_key": rec["function_key"], "search_fitness": rec["full_fitness"]}
                jobs.append(rec.get("_counts") or self._counts_of(rec))
        values = self.pool.fitness([(counts, "heldout") for counts in jobs])
        for entry, (value, _seconds) in zip(entries.values(), values, strict=True):
            entry["heldout_fitness"] = value
        for name, value in self.state.meta.get("baselines_heldout", {}).items():  # scored with the baselines
            entries[name] = {"function_key": None, "search_fitness": self.state.meta["baselines"][name],
                             "heldout_fitness": value}
        self.state.meta["heldout"] = entries
        self._checkpoint()

    def _generation(self, population: list, kind: str, gen: int, promote: int,
                    anchors: set[str] = frozenset()) -> None:
        """Score ``population`` and promote; an exception rolls the history back (redone on resume)."""
        rollback = len(self.state.history)
        try:
            self._ahead_of_scoring(population, kind)
            records = [self._score(fn, kind, gen) for fn in population]
            if self.config.multi_fidelity:
                self._promote(records, promote, anchors)
        except BaseException:
            del self.state.history[rollback:]
            self._index()
            raise
        finally:
            self._allocations.clear()
            self._ahead.clear()

    def _random_search(self) -> None:
        """Distinct random functions in chunks that mirror the evolution's generations (as many new
        functions, as many promotions), checkpointed after every chunk."""
        sizes = [sum(1 for h in self.state.history if h["kind"] == "evolution" and h["generation"] == g)
                 for g in range(self.config.generations)]
        seen = {h["function_key"] for h in self.state.history if h["kind"] == "random"}
        rng = random.Random(self.config.seed + 1)
        if self.state.random_rng is not None:
            _set_rng(rng, self.state.random_rng)
        for chunk in tqdm(range(self.state.random_chunks, len(sizes)), desc="random search",
                          disable=not self.progress):
            draws = [novel(lambda: self.space.random(rng), seen) for _ in range(sizes[chunk])]
            self._generation(draws, "random", chunk, self._promotions(chunk))
            self.state.random_chunks, self.state.random_rng = chunk + 1, _rng_state(rng)
            self._checkpoint()
