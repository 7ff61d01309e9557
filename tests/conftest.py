"""Shared fixtures. Tests run offline (no model or dataset hub) on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from workbench.models import load_model  # noqa: E402


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
