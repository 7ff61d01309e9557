"""The ONE block-by-block capture loop that every pruner and allocator uses.

The inputs of block 0 are caught once (the embeddings run on every calibration window); then each
block runs on its inputs with forward hooks on its linears that accumulate statistics:

* ``sq_norm``: Σ over tokens of x_j² for every input feature j (Wanda: ||X_j||₂² before the 1/N);
* ``xtx``: Σ over tokens of x xᵀ (SparseGPT's Hessian H = 2/N · XᵀX, N = number of windows).

Modes:

* ``sequential`` (the papers' protocol): after its statistics are gathered, block l is handed to
  ``on_block`` (which prunes it), then re-run, so block l+1 sees the outputs of the *pruned* block l;
* ``dense``: one pass over the dense model; the statistics are returned for re-use, so re-pruning at
  another allocation costs no forward pass (interactive use and searches rely on this).

Methods that learn per block (BESA) pass ``block_step``: it gets a :class:`BlockData` with the block, its
inputs and its outputs before pruning (the dense block on the pruned model's inputs), and optionally
(``dense_reference=True``) the dense model's own inputs and outputs of that block, carried alongside.

Memory stays at one block's activations (n_windows x seqlen x hidden) plus the statistics; with a
:mod:`workbench.offload` residency, blocks are onloaded or streamed from disk one at a time and the
activations may wait in CPU memory or on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from .backend import kernels
from .errors import WorkbenchError
from .models import ModelStructure, find_blocks, get_blocks, structure
from .offload import Residency
from .units import BlockData, LayerStats

MODES = ("sequential", "dense")
STATISTICS = ("sq_norm", "xtx")


class _Stop(Exception):
    """Raised by the hook on block 0 once its inputs are caught (the rest of the model is not run)."""


@torch.no_grad()
def capture_block_inputs(model: nn.Module, input_ids: torch.Tensor, residency: Residency | None = None,
                         window_kwargs: Sequence[dict] = ()) -> tuple[Sequence[torch.Tensor], dict]:
    """Hidden states entering block 0 for every window (each (1, seqlen, hidden)), and the keyword
    arguments the model passes to its blocks (position embeddings, masks), identical for all windows.
    ``window_kwargs``: more model inputs per window (an image's pixels: image-text calibration)."""
    residency = residency or Residency()
    blocks = get_blocks(model)
    inputs = residency.activations()
    kwargs: dict = {}

    def catch(_module, args, kw):
        hidden = args[0] if args else kw.pop("hidden_states")
        inputs.append(hidden.detach())
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with residency.outside(model):
            device = residency.compute_device(model)
            for i, row in enumerate(input_ids):
                extra = {k: v.to(device) for k, v in window_kwargs[i].items()} if window_kwargs else {}
                try:
                    model(row[None].to(device), use_cache=False, **extra)
                except _Stop:
                    pass
    finally:
        handle.remove()
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    kwargs["use_cache"] = False
    return inputs, kwargs


def _run_block(block: nn.Module, inputs, kwargs: dict, out):
    for hidden in inputs:
        result = block(hidden, **kwargs)
        out.append(result[0] if isinstance(result, tuple) else result)
    return out


def _stat_hooks(linears: dict[str, nn.Linear], stats: dict[str, LayerStats], which: tuple[str, ...]):
    """Register forward hooks that add each call's inputs to ``stats``; returns the handles."""

    def make(name: str):
        def hook(_module, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            st = stats[name]
            st.n_windows += args[0].shape[0] if args[0].dim() == 3 else 1
            if "sq_norm" in which:
                if st.sq_norm is None:
                    st.sq_norm = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
                kernels.accumulate_sq_norm(x, st.sq_norm)
            if "xtx" in which:
                add = x.t() @ x
                st.xtx = add if st.xtx is None else st.xtx.add_(add)
        return hook

    return [linear.register_forward_hook(make(name)) for name, linear in linears.items()]


@torch.no_grad()
def calibrate(model: nn.Module, input_ids: torch.Tensor, mode: str = "dense",
              statistics: tuple[str, ...] = ("sq_norm",),
              on_block: Callable[[int, dict[str, nn.Linear], dict[str, LayerStats]], None] | None = None,
              progress: bool = True, block_step: Callable[[BlockData], None] | None = None,
              dense_reference: bool = False, residency: Residency | None = None,
              layout: ModelStructure | None = None, window_kwargs: Sequence[dict] = ()) -> dict[str, LayerStats]:
    """Run the capture loop over ``input_ids`` (n_windows, seqlen) and return every linear's statistics
    (``window_kwargs``: more model inputs per window, e.g. an image's pixels).

    In ``sequential`` mode ``on_block(index, linears, stats)`` is called after block ``index``'s
    statistics are complete and before its outputs are computed (it may change the block's weights);
    ``block_step(BlockData)`` likewise, with the block's activations (``dense_reference=True`` also carries
    the dense model's activations, one more block forward per block). ``residency`` says where blocks and
    activations live between turns (:mod:`workbench.offload`; default: all on the model's device).
    """
    if mode not in MODES:
        raise WorkbenchError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    unknown = set(statistics) - set(STATISTICS)
    if unknown:
        raise WorkbenchError(f"statistics={sorted(unknown)} not known; allowed: {list(STATISTICS)}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1:
        raise WorkbenchError(f"input_ids must have shape (n_windows >= 1, seqlen), got {tuple(input_ids.shape)}")
    if (block_step is not None or dense_reference) and mode != "sequential":
        raise WorkbenchError(f"block_step and dense_reference need mode='sequential', got mode={mode!r}")
    if window_kwargs and len(window_kwargs) != input_ids.shape[0]:
        raise WorkbenchError(f"window_kwargs has {len(window_kwargs)} entries for {input_ids.shape[0]} windows")
    stats, outputs, _kwargs = _block_loop(model, input_ids, mode, tuple(statistics), on_block, block_step,
                                          dense_reference, residency or Residency(), progress, layout, window_kwargs)
    outputs.close()
    return stats


@torch.no_grad()
def block_outputs(model: nn.Module, input_ids: torch.Tensor, residency: Residency | None = None,
                  progress: bool = True) -> tuple[Sequence[torch.Tensor], dict]:
    """The last block's outputs for every window, computed block-major (all windows through block l, then
    l+1), and the blocks' keyword arguments: what a streamed or onloaded evaluation runs the head on."""
    _stats, outputs, kwargs = _block_loop(model, input_ids, "dense", (), None, None, False,
                                          residency or Residency(), progress)
    return outputs, kwargs


def _block_loop(model, input_ids, mode, statistics, on_block, block_step, dense_reference, residency, progress,
                layout=None, window_kwargs=()):
    """The loop itself: (statistics of every linear, the last block's outputs, the blocks' kwargs)."""
    layout = layout or structure(model)
    inputs, kwargs = capture_block_inputs(model, input_ids, residency, window_kwargs)
    dense_inputs = inputs if dense_reference else None
    all_stats: dict[str, LayerStats] = {}
    desc = f"calibrate ({mode})" if statistics or on_block or block_step else "blocks"
    for index in tqdm(range(len(layout.blocks)), desc=desc, disable=not progress, leave=False):
        block, linears = layout.blocks[index], dict(layout.block_linears[index])
        residency.enter(index, block)
        stats = {name: LayerStats() for name in linears}
        handles = _stat_hooks(linears, stats, statistics)
        try:
            outputs = _run_block(block, inputs, kwargs, residency.activations())
        finally:
            for h in handles:
                h.remove()
        all_stats.update(stats)
        dense_outputs = (_run_block(block, dense_inputs, kwargs, residency.activations())
                         if dense_inputs is not None else None)
        if mode == "sequential" and (on_block is not None or block_step is not None):
            if on_block is not None:
                on_block(index, linears, stats)
            if block_step is not None:
                block_step(BlockData(index, block, linears, stats, inputs, outputs, kwargs, dense_inputs,
                                     dense_outputs))
            outputs.close()
            outputs = _run_block(block, inputs, kwargs, residency.activations())  # l+1 sees the pruned block l
            for st in stats.values():  # Hessians are used up: keep memory at one block's worth
                st.xtx = None
        residency.exit(index, block)
        inputs.close()
        if dense_inputs is not None and dense_inputs is not inputs:
            dense_inputs.close()
        inputs, dense_inputs = outputs, dense_outputs
    return all_stats, inputs, kwargs


class _Passthrough(nn.Module):
    """Stands in for a decoder block in :func:`head_logits`: returns its input (the first one returns the
    states handed to it), so the model's own code applies its final norm, projections and head."""

    def __init__(self, states: list):
        super().__init__()
        self.states = states

    def forward(self, hidden, *args, **kwargs):
        return self.states.pop() if self.states else hidden


@contextmanager
def _blocks_replaced(model: nn.Module, states: list):
    path, blocks = find_blocks(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    stand_ins = nn.ModuleList([_Passthrough(states) for _ in blocks])
    setattr(parent, attr, stand_ins)
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


@torch.no_grad()
def head_logits(model: nn.Module, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of window ``input_ids`` (1, seqlen) from its last block's output ``hidden``: the model's forward
    with its blocks replaced by stand-ins (the caller makes the outside modules usable)."""
    states = [hidden]
    with _blocks_replaced(model, states):
        logits = model(input_ids, use_cache=False).logits
    if states:
        raise RuntimeError(f"{type(model).__name__}: its forward did not pass through the decoder blocks")
    return logits
