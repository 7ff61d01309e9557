"""Thirty bad command lines through the real CLI: each must exit 2 with one error line and no traceback.

    .venv/bin/python scripts/bad_cli_inputs.py        # prints a Markdown table: command | exit | first line

Used for issue 17's note; the property tests in tests/test_properties.py cover the same ground in-process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["--model", "tiny-llama"]
FAST = ["--nsamples", "1", "--seqlen", "16"]
CASES = [
    ["prune", *TINY, "--alloc-param", "lamda=0.1", "--allocation", "owl"],
    ["prune", *TINY, "--allocation", "er", "--granularity", "row"],
    ["prune", *TINY, "--allocation", "owl2"],
    ["prune", *TINY, "--metric", "wandaa"],
    ["prune", *TINY, "--sparsity", "1.0"],
    ["prune", *TINY, "--sparsity", "nan"],
    ["prune", *TINY, "--sparsity", "abc"],
    ["prune", *TINY, "--pattern", "4:4"],
    ["prune", *TINY, "--pattern", "2:x"],
    ["prune", *TINY, "--pattern", "2:4", "--allocation", "owl"],
    ["prune", *TINY, "--pattern", "2:5", *FAST],
    ["prune", *TINY, "--group", "column"],
    ["prune", *TINY, "--mode", "fast"],
    ["prune", *TINY, "--nsamples", "0"],
    ["prune", *TINY, "--seqlen", "1"],
    ["prune", *TINY, "--calib-dataset", "nosuch.txt"],
    ["prune", *TINY, "--dtype", "int4"],
    ["prune", *TINY, "--device", "tpu"],
    ["prune", *TINY, "--device", "cuda", *FAST],
    ["prune", *TINY, "--alloc-param", "=3"],
    ["prune", *TINY, "--allocation", "owl", "--alloc-param", "M=-1"],
    ["prune", *TINY, "--allocation", "alphapruning", "--alloc-param", "epsilon=0"],
    ["prune", *TINY, "--allocation", "atp", "--alloc-param", "beta=5", *FAST],
    ["prune", *TINY, "--allocation", "dsa", "--alloc-param", "function=nosuch"],
    ["prune", *TINY, "--allocation", "dsa", "--alloc-param", 'function={"pre": ["sqrt2"]}'],
    ["prune", "--model", "no/such-model-here", *FAST],
    ["eval", *TINY, "--dataset", "c4x"],
    ["eval", *TINY, "--seqlen", "100000000"],
    ["eval", *TINY, "--tasks", "nosuchtask"],
    ["search", *TINY, "--population", "1", "--out", "OUT/search"],
    ["reproduce", "--grid", "nosuch.yaml"],
]


def main() -> int:
    rows, failures = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for argv in CASES:
            argv = [a.replace("OUT", tmp) for a in argv]
            out = Path(tmp) / "record.json"
            extra = ["--out", str(out)] if argv[0] in ("prune", "eval") else []
            proc = subprocess.run([sys.executable, "-m", "workbench", *argv, *extra], capture_output=True, text=True,
                                  timeout=600)
            lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("usage:")
                     and not line.startswith("  ")]
            first = lines[0] if lines else "(nothing on stderr)"
            ok = proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists()
            failures += not ok
            shown = " ".join(a for a in argv if a != tmp)
            rows.append(f"| `{shown}` | {proc.returncode} | {first.replace('|', '/')} |{'' if ok else ' **FAILED**'}")
    print("| command | exit | first line |\n|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(CASES) - failures} of {len(CASES)} refused with one line, exit 2, nothing written")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
