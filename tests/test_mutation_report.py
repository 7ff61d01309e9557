"""scripts/mutation_report.py: the score per module and the census + uniform-sample estimate it prints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation_report.py"


def _report(tmp_path, *args) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), "--mutants", str(tmp_path / "mutants"), *args],
                          capture_output=True, text=True, check=True, cwd=tmp_path).stdout


@pytest.fixture
def results(tmp_path):
    """20 mutants of workbench.a: 0-9 killed (exit 1), 10-13 survived (0), 14 no tests (33), 15 timeout (36),
    16-19 not checked; m13 is listed as equivalent; the census is m10-m13."""
    codes = {f"workbench.a.x_f__mutmut_{i}": (1 if i < 10 else 0 if i < 14 else 33 if i == 14 else 36 if i == 15
                                              else None) for i in range(20)}
    meta = tmp_path / "mutants" / "workbench" / "a.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    (tmp_path / "eq.txt").write_text("workbench.a.x_f__mutmut_13   # why\n")
    (tmp_path / "census.txt").write_text("\n".join(f"workbench.a.x_f__mutmut_{i}" for i in range(10, 14)) + "\n")
    return tmp_path


def test_score_counts_timeouts_as_killed_and_no_tests_against(results):
    out = _report(results, "--equivalent", "eq.txt", "--survivors")
    row = next(line for line in out.splitlines() if line.startswith("workbench.a "))
    # checked 16; killed 10 + 1 timeout; survived 3 (one is equivalent); 1 without tests: 11 / 15
    assert row.split() == ["workbench.a", "20", "16", "11", "3", "1", "1", "73.3%"]
    assert "survived: workbench.a.x_f__mutmut_13" not in out and "survived: workbench.a.x_f__mutmut_12" in out


def test_census_plus_uniform_sample_estimate(results):
    drawn = _report(results, "--equivalent", "eq.txt", "--census", "census.txt", "--sample", "5", "--seed", "1")
    names = drawn.split()
    assert len(names) == 5 and not set(names) & set((results / "census.txt").read_text().split())
    sample = [f"workbench.a.x_f__mutmut_{i}" for i in (0, 1, 2, 14, 15)]  # 4 of 5 killed (the timeout counts)
    (results / "sample.txt").write_text("\n".join(sample) + "\n")
    out = _report(results, "--equivalent", "eq.txt", "--census", "census.txt", "--sampled", "sample.txt")
    # census: m10-m12 survived, m13 equivalent -> 0/3; rest: 20 - 4 = 16 mutants at 80%: (0 + 12.8) / 19
    assert "census: 0/3 killed (1 equivalent); rest: 16 mutants, sample 4/5 killed (80.0%)" in out
    assert f"estimated score over all non-equivalent mutants: {100 * 12.8 / 19:.1f}%" in out
    (results / "sample.txt").write_text("workbench.a.x_f__mutmut_19\n")  # not checked yet: no estimate
    assert "not every census (0) and sample (1) mutant is checked" in _report(
        results, "--equivalent", "eq.txt", "--census", "census.txt", "--sampled", "sample.txt")
