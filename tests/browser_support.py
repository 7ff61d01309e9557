"""What the browser tests share: Debian's chromium driven by Playwright (no browser download), a free
loopback port, and where screenshots go."""

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def require_chromium() -> None:
    """Fail (not skip) without the browser, unless the run says it has none on purpose."""
    if os.environ.get("WORKBENCH_SKIP_BROWSER") == "1":
        pytest.skip("WORKBENCH_SKIP_BROWSER=1", allow_module_level=True)
    if not shutil.which(CHROMIUM):
        pytest.fail(f"browser tests need {CHROMIUM} (`make setup` installs it: scripts/system_deps.sh); "
                    "set WORKBENCH_SKIP_BROWSER=1 to skip them on a machine without it", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
