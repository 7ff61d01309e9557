"""Evolutionary search over DSA allocation functions (the part the public DSA code lacks), with a
random-search baseline of the same evaluation budget (the same number of distinct candidates evaluated).

Fitness = perplexity on the *validation* split (never test) after pruning the dense model with the
candidate's allocation. Candidates are cheap: the dense statistics, every layer's Wanda scores grouped
by block and each row's sort order are computed once (:class:`SearchContext`), so a candidate costs
evaluating the function, building masks from cached orders, and one validation forward pass.

Evolution: a population of random functions; truncation of the worst, tournament selection (size 3),
crossover between stages (each of pre / reduction / post / λ / direction from either parent), mutation of
one op, λ, the direction or a chain's length, elitism (the best ``elite`` survive unchanged, at no cost:
their fitness is known).
Every new individual is a function not evaluated before (redrawn up to ``NOVELTY_TRIES`` times), so a
generation after the first costs ``population - elite`` evaluations; the random baseline gets exactly as
many distinct draws as the evolution made evaluations. Seeded and deterministic on the CPU.
After every generation the whole state is written atomically to ``state.json``; ``resume=True``
continues from it and ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ... import kernels
from ...data import eval_tokens
from ...evaluate import perplexity_from_ids
from ...models import prunable_linears
from ...results import write_json_atomic
from .. import AllocationInput, layer_infos
from ..owl import groups
from . import ops
from .function import AllocationFunction, InvalidFunction, dsa

STATE_VERSION = 3  # 2: distinct children/draws, random budget = evolution evaluations; 3: mutation set
NOVELTY_TRIES = 50  # redraws of a child (or random draw) whose function was already evaluated


# --------------------------------------------------------------------------- cheap candidate evaluation

class SearchContext:
    """Everything a candidate needs, computed once from a DenseCache (Wanda statistics of the dense model)."""

    def __init__(self, model, tokenizer, cache, sparsity: float, fitness_dataset: str = "embedded",
                 fitness_seqlen: int = 512, fitness_windows: int | None = 8):
        from ...pruners import layer_scores

        self.model, self.sparsity, self.cache = model, sparsity, cache
        self.linears = prunable_linears(model)
        stats = cache.calibrated.stats
        cache.restore(model)
        scores = {n: layer_scores("wanda", lin.weight, stats[n]) for n, lin in self.linears.items()}
        self.inputs = AllocationInput(layer_infos(model), scores.__getitem__)
        self.block_scores = [[scores[n] for n in names] for names in groups(self.inputs, "block").values()]
        self.orders = {n: kernels.row_order(s) for n, s in scores.items()}
        ids, text = eval_tokens(tokenizer, fitness_dataset, "validation")
        if fitness_windows is not None:
            ids = ids[: fitness_windows * fitness_seqlen]
        self.ids, self.seqlen = ids, fitness_seqlen
        self.fitness_data = {"dataset": fitness_dataset, "split": "validation", "seqlen": fitness_seqlen,
                             "windows": ids.numel() // fitness_seqlen, "text_sha256": text.sha256}

    @torch.no_grad()
    def apply(self, layers: dict[str, float]) -> None:
        """Dense weights back, then prune each row's lowest-scoring int(C·s) weights from cached orders."""
        for name, lin in self.linears.items():
            lin.weight.copy_(self.cache.weights[name].to(lin.weight.device, lin.weight.dtype))
            counts = int(lin.in_features * layers[name])
            kernels.apply_mask(lin.weight, kernels.mask_from_order(self.orders[name], counts))

    def evaluate(self, fn: AllocationFunction) -> dict:
        """Fitness of one function: validation perplexity, or invalid with the reason."""
        start = time.perf_counter()
        try:
            profile = dsa(self.inputs, self.sparsity, fn, cached_block_scores=self.block_scores)
        except InvalidFunction as err:
            return {"fitness": None, "valid": False, "error": str(err), "ratios": None,
                    "seconds": time.perf_counter() - start}
        self.apply(profile.layers)
        ppl = perplexity_from_ids(self.model, self.ids, self.seqlen, progress=False)
        ratios = list(profile.block_means().values())
        valid = math.isfinite(ppl)
        return {"fitness": ppl if valid else None, "valid": valid, "error": None if valid else "perplexity not finite",
                "ratios": ratios, "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- genetic operators

def random_function(rng: random.Random) -> AllocationFunction:
    return AllocationFunction(
        pre=tuple(rng.choice(list(ops.PRE)) for _ in range(rng.randint(1, 2))),
        reduction=rng.choice(list(ops.REDUCTIONS)),
        post=tuple(rng.choice(list(ops.POST)) for _ in range(rng.randint(1, 2))),
        lam=round(rng.uniform(0.02, 0.2), 3), direction=rng.choice((1, -1)))


def novel(draw, seen: set[str]) -> AllocationFunction:
    """``draw()`` until its function's key is not in ``seen`` (at most NOVELTY_TRIES times); adds the key."""
    for _ in range(NOVELTY_TRIES):
        fn = draw()
        if fn.key() not in seen:
            break
    seen.add(fn.key())
    return fn


def crossover(a: AllocationFunction, b: AllocationFunction, rng: random.Random) -> AllocationFunction:
    pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
    return AllocationFunction(pick(a.pre, b.pre), pick(a.reduction, b.reduction), pick(a.post, b.post),
                              pick(a.lam, b.lam), pick(a.direction, b.direction))


def mutate(f: AllocationFunction, rng: random.Random) -> AllocationFunction:
    """One change: an op, the reduction, λ (log-normal step), the mapping direction, or the length of the
    pre or post chain (an op added or dropped, keeping 1–2 ops as random functions have)."""
    pre, reduction, post, lam, direction = list(f.pre), f.reduction, list(f.post), f.lam, f.direction
    what = rng.choice(("pre", "reduction", "post", "lam", "direction", "length"))
    if what == "pre":
        pre[rng.randrange(len(pre))] = rng.choice(list(ops.PRE))
    elif what == "reduction":
        reduction = rng.choice(list(ops.REDUCTIONS))
    elif what == "post":
        post[rng.randrange(len(post))] = rng.choice(list(ops.POST))
    elif what == "lam":
        lam = round(min(0.3, max(0.01, lam * math.exp(rng.gauss(0.0, 0.3)))), 4)
    elif what == "direction":
        direction = -direction
    else:
        chain, choices = (pre, ops.PRE) if rng.random() < 0.5 else (post, ops.POST)
        if len(chain) > 1:
            del chain[rng.randrange(len(chain))]
        else:
            chain.insert(rng.randrange(len(chain) + 1), rng.choice(list(choices)))
    return AllocationFunction(tuple(pre), reduction, tuple(post), lam, direction)


# --------------------------------------------------------------------------- state and checkpoints

@dataclass
class SearchConfig:
    sparsity: float
    population: int = 16
    generations: int = 10
    elite: int = 2
    tournament: int = 3
    seed: int = 0
    random_baseline: bool = True

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"population={self.population} must be >= 2")
        if self.generations < 1:
            raise ValueError(f"generations={self.generations} must be >= 1")
        if not 0 <= self.elite < self.population:
            raise ValueError(f"elite={self.elite} must lie in [0, population)")


@dataclass
class SearchState:
    config: dict
    generation: int = -1  # last completed generation of the evolution
    population: list[dict] = field(default_factory=list)
    rng: list | None = None
    random_done: int = 0
    random_rng: list | None = None
    history: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": STATE_VERSION, "config": self.config, "generation": self.generation,
                "population": self.population, "rng": self.rng, "random_done": self.random_done,
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
            raise ValueError(f"version {data.get('version')!r} is not {STATE_VERSION}")
        state = SearchState(config=dict(data["config"]), generation=int(data["generation"]),
                            population=list(data["population"]), rng=data["rng"],
                            random_done=int(data["random_done"]), random_rng=data["random_rng"],
                            history=list(data["history"]), meta=dict(data.get("meta", {})))
        for f in state.population:
            AllocationFunction.from_dict(f)
        return state
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path} is malformed or truncated ({type(err).__name__}: {err}); "
                         "remove it to start afresh or point --out elsewhere") from None


# --------------------------------------------------------------------------- the search

class Search:
    """Evolution + random baseline over a SearchContext, checkpointed in ``out``."""

    def __init__(self, context: SearchContext, config: SearchConfig, out: str | Path, resume: bool = False,
                 progress: bool = True, meta: dict | None = None):
        self.ctx, self.config, self.out, self.progress = context, config, Path(out), progress
        self.state_path = self.out / "state.json"
        cfg = {k: getattr(config, k) for k in config.__dataclass_fields__}
        if self.state_path.exists():
            if not resume:
                raise ValueError(f"out={str(self.out)!r} already holds a search; pass resume=True (--resume)")
            self.state = load_state(self.state_path)
            if self.state.config != cfg:
                raise ValueError(f"the checkpoint's configuration {self.state.config} differs from {cfg}")
        else:
            self.state = SearchState(config=cfg, meta=meta or {})
        self.cache = {h["function_key"]: h for h in self.state.history}

    # -- bookkeeping
    def _evaluate(self, fn: AllocationFunction, kind: str, generation: int) -> dict:
        key = fn.key()
        if key in self.cache:  # same behaviour, same fitness: evaluations are deterministic
            result = {k: self.cache[key][k] for k in ("fitness", "valid", "error", "ratios")} | {"seconds": 0.0,
                                                                                              "cached": True}
        else:
            result = self.ctx.evaluate(fn)
        record = {"kind": kind, "generation": generation, "function": fn.to_dict(), "function_key": key, **result}
        self.state.history.append(record)
        self.cache.setdefault(key, record)
        return record

    def _checkpoint(self) -> None:
        write_json_atomic(self.state_path, self.state.to_dict())
        write_json_atomic(self.out / "history.json", self.state.history)
        best = {kind: self.best(kind) for kind in ("evolution", "random")}
        write_json_atomic(self.out / "best.json", {k: v for k, v in best.items() if v})
        if best["evolution"]:  # ready for `prune --allocation dsa --alloc-param function=...`
            write_json_atomic(self.out / "best_function.json", best["evolution"]["function"])

    def best(self, kind: str = "evolution") -> dict | None:
        valid = [h for h in self.state.history if h["kind"] == kind and h["valid"]]
        return min(valid, key=lambda h: h["fitness"]) if valid else None

    @staticmethod
    def _fitness(record: dict) -> float:
        return record["fitness"] if record["valid"] else math.inf

    # -- evolution
    def _tournament(self, scored: list[tuple[float, AllocationFunction]], rng: random.Random):
        contenders = [scored[rng.randrange(len(scored))] for _ in range(self.config.tournament)]
        return min(contenders, key=lambda t: t[0])[1]

    def _next_population(self, rng: random.Random) -> list[AllocationFunction]:
        last = [h for h in self.state.history if h["kind"] == "evolution" and h["generation"] == self.state.generation]
        scored = sorted(((self._fitness(h), AllocationFunction.from_dict(h["function"])) for h in last),
                        key=lambda t: t[0])
        scored = scored[: max(2, len(scored) // 2)]  # truncation: the worse half does not breed
        children = [f for _, f in scored[: self.config.elite]]
        seen = set(self.cache) | {f.key() for f in children}

        def breed() -> AllocationFunction:
            a, b = self._tournament(scored, rng), self._tournament(scored, rng)
            return mutate(crossover(a, b, rng) if rng.random() < 0.9 else a, rng)

        while len(children) < self.config.population:
            children.append(novel(breed, seen))
        return children

    def evaluations(self, kind: str = "evolution") -> int:
        """Distinct candidates evaluated so far by ``kind`` (results served from the cache not counted)."""
        return sum(1 for h in self.state.history if h["kind"] == kind and not h.get("cached"))

    def run(self, stop_after: int | None = None) -> dict:
        """Run to the end (or raise after ``stop_after`` fresh evaluations, to test interruption)."""
        self._budget_left = stop_after
        rng = random.Random(self.config.seed)
        if self.state.rng is not None:
            _set_rng(rng, self.state.rng)
        for gen in tqdm(range(self.state.generation + 1, self.config.generations), desc="DSA evolution",
                        disable=not self.progress):
            if gen == 0:
                seen: set[str] = set()
                population = [novel(lambda: random_function(rng), seen) for _ in range(self.config.population)]
            else:
                population = self._next_population(rng)
            rollback = len(self.state.history)
            try:
                for fn in population:
                    self._tick()
                    self._evaluate(fn, "evolution", gen)
            except BaseException:
                del self.state.history[rollback:]  # an unfinished generation is redone on resume
                raise
            self.state.generation, self.state.rng = gen, _rng_state(rng)
            self.state.population = [f.to_dict() for f in population]
            self._checkpoint()
        if self.config.random_baseline:
            self._random_search()
        return {"evolution": self.best("evolution"), "random": self.best("random")}

    def _tick(self) -> None:
        if self._budget_left is not None:
            if self._budget_left <= 0:
                raise KeyboardInterrupt("stop_after reached")
            self._budget_left -= 1

    def _random_search(self) -> None:
        """Distinct random functions, as many as the evolution evaluated, checkpointed every population."""
        budget = self.evaluations("evolution")
        seen = {h["function_key"] for h in self.state.history if h["kind"] == "random"}
        rng = random.Random(self.config.seed + 1)
        if self.state.random_rng is not None:
            _set_rng(rng, self.state.random_rng)
        bar = tqdm(total=budget, initial=self.state.random_done, desc="random search", disable=not self.progress)
        while self.state.random_done < budget:
            chunk = min(self.config.population, budget - self.state.random_done)
            rollback = len(self.state.history)
            draws = [novel(lambda: random_function(rng), seen) for _ in range(chunk)]
            try:
                for fn in draws:
                    self._tick()
                    self._evaluate(fn, "random", self.state.random_done // self.config.population)
            except BaseException:
                del self.state.history[rollback:]
                raise
            self.state.random_done += chunk
            self.state.random_rng = _rng_state(rng)
            self._checkpoint()
            bar.update(chunk)
        bar.close()
