"""Sparsity Allocation Workbench: decide how sparse each layer of an LLM is, prune it, measure it."""

from .data import calibration_samples, load_text
from .evaluate import perplexity
from .models import get_blocks, load_model, prunable_linears

__all__ = ["calibration_samples", "get_blocks", "load_model", "load_text", "perplexity", "prunable_linears"]
__version__ = "0.1.0"
