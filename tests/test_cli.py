"""The command line writes complete result records and reports bad input clearly."""

import json
import subprocess
import sys

import pytest

from workbench.cli import main
from workbench.results import write_json_atomic

REQUIRED = {"model", "method", "data", "metrics", "versions", "wall_time_s"}


def test_eval_writes_a_complete_record(tmp_path, text_file, capsys):
    out = tmp_path / "rec.json"
    rc = main(["eval", "--model", "tiny-llama", "--dataset", str(text_file), "--seqlen", "64", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert REQUIRED <= rec.keys()
    assert rec["model"]["id"] == "tiny-llama" and len(rec["model"]["weight_sha256"]) == 64
    assert rec["data"]["eval"]["seqlen"] == 64 and len(rec["data"]["eval"]["text_sha256"]) == 64
    assert rec["versions"]["torch"].startswith("2.13.0")
    assert f"{rec['metrics']['perplexity']:.3f}" in printed


@pytest.mark.parametrize("argv,match", [
    (["--model", "no-such-model-xyz"], "model='no-such-model-xyz'"),
    (["--dataset", "wikitext103"], "dataset='wikitext103'"),
    (["--seqlen", "1"], "seqlen=1"),
])
def test_eval_bad_input_exits_2_and_writes_nothing(tmp_path, text_file, capsys, argv, match):
    out = tmp_path / "rec.json"
    base = ["eval", "--model", "tiny-llama", "--dataset", str(text_file), "--seqlen", "64", "--out", str(out)]
    for i in range(0, len(argv), 2):
        base[base.index(argv[i]) + 1] = argv[i + 1]
    assert main(base) == 2
    assert match in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {1j: 2})  # complex keys cannot be JSON: fails halfway through dumping
    assert json.loads(path.read_text()) == {"a": 1}  # the old record survives
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "eval" in res.stdout


def test_prune_cli_writes_record_and_saves(tmp_path, text_file, capsys):
    out, save = tmp_path / "prune.json", tmp_path / "pruned"
    rc = main(["prune", "--model", "tiny-llama", "--metric", "wanda", "--allocation", "er", "--sparsity", "0.6",
               "--calib-dataset", str(text_file), "--nsamples", "4", "--seqlen", "64", "--eval",
               "--eval-dataset", str(text_file), "--eval-seqlen", "128", "--save", str(save), "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert REQUIRED <= rec.keys()
    assert rec["method"]["allocation"] == "er" and rec["data"]["calibration"]["nsamples"] == 4
    assert abs(rec["metrics"]["actual_sparsity"] - 0.6) < 0.01
    assert rec["metrics"]["perplexity"] > 1 and rec["data"]["eval"]["seqlen"] == 128
    assert (save / "sparsity_profile.json").is_file() and (save / "model.safetensors").is_file()
    assert f"actual {rec['metrics']['actual_sparsity']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--sparsity", "1.5"], "sparsity=1.5"),
    (["--pattern", "3:3"], "0 < N < M"),
    (["--metric", "obs"], "metric='obs'"),
    (["--allocation", "owlish"], "allocation='owlish'"),
    (["--nsamples", "0"], "nsamples=0"),
    (["--alloc-param", "oops"], "KEY=VALUE"),
])
def test_prune_cli_bad_input(tmp_path, text_file, capsys, argv, match):
    out = tmp_path / "r.json"
    rc = main(["prune", "--model", "tiny-llama", "--calib-dataset", str(text_file), "--nsamples", "2",
               "--seqlen", "32", "--out", str(out), *argv])
    assert rc == 2 and match in capsys.readouterr().err
    assert not out.exists()
