"""Block-input states of recently scored allocations, so that a search candidate whose first blocks are pruned as
a cached allocation's runs only the blocks after them (a level-space offspring differs from its parent in a
few blocks; EvoPress's search scores thousands of such neighbours).

Exact: the blocks run on the same input states with the same keyword arguments as in the model's own forward,
and the head on the last block's output (:func:`workbench.calibrate.head_logits`), which the block-major
evaluation already shows equal to the plain forward bit for bit (``tests/test_offload.py``); the values do not
depend on which cached allocation a candidate started from (``tests/test_level_space.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch

from .calibrate import capture_block_inputs, head_logits
from .models import structure

BUDGET_BYTES = 2**29  # cached states per set of windows; at least two allocations (a parent and its child)


class PrefixCache:
    """Per set of windows (a fitness stage): the block-0 inputs and the blocks' keyword arguments of the dense
    model, and the input states of every block for the most recently used allocations (least recently used
    evicted; a cached allocation a candidate starts from counts as used)."""

    def __init__(self, model):
        self.model, layout = model, structure(model)
        self.blocks = list(layout.blocks)
        self.block_linears = [list(linears) for linears in layout.block_linears]
        self.windows: dict[str, torch.Tensor] = {}
        self.kwargs: dict[str, dict] = {}
        self.entries: dict[str, OrderedDict] = {}
        self.capacity: dict[str, int] = {}
        self.blocks_run = 0  # blocks run on all windows of a stage, over every call (what the cache saved: fewer)

    @torch.no_grad()
    def add(self, stage: str, windows: torch.Tensor, keep: bool = True) -> None:
        """The windows (n, seqlen) of a stage: their block-0 inputs are captured once (pruning never changes them);
        ``keep=False``: no allocation's states are kept (a stage scored a few times, or candidates that share no
        prefix: the memory would buy nothing)."""
        inputs, kwargs = capture_block_inputs(self.model, windows)
        self.windows[stage], self.kwargs[stage] = windows, kwargs
        self.entries[stage] = OrderedDict({(): [list(inputs)]})  # the empty prefix: block 0's inputs
        first = inputs[0]
        per_entry = len(self.blocks) * len(inputs) * first.numel() * first.element_size()
        self.capacity[stage] = (max(2, BUDGET_BYTES // max(per_entry, 1)) if keep else 0) + 1  # + the empty prefix

    def signature(self, counts: dict[str, int]) -> tuple[tuple[int, ...], ...]:
        """Per block, the pruned-per-row counts of its linears: what a block's output depends on."""
        return tuple(tuple(counts[name] for name in names) for names in self.block_linears)

    @torch.no_grad()
    def outputs(self, stage: str, signature: tuple) -> list[torch.Tensor]:
        """The last block's output for each window of ``stage`` under the allocation ``signature`` (the model's
        weights must be pruned as it says), from the cached allocation sharing the longest block prefix."""
        entries = self.entries[stage]
        start = max(entries, key=lambda key: _common_prefix(key, signature))  # the first of the longest
        shared = _common_prefix(start, signature)
        entries.move_to_end(start)
        states = entries[start][: shared + 1]  # inputs of blocks 0..shared (lists are shared, never changed)
        hidden = states[-1]
        for index in range(shared, len(self.blocks)):
            hidden = [_first(self.blocks[index](h, **self.kwargs[stage])) for h in hidden]
            states.append(hidden)
            self.blocks_run += 1
        if signature not in entries:
            entries[signature] = states
            while len(entries) > self.capacity[stage]:
                oldest = next(k for k in entries if k != ())
                del entries[oldest]
        return states[len(self.blocks)]

    def logits(self, stage: str, signature: tuple) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(window (1, seqlen), its logits (1, seqlen, vocab)) for each window of ``stage``."""
        for window, hidden in zip(self.windows[stage], self.outputs(stage, signature), strict=True):
            yield window[None], head_logits(self.model, window[None], hidden)


def _common_prefix(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _first(result):
    return result[0] if isinstance(result, tuple) else result
