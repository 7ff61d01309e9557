"""Shared fixtures. Tests run offline (no model or dataset hub) on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per test process (and the notebook kernels, CLI subprocesses and Ray workers it starts,
# which inherit it): the tests' tensors are small, `make test` runs two pytest-xdist workers on the 2 cores,
# and OpenMP's spinning barriers on a busy machine made a tiny-model forward ~10x slower at 2 threads than at 1.
# An explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import pytest  # noqa: E402

from workbench import data as _data  # noqa: E402
from workbench.models import load_model  # noqa: E402

_real_tokenize = _data.tokenize
_TOKENS: dict[tuple, object] = {}


def _shared_tokenize(tokenizer, text):
    """``workbench.data.tokenize``, computed once per (tokenizer, text) in this test process.

    The byte tokenizer of the tiny models takes seconds on the 1.7 MB embedded calibration text (HF
    tokenizers, one byte at a time), and nearly every calibration re-tokenises it. The key is the whole
    fast tokenizer (its serialised pipeline: vocabulary, pre-tokenizer, post-processor, added tokens) and
    the text, so a hit returns exactly what the real function returns (as a fresh tensor); anything else
    (a slow tokenizer, a stand-in) goes to the real function."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(text, str):
        return _real_tokenize(tokenizer, text)
    key = (type(tokenizer).__qualname__, backend.to_str(), getattr(tokenizer, "split_special_tokens", None), text)
    if key not in _TOKENS:
        _TOKENS[key] = _real_tokenize(tokenizer, text)
    return _TOKENS[key].clone()


_data.tokenize = _shared_tokenize


@pytest.fixture(scope="session")
def tiny():
    """A seeded tiny random LLaMA (3 blocks) and the byte tokenizer."""
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def calib():
    """Six embedded calibration windows of 64 tokens for the tiny model (byte tokenizer)."""
    from workbench.data import calibration_samples

    _, tok = load_model("tiny-llama")
    return calibration_samples(tok, "embedded", nsamples=6, seqlen=64, seed=0)


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M (built from GGUF into the cache on first use)."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright (browser tests call ``browser_support.require_chromium`` first)."""
    from browser_support import launch
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture()
def text_file(tmp_path):
    """A small local UTF-8 text file, project-made."""
    path = tmp_path / "corpus.txt"
    lines = [f"Line {i}: the workbench prunes layer {i % 7} at sparsity {i % 10 / 10:.1f}." for i in range(400)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# Under pytest-xdist (`make test`: -n 2 --dist loadfile --no-loadscope-reorder) the files are handed to the
# workers in collection order: the long ones first, so that no long file starts last and runs alone.
# Measured seconds per file on 2 busy cores; files not named keep their order after these.
LONG_FIRST = ("test_cli_commands.py", "test_dashboard.py", "test_lab.py", "test_demo.py", "test_distributed.py",
              "test_reproduce.py", "test_kernel_emulator.py", "test_zeroshot.py", "test_prune_smollm.py",
              "test_properties.py", "test_besa.py", "test_data.py", "test_owl_dsa.py", "test_evaluate.py",
              "test_offload.py", "test_kernels.py")


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # only the xdist workers' collections (the order they are run in)
        return
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: in-file order kept
