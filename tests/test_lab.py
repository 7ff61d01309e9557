"""The notebooks in JupyterLab, in a real browser: the widgets render, react and prune what they show.

JupyterLab (pinned in requirements.txt) serves copies of the notebooks on a free loopback port with a
token; Playwright drives Debian's chromium through the menus as a person would. The notebooks' defaults
use the tiny model (3 blocks). Screenshots go to test-artifacts/.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, free_port, require_chromium

require_chromium()

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BLOCKS = 3  # tiny-llama
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in front (selectors never reach another tab)
# Lab's news and update checks would reach out to the internet (none here, and not wanted in a test)
NO_NEWS = {"fetchNews": "false", "checkForUpdates": False}


# On the tiny model a search is over in under a second (its 3 blocks give few distinct allocations);
# on the embedded SmolLM2 with a small budget each generation takes seconds, so the monitor is seen growing.
SEARCH_PARAMETERS = {"model": "smollm2-135m", "population": 6, "generations": 3, "fitness_windows": 1,
                     "cheap_seqlen": 64}


def _with_parameters(src: Path, dst: Path, parameters: dict) -> None:
    """Copy a notebook with a cell after its parameters cell that sets ``parameters`` (as papermill does)."""
    import nbformat

    book = nbformat.read(src, as_version=4)
    at = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    book.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    nbformat.write(book, dst)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from workbench.data import embedded_text

    embedded_text("calibration")  # a cold cache builds the corpus (~1 min on a busy machine) here, not in a cell
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOKS / "01_sparsity_curves.ipynb", root / "01_sparsity_curves.ipynb")
    _with_parameters(NOTEBOOKS / "02_dsa_search.ipynb", root / "02_dsa_search.ipynb", SEARCH_PARAMETERS)
    shutil.copy(NOTEBOOKS / "01_sparsity_curves.ipynb", root / "01_bad_input.ipynb")  # its own kernel
    settings = root / ".settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps(NO_NEWS))
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)  # no "Select Kernel" dialog
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"autoStartDefaultKernel": True}))
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={root / '.workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI machines often run as root
        cmd.append("--allow-root")
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not start:\n{(root / 'lab.log').read_text()[-3000:]}") from None
            time.sleep(0.5)
    yield base, token, root
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


class Notebook:
    """One notebook open in Lab, with the console errors its page logged."""

    def __init__(self, browser, lab, name: str):
        base, token, _root = lab
        self.page = browser.new_page(viewport={"width": 1400, "height": 1100})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.goto(f"{base}/lab/tree/{name}?reset&token={token}")  # reset: no tabs restored from before
        self.page.wait_for_selector(".jp-Notebook", timeout=90_000)
        self.wait_idle()

    def wait_idle(self, timeout: float = 120.0) -> None:
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached",
                                    timeout=timeout * 1000)

    def menu(self, menu: str, item: str) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
        self.page.locator(".lm-Menu-item", has_text=item).first.click()

    def prompts(self) -> list[str]:
        return self.page.eval_on_selector_all(f"{PANEL} .jp-CodeCell .jp-InputPrompt",
                                              "els => els.map(e => e.textContent.trim())")

    def start_all(self) -> None:
        """Run > Run All Cells on this notebook (made the current widget first; retried once if the menu
        acted before the notebook was ready)."""
        for _attempt in range(3):
            self.page.locator(".jp-Notebook .jp-Cell").first.click()
            self.menu("Run", "Run All Cells")
            try:
                wait_for(lambda: any(p != "[ ]:" for p in self.prompts()), 20, lambda: "")
                return
            except AssertionError:
                self.page.keyboard.press("Escape")
        raise AssertionError(f"Run All Cells did not start: {self.prompts()}")

    def run_all(self, timeout: float = 300.0) -> None:
        """Run all cells, then wait until every code cell has run (an execution count, none pending)."""
        self.start_all()
        wait_for(lambda: all(p.startswith("[") and p[1:-2].isdigit() for p in self.prompts()), timeout,
                 lambda: f"cells did not all run: {self.prompts()}")

    def figures(self) -> list[list[dict]]:
        """Every plotly figure in the page: its traces' name, x and y as the browser holds them."""
        return self.page.eval_on_selector_all(
            f"{PANEL} .js-plotly-plot",
            "els => els.map(e => (e.data || []).map(t => ({name: t.name, x: Array.from(t.x || []),"
            " y: Array.from(t.y || [])})))")

    def curves(self) -> dict[str, list[float]]:
        """The sparsity-curves figure's traces by allocator (the first word of the trace name)."""
        return {t["name"].split(" ")[0]: t["y"] for t in self.figures()[0]}

    def settled_curves(self, quiet: float = 1.5) -> dict[str, list[float]]:
        """The curves once they have not changed for ``quiet`` seconds (redraws follow a slider in order)."""
        last, since = self.curves(), time.monotonic()
        while time.monotonic() - since < quiet:
            time.sleep(0.25)
            now = self.curves()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def slider(self, label: str, presses: int) -> None:
        """Move the slider ``label`` by ``presses`` steps with the keyboard (as a person may)."""
        handle = self.page.locator(".widget-hslider", has_text=label).first.locator(".noUi-handle").first
        handle.focus()
        for _ in range(abs(presses)):
            handle.press("ArrowRight" if presses > 0 else "ArrowLeft")

    def type_into(self, locator, text: str) -> None:
        locator.click()
        locator.fill(text)
        locator.press("Enter")

    def run_code(self, code: str) -> str:
        """A new cell at the end, executed; its output text."""
        self.page.locator(".jp-Cell").last.click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("b")
        self.page.wait_for_timeout(300)
        self.page.keyboard.press("Enter")  # edit mode in the new cell
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        self.page.wait_for_timeout(300)
        wait_for(lambda: self.page.locator(".jp-CodeCell").nth(-2).locator(".jp-OutputArea-output").count() > 0,
                 60, lambda: "the inserted cell gave no output")
        return self.page.locator(".jp-CodeCell").nth(-2).locator(".jp-OutputArea-output").first.inner_text()

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def wait_for(predicate, timeout: float, message) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.25)


def _rows(nb: Notebook) -> list[str]:
    return nb.page.locator(".widget-html table tbody tr").all_inner_texts()


def test_curves_notebook_renders_reacts_and_prunes_what_it_shows(lab, browser):
    nb = Notebook(browser, lab, "01_sparsity_curves.ipynb")
    nb.run_all()
    curves = nb.curves()
    assert {"uniform", "owl"} <= set(curves), curves
    for trace in nb.figures()[0]:
        assert trace["x"] == list(range(BLOCKS)) and len(trace["y"]) == BLOCKS, trace  # one point per block
    assert curves["uniform"] == pytest.approx([0.7] * BLOCKS)
    wait_for(lambda: len(_rows(nb)) == 1, 60, lambda: f"the notebook's own run gave no row: {_rows(nb)}")

    nb.slider("target sparsity", 5)  # 0.70 -> 0.75
    wait_for(lambda: nb.curves()["uniform"] == pytest.approx([0.75] * BLOCKS), 30,
             lambda: f"the curve did not follow the slider: {nb.curves()}")
    owl_before = nb.curves()["owl"]
    nb.slider("λ (OWL, DSA)", 4)  # 0.120 -> 0.140, one redraw per step
    readout = nb.page.locator(".widget-hslider", has_text="λ (OWL, DSA)").first.locator(".widget-readout")
    wait_for(lambda: readout.inner_text().strip() == "0.140", 30, lambda: f"λ readout {readout.inner_text()}")
    plotted = nb.settled_curves()["owl"]
    assert plotted != pytest.approx(owl_before)

    nb.page.locator("button", has_text="Prune & evaluate").click()
    wait_for(lambda: len(_rows(nb)) == 2 and "owl" in _rows(nb)[1], 180, lambda: f"no second row: {_rows(nb)}")
    assert "lam=0.14" in _rows(nb)[1] and "0.75" in _rows(nb)[1], _rows(nb)[1]
    nb.shot("lab_01_sparsity_curves.png")

    out = nb.run_code(
        "import json\nfrom workbench.profile import SparsityProfile\nrec = runner.records[-1]\n"
        "p = SparsityProfile.from_dict(rec['profile'])\nrep = rec['sparsity_report']['layers']\n"
        "act = {}\nfor n, b in p.blocks.items():\n    a = act.setdefault(b, [0, 0])\n"
        "    a[0] += rep[n]['actual'] * rep[n]['numel']; a[1] += rep[n]['numel']\n"
        "print(json.dumps({'method': rec['method'], 'blocks': list(p.block_means().values()),\n"
        "                  'actual': [z / n for _b, (z, n) in sorted(act.items())]}))")
    record = json.loads(out.strip().splitlines()[-1])
    assert record["method"]["params"] == {"lam": 0.14, "M": 5.0, "granularity": "block"}
    assert record["method"]["sparsity"] == 0.75
    assert record["blocks"] == pytest.approx(plotted, abs=1e-12)  # the allocation is the plotted one
    assert record["actual"] == pytest.approx(plotted, abs=0.02)  # and the model holds it (per-row rounding)
    assert nb.errors == [], nb.errors
    nb.page.close()


def test_bad_input_in_the_notebook_shows_a_message_and_changes_nothing(lab, browser):
    nb = Notebook(browser, lab, "01_bad_input.ipynb")
    nb.run_all()
    before, rows = nb.curves(), len(_rows(nb))
    target = nb.page.locator(".widget-text input").first
    nb.type_into(target, "1.5")
    error = nb.page.locator(".wb-error")
    wait_for(lambda: error.count() and "out of range" in error.first.inner_text(), 30, lambda: "no message for 1.5")
    assert "allowed: [0.05, 0.95]" in error.first.inner_text()
    custom = nb.page.locator(".widget-text input").nth(1)
    nb.type_into(custom, "no/such/function.json")
    wait_for(lambda: "neither a preset" in error.first.inner_text(), 30, lambda: error.first.inner_text())
    nb.page.locator("button", has_text="Prune & evaluate").click()  # runs what is plotted, not the bad input
    wait_for(lambda: len(_rows(nb)) == rows + 1, 180, lambda: f"no row: {_rows(nb)}")
    assert nb.curves() == before and target.input_value() == "0.7"
    assert "0.7" in _rows(nb)[-1] and "error" not in _rows(nb)[-1].lower()
    nb.shot("lab_bad_input.png")
    assert nb.errors == [], nb.errors
    nb.page.close()


def test_search_notebook_monitor_grows_while_the_search_runs(lab, browser):
    """The embedded SmolLM2, a small budget (SEARCH_PARAMETERS): the step lines grow generation by
    generation while the search runs, beside the uniform and OWL baselines."""
    nb = Notebook(browser, lab, "02_dsa_search.ipynb")
    nb.start_all()
    seen: list[int] = []
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        figures = nb.figures()
        points = sum(len(t["x"]) for t in figures[0]) if figures else 0
        redrawing = points == 0 and seen and seen[-1] > 0  # read while plotly replaced the traces (busy machine)
        if not redrawing and (not seen or points != seen[-1]):
            seen.append(points)
        if all(p.startswith("[") and p[1:-2].isdigit() for p in nb.prompts()):
            break
        time.sleep(0.3)
    nb.wait_idle()
    nb.shot("lab_02_dsa_search.png")
    assert len([p for p in seen if p > 0]) >= 2 and seen == sorted(seen), f"points over time: {seen}"
    names = {t["name"].split(" ")[0] for t in nb.figures()[0]}
    assert names == {"evolution", "random", "uniform", "owl"}, names  # and the hand-made baselines
    assert nb.errors == [], nb.errors
    nb.page.close()
