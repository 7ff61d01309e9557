"""Every CLI command end to end on the tiny model (search, reproduce, demo, dashboard; eval and prune are in
test_cli.py), and pruning end to end on every tiny architecture with the capture loop checked against a
full forward."""

import functools
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from forward_oracle import full_forward_sq_norms

from workbench import demo as demo_mod
from workbench.allocation.dsa.function import AllocationFunction
from workbench.calibrate import calibrate
from workbench.cli import main
from workbench.data import calibration_samples, eval_tokens
from workbench.evaluate import perplexity_from_ids
from workbench.models import TINY_MODELS, load_model
from workbench.prune import prune

REPO = Path(__file__).resolve().parents[1]


def test_search_command_writes_history_and_a_valid_best(tmp_path, capsys):
    out = tmp_path / "search"
    rc = main(["search", "--model", "tiny-llama", "--population", "4", "--generations", "2", "--elite", "1",
               "--nsamples", "2", "--seqlen", "32", "--fitness-windows", "2", "--fitness-seqlen", "64",
               "--cheap-windows", "1", "--cheap-seqlen", "32", "--out", str(out)])
    assert rc == 0
    history = json.loads((out / "history.json").read_text())
    best = json.loads((out / "best.json").read_text())
    assert history and "evolution" in best
    fn = AllocationFunction.from_dict(best["evolution"]["function"])
    scored = [r["full_fitness"] for r in history if r.get("full_fitness") is not None]
    assert math.isclose(best["evolution"]["full_fitness"], min(
        r["full_fitness"] for r in history if r.get("full_fitness") is not None and r.get("kind") == "evolution"))
    assert scored and fn.key()
    printed = capsys.readouterr().out
    assert "best evolution" in printed
    # the final choice re-scored on held-out validation windows, printed beside the in-search value
    fresh = best["heldout"]["evolution"]["heldout_fitness"]
    assert best["evolution"]["heldout_fitness"] == fresh and f"held-out {fresh:.3f}" in printed
    assert best["paid"]["evolution"]["full"] >= 1
    # a second start on the same folder without --resume is refused, with nothing changed
    before = (out / "history.json").read_bytes()
    assert main(["search", "--model", "tiny-llama", "--out", str(out)]) == 2
    assert (out / "history.json").read_bytes() == before


def test_search_command_in_the_public_space_and_its_refusals(tmp_path, capsys, text_file):
    out = tmp_path / "public"
    rc = main(["search", "--model", "tiny-llama", "--population", "4", "--generations", "1", "--elite", "1",
               "--nsamples", "2", "--seqlen", "32", "--fitness-windows", "2", "--fitness-seqlen", "64",
               "--cheap-windows", "1", "--cheap-seqlen", "32", "--no-random-baseline", "--heldout-windows", "2",
               "--function-set", "dsa-public", "--out", str(out)])
    assert rc == 0
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["function_set"] == "dsa-public" and state["config"]["heldout_windows"] == 2
    for rec in state["history"]:
        assert rec["function"]["lam"] == 0.08 and rec["function"].get("direction", 1) == 1
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["search", "--model", "tiny-llama", "--fitness-dataset", str(text_file), "--out", str(refused)]) == 2
    assert "fitness_dataset=" in capsys.readouterr().err and not refused.exists()


def test_reproduce_command_on_the_ci_grid(tmp_path, capsys):
    rc = main(["reproduce", "--grid", str(REPO / "data" / "grids" / "ci.yaml"), "--out", str(tmp_path)])
    assert rc == 0
    table = (tmp_path / "ci" / "tables" / "perplexity.md").read_text()
    for label in ("dense", "uniform", "OWL"):
        assert f"| {label} |" in table
    records = [json.loads(p.read_text()) for p in (tmp_path / "ci").glob("*/result.json")]
    assert len(records) == 5 and all(r["status"] == "ok" for r in records)
    assert "perplexity table" in capsys.readouterr().out


def test_demo_command_on_a_tiny_configuration(tmp_path, monkeypatch, capsys):
    tiny = dict(model="tiny-llama", nsamples=4, seqlen=64, besa_nsamples=2, eval_seqlen=256, limit=4)
    monkeypatch.setattr(demo_mod, "DemoConfig", functools.partial(demo_mod.DemoConfig, **tiny))  # what cmd_demo builds
    rc = main(["demo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (tmp_path / "tables" / "perplexity.md").is_file() and (tmp_path / "tables" / "zeroshot.md").is_file()
    assert "min. The full grid" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_command_starts_answers_and_stops(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "dashboard", "--model", "tiny-llama", "--port",
                             str(port), "--results", str(tmp_path / "r"), "--reproduce", str(tmp_path / "p")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 120, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    body = response.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(1)
        assert "Sparsity Allocation Workbench" in body, proc.stdout.read() if proc.poll() is not None else body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode is not None


@pytest.mark.parametrize("arch", [a for a in TINY_MODELS if a != "tiny-llama"])
def test_capture_loop_equals_a_full_forward_and_pruning_runs(arch):
    model, tok = load_model(arch)
    calib = calibration_samples(tok, "embedded", 3, 48)
    expected = full_forward_sq_norms(model, calib.input_ids)
    stats = calibrate(model, calib.input_ids, "dense", ("sq_norm",), progress=False)
    assert set(stats) == set(expected)
    for name, st in stats.items():
        assert torch.allclose(st.sq_norm.double(), expected[name], rtol=1e-4, atol=1e-5), name
    ids = eval_tokens(tok, "embedded", "test")[0][: 8 * 128]  # 8 windows: enough to see pruning move it
    dense = perplexity_from_ids(model, ids, 128, progress=False)
    result = prune(model, tok, metric="wanda", allocation="owl", sparsity=0.5, calibration=calib, progress=False)
    assert abs(result.report["actual"] - 0.5) < 0.02
    pruned = perplexity_from_ids(model, ids, 128, progress=False)
    assert math.isfinite(pruned) and pruned != dense
