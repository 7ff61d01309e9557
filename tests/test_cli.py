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
