"""Offline zero-shot tasks made by the project from a dataset's test split (no committed third-party sentences).

One generator, parameterised by the source dataset (:data:`SOURCES`), makes three multiple-choice tasks,
deterministically and on first use, from the *test* split of that dataset (``data.load_text(dataset,
"test")``) into ``$WORKBENCH_CACHE/tasks/<dataset>-<key>/``. Task names are ``<prefix>_<kind>``:

* ``embedded`` (prefix ``wb``): the embedded corpus (CPython's documentation): ``wb_ending``,
  ``wb_word_order``, ``wb_cloze``;
* ``sotu`` (prefix ``sotu``): the State of the Union addresses (natural English prose):
  ``sotu_ending``, ``sotu_word_order``, ``sotu_cloze``. A test sentence also found verbatim in the
  dataset's calibration or validation text (a president repeating himself in a year of another split)
  is left out, so no item's sentence was seen in calibration or selection.

The three kinds:

* ``ending``: the first half of a sentence; choose its true ending among four (the other three
  are endings of sentences from other paragraphs, of similar length). Chance 25%.
* ``word_order``: choose the original sentence over a copy with two of its inner lower-case
  words of 5+ letters swapped (empty context: lm-eval scores each sentence after the tokenizer's
  prefix token). Chance 50%.
* ``cloze``: a sentence cut before one of its words; choose that word among four (the other
  three are words of the same length class from other paragraphs). Chance 25%.

Each task is a JSONL file (``context``, ``choices``, ``label``) plus an lm-eval task YAML made from
the kind's template in ``workbench/resources/tasks/`` (package data: ``wb_<kind>.yaml``, written for the
embedded task of that kind; every dataset's task of that kind is rendered from it under its own task
name) with the JSONL's absolute path filled in. A manifest records the source dataset and split, the
SHA-256 of the source text and of every file. The folder name carries a hash of the source text (and of
the texts a test sentence is held out from), the generator version and the templates, so a different
Python (other corpus) or a changed template gets its own folder; the folder is written under a
temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .errors import WorkbenchError
from .results import atomic_directory

GENERATOR_VERSION = 3
SEED = 0
MAX_ITEMS = 200  # per task: the dense SmolLM2-135M pass over all three takes ~2 min at 300 tokens/s
TEMPLATE_DIR: Path = resources.files("workbench") / "resources" / "tasks"  # package data (lm-eval YAML templates)
PLACEHOLDER = "@DATA_FILE@"
# kind -> chance level (1 / number of choices)
KINDS = {"ending": 0.25, "word_order": 0.5, "cloze": 0.25}


@dataclass(frozen=True)
class Source:
    """A dataset whose test split the tasks are made from: its task-name prefix and the splits of the same
    dataset a test sentence must not appear in (verbatim) to become an item."""

    prefix: str
    held_out_from: tuple[str, ...] = ()


# dataset -> how its tasks are named and held out. The embedded tasks keep their items (and cache folder) as
# they were before sotu came: 6 of their 342 test sentences (Python 3.11.7) also occur in the embedded calib./val.
# text; dropping them would change every embedded item.
SOURCES = {"embedded": Source("wb"), "sotu": Source("sotu", held_out_from=("calibration", "validation"))}
# dataset -> {task name -> chance level}, in kind order
DATASET_TASKS = {d: {f"{src.prefix}_{kind}": chance for kind, chance in KINDS.items()} for d, src in SOURCES.items()}
EMBEDDED_TASKS = DATASET_TASKS["embedded"]
SOTU_TASKS = DATASET_TASKS["sotu"]
GENERATED_TASKS = {name: chance for tasks in DATASET_TASKS.values() for name, chance in tasks.items()}
TASK_DATASET = {name: d for d, tasks in DATASET_TASKS.items() for name in tasks}  # task name -> dataset

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"[A-Za-z0-9 ,.;:!?'\"()\-_/]+")
_WORD = re.compile(r"[A-Za-z]{4,}")
_CONTENT_WORD = re.compile(r"[a-z]{5,}")


@dataclass(frozen=True)
class GeneratedTasks:
    """Where one dataset's generated tasks live and what they were made from."""

    folder: Path
    manifest: dict

    def yaml_path(self, task: str) -> Path:
        """The generated lm-eval YAML of ``task``."""
        return self.folder / f"{task}.yaml"

    def jsonl_path(self, task: str) -> Path:
        """The generated JSONL items of ``task``."""
        return self.folder / f"{task}.jsonl"

    def items(self, task: str) -> list[dict]:
        """The items of one task as dicts (context, choices, label, ...), in file order."""
        with open(self.jsonl_path(task), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


EmbeddedTasks = GeneratedTasks  # the older name, from when the embedded corpus was the only source


# --------------------------------------------------------------------------- sentences

def prose_sentences(text: str) -> list[tuple[int, str]]:
    """(paragraph index, sentence) for every prose-like sentence of ``text``, in text order.

    Paragraphs are separated by blank lines; paragraphs holding doctests or reST blocks are skipped;
    a sentence is kept when it is 30-200 characters, starts upper-case, ends with . ! or ?, has at
    least six words and only prose characters.
    """
    out = []
    for p_index, para in enumerate(text.split("\n\n")):
        if ">>>" in para or "::" in para:
            continue
        flat = " ".join(para.split())
        for sentence in _SENTENCE_SPLIT.split(flat):
            if (30 <= len(sentence) <= 200 and sentence[0].isupper() and sentence[-1] in ".!?"
                    and len(sentence.split()) >= 6 and _PROSE.fullmatch(sentence)):
                out.append((p_index, sentence))
    return out


def held_out_sentences(sentences: list[tuple[int, str]], others: list[str]) -> list[tuple[int, str]]:
    """The sentences found verbatim (whitespace-flattened) in none of the ``others`` texts: an item made from
    a sentence the model was calibrated or selected on would not measure held-out text."""
    flat = [" ".join(text.split()) for text in others]
    return [(p, s) for p, s in sentences if not any(s in text for text in flat)]


def _pick(rng: random.Random, n_available: int) -> list[int]:
    """A sorted, seeded choice of at most MAX_ITEMS indices out of ``n_available``."""
    if n_available <= MAX_ITEMS:
        return list(range(n_available))
    return sorted(rng.sample(range(n_available), MAX_ITEMS))


def _place(rng: random.Random, true: str, distractors: list[str]) -> tuple[list[str], int]:
    """Put the true choice at a seeded random position among the distractors."""
    label = rng.randrange(len(distractors) + 1)
    choices = list(distractors)
    choices.insert(label, true)
    return choices, label


# --------------------------------------------------------------------------- the three generators

def make_ending_items(sentences: list[tuple[int, str]], seed: int = SEED, task: str = "wb_ending") -> list[dict]:
    """First half of a sentence -> its true ending among 4 (3 endings from other paragraphs)."""
    rng = random.Random(f"{task}:{seed}")
    splits = []
    for p_index, sentence in sentences:
        words = sentence.split()
        cut = max(3, min(len(words) - 3, len(words) // 2))
        splits.append((p_index, " ".join(words[:cut]), " ".join(words[cut:])))
    items = []
    for i in _pick(rng, len(splits)):
        p_index, context, ending = splits[i]
        # candidates from other paragraphs, nearest in length first (ties broken by text): 3 of the 12 nearest
        others = sorted({e for p, _, e in splits if p != p_index and e != ending},
                        key=lambda e: (abs(len(e) - len(ending)), e))[:12]
        if len(others) < 3:
            continue
        choices, label = _place(rng, ending, rng.sample(others, 3))
        items.append({"id": f"{task}-{i:04d}", "paragraph": p_index, "context": context,
                      "choices": choices, "label": label})
    return items


def _swap_pairs(words: list[str]) -> list[tuple[int, int]]:
    """Pairs of positions holding two different lower-case words of 5+ letters (mostly content words),
    neither the first nor the last word: the swapped copy often stays grammatical ("Return the
    resource from which to receive identified connection."), so telling it apart needs meaning."""
    inner = [k for k in range(1, len(words) - 1) if _CONTENT_WORD.fullmatch(words[k])]
    return [(i, j) for a, i in enumerate(inner) for j in inner[a + 1:] if words[i] != words[j]]


def swap_two_words(sentence: str, rng: random.Random) -> str | None:
    """The sentence with two different inner lower-case 5+-letter words (seeded choice) exchanged, or None."""
    words = sentence.split()
    pairs = _swap_pairs(words)
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    words[i], words[j] = words[j], words[i]
    return " ".join(words)


def make_word_order_items(sentences: list[tuple[int, str]], seed: int = SEED,
                          task: str = "wb_word_order") -> list[dict]:
    """The original sentence vs. a copy with two inner content words swapped (empty context, chance 50%)."""
    rng = random.Random(f"{task}:{seed}")
    eligible = [(i, s) for i, s in enumerate(sentences) if _swap_pairs(s[1].split())]
    items = []
    for pick in _pick(rng, len(eligible)):
        i, (p_index, sentence) = eligible[pick]
        swapped = swap_two_words(sentence, rng)
        choices, label = _place(rng, sentence, [swapped])
        items.append({"id": f"{task}-{i:04d}", "paragraph": p_index, "context": "",
                      "choices": choices, "label": label})
    return items


def make_cloze_items(sentences: list[tuple[int, str]], seed: int = SEED, task: str = "wb_cloze") -> list[dict]:
    """A sentence cut before one of its words (4+ letters, not among the first three) -> that word among 4."""
    rng = random.Random(f"{task}:{seed}")
    vocab: dict[int, set[str]] = {}
    for p_index, sentence in sentences:
        vocab.setdefault(p_index, set()).update(w for w in sentence.split() if _WORD.fullmatch(w))
    eligible = [(i, s) for i, s in enumerate(sentences)
                if any(_WORD.fullmatch(w) for w in s[1].split()[3:])]
    items = []
    for pick in _pick(rng, len(eligible)):
        i, (p_index, sentence) = eligible[pick]
        words = sentence.split()
        positions = [k for k in range(3, len(words)) if _WORD.fullmatch(words[k])]
        k = rng.choice(positions)
        target = words[k]
        # distractors: words from other paragraphs with the same capitalisation and a similar length
        pool = sorted({w for p, ws in vocab.items() if p != p_index for w in ws
                       if w != target and w.lower() != target.lower() and w[0].isupper() == target[0].isupper()
                       and abs(len(w) - len(target)) <= 2})
        if len(pool) < 3:
            continue
        choices, label = _place(rng, target, rng.sample(pool, 3))
        items.append({"id": f"{task}-{i:04d}", "paragraph": p_index, "context": " ".join(words[:k]),
                      "choices": choices, "label": label})
    return items


# kind -> item builder (the task name seeds its generator and prefixes its item ids)
GENERATORS = {"ending": make_ending_items, "word_order": make_word_order_items, "cloze": make_cloze_items}


# --------------------------------------------------------------------------- files in the cache

def _kind(task: str) -> str:
    """The kind (ending, word_order, cloze) of a generated task name."""
    if task not in TASK_DATASET:
        raise WorkbenchError(f"task={task!r} is not a generated task; allowed: {list(GENERATED_TASKS)}")
    return task[len(SOURCES[TASK_DATASET[task]].prefix) + 1:]


def _template_text(task: str) -> str:
    """The YAML template of ``task``'s kind (the embedded task's file, ``wb_<kind>.yaml``)."""
    path = TEMPLATE_DIR / f"{SOURCES['embedded'].prefix}_{_kind(task)}.yaml"
    if not path.is_file():
        raise RuntimeError(f"task template {path} is missing (package data: workbench/resources/tasks/)")
    return path.read_text(encoding="utf-8")


def render_task_yaml(task: str, jsonl_path: Path) -> str:
    """The lm-eval YAML of ``task``: its kind's template named ``task``, with the JSONL's absolute path filled in."""
    config = yaml.safe_load(_template_text(task))
    template_task = f"{SOURCES['embedded'].prefix}_{_kind(task)}"
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    if files.get("test") != PLACEHOLDER or config.get("task") != template_task:
        raise RuntimeError(f"template {template_task}.yaml must name task {template_task!r} and data_files.test "
                           f"{PLACEHOLDER!r}")
    config["task"] = task
    files["test"] = str(Path(jsonl_path).resolve())
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _folder_key(dataset: str, text_sha256: str, held_out: dict[str, str]) -> str:
    """Hash of what the items depend on; for embedded (nothing held out) the same key as generator v3 gave."""
    key = f"v{GENERATOR_VERSION}:seed{SEED}:max{MAX_ITEMS}:{text_sha256}"
    key += "".join(f":held_out:{split}:{sha}" for split, sha in held_out.items())
    h = hashlib.sha256(key.encode())
    for task in sorted(DATASET_TASKS[dataset]):
        h.update(_template_text(task).encode("utf-8"))
    return h.hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_tasks(dataset: str, cache: Path | None = None) -> GeneratedTasks:
    """The tasks generated from ``dataset``'s test split (JSONL + lm-eval YAML + manifest), built on first use."""
    from .data import load_text
    from .models import cache_dir

    if dataset not in SOURCES:
        raise WorkbenchError(f"dataset={dataset!r} has no generated tasks; allowed: {list(SOURCES)}")
    source = load_text(dataset, "test")
    others = {split: load_text(dataset, split) for split in SOURCES[dataset].held_out_from}
    root = (cache or cache_dir()) / "tasks"
    folder = root / f"{dataset}-{_folder_key(dataset, source.sha256, {s: t.sha256 for s, t in others.items()})}"
    if not (folder / "manifest.json").is_file():
        _write_tasks(folder, dataset, source.text, source.sha256, others)
    return GeneratedTasks(folder, json.loads((folder / "manifest.json").read_text(encoding="utf-8")))


def embedded_tasks(cache: Path | None = None) -> GeneratedTasks:
    """The generated embedded tasks (``wb_*``), built on first use."""
    return dataset_tasks("embedded", cache)


def _write_tasks(folder: Path, dataset: str, text: str, text_sha256: str, others: dict) -> None:
    sentences = prose_sentences(text)
    source = {"dataset": dataset, "split": "test", "text_sha256": text_sha256, "prose_sentences": len(sentences)}
    if others:
        kept = held_out_sentences(sentences, [t.text for t in others.values()])
        source.update({"held_out_from": {split: t.sha256 for split, t in others.items()},
                       "dropped_in_held_out_splits": len(sentences) - len(kept)})
        sentences = kept
    with atomic_directory(folder, replace=False) as tmp:  # another process may build it first: keep theirs
        manifest = {"source": source, "generator_version": GENERATOR_VERSION, "seed": SEED, "max_items": MAX_ITEMS,
                    "tasks": {}}
        for task, chance in DATASET_TASKS[dataset].items():
            items = GENERATORS[_kind(task)](sentences, task=task)
            if not items:
                raise RuntimeError(f"task {task!r}: the {dataset} test split gave no items")
            jsonl = tmp / f"{task}.jsonl"
            jsonl.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items),
                             encoding="utf-8")
            # the YAML points at the final folder, where the JSONL will be after the rename
            config = tmp / f"{task}.yaml"
            config.write_text(render_task_yaml(task, folder / jsonl.name), encoding="utf-8")
            manifest["tasks"][task] = {"items": len(items), "chance": chance, "jsonl_sha256": _sha256_file(jsonl),
                                       "yaml_sha256": _sha256_file(config)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
