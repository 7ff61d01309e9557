"""The CUDA emulator can fail: every barrier and every atomic of every kernel, removed one at a time from the
source, is caught; so are out-of-bounds accesses, reads of uninitialised shared memory and barriers not
reached by every thread. And the host launch code of ``workbench/backend/kernels.py`` (grid and block sizes,
argument order, dtypes, strides, chunking) runs through the emulator, so all but the device is tested here."""

import re

import pytest
import torch
from emu.harness import EmulatedModule, EmulatorError

from workbench.backend import kernels
from workbench.backend import reference as ref

T = kernels.THREADS
ORDERS = [("ascending", 0), ("descending", 0), ("random", 1), ("random", 2)]


# --------------------------------------------------------------------------- one workload per source file
# Each runs every kernel of its file on inputs that reach every code path (several blocks, several
# iterations of every loop that holds a barrier, ties) and asserts the torch reference's answer.

def _row_select(mod, **how):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 40, (3, 700), generator=g).float()  # ties across three 256-wide scan steps
    counts = torch.tensor([5, 350, 699], dtype=torch.int32)
    out = torch.zeros(3, 700, dtype=torch.uint8)
    mod.launch("row_select", (3,), (T,), scores, counts, out, 700, **how)
    assert torch.equal(out.bool(), ref.row_mask(scores, counts))


def _nm_mask(mod, **how):
    s = torch.randint(0, 3, (5, 64), generator=torch.Generator().manual_seed(1)).float()
    out = torch.zeros(5, 64, dtype=torch.uint8)
    mod.launch("nm_mask", (1,), (T,), s, out, 80, 2, 4, **how)
    assert torch.equal(out.bool(), ref.nm_mask(s, 2, 4))


def _sq_norm(mod, **how):
    x = torch.randn(600, 300, generator=torch.Generator().manual_seed(2))
    out = torch.zeros(300)
    mod.launch("accumulate_sq_norm", (2, 3), (T,), x, out, 600, 300, 256, **how)  # 3 token chunks
    assert torch.allclose(out, (x.double() ** 2).sum(0).float(), rtol=1e-5)


def _wanda_scores(mod, **how):
    g = torch.Generator().manual_seed(3)
    w, norm = torch.randn(33, 70, generator=g), torch.rand(70, generator=g)
    out = torch.empty(33, 70)
    mod.launch("wanda_scores", (3,), (T,), w, norm, out, w.numel(), 70, **how)
    assert torch.equal(out, w.abs() * norm)


def _outlier_count(mod, **how):
    s = torch.rand(5000, generator=torch.Generator().manual_seed(4)) ** 4
    partial, out = torch.zeros(5, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    mod.launch("block_reduce", (5,), (T,), s, 5000, 0, 0.0, partial, **how)
    mod.launch("final_reduce", (1,), (T,), partial, 5, out, **how)
    assert float(out[0]) == pytest.approx(float(s.double().sum()), rel=1e-12)
    mod.launch("block_reduce", (5,), (T,), s, 5000, 1, 0.2, partial, **how)
    mod.launch("final_reduce", (1,), (T,), partial, 5, out, **how)
    assert int(out[0]) == int((s > 0.2).sum())


def _besa_prob(mod, **how):
    g = torch.Generator().manual_seed(5)
    ranks = torch.stack([torch.randperm(600, generator=g) for _ in range(2)]).to(torch.int32)
    cands = torch.linspace(1.0, 0.0, 101)
    probs = torch.softmax(torch.randn(2, 101, generator=g), -1)
    out = torch.empty(2, 600)
    mod.launch("besa_keep_prob", (2,), (T,), ranks, probs, 101, cands, 101, out, 600, **how)
    assert torch.allclose(out, ref.besa_keep_prob(ranks, probs, cands), atol=1e-5)


def _apply_mask(mod, **how):
    g = torch.Generator().manual_seed(6)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(17, 30, generator=g).to(dtype)
        mask = torch.rand(17, 30, generator=g) < 0.4
        expected = w.masked_fill(mask, 0)
        view = w.view(torch.int32 if w.element_size() == 4 else torch.int16)
        mod.launch(f"apply_mask_{8 * w.element_size()}", (2,), (T,), view, mask.to(torch.uint8), w.numel(), **how)
        assert torch.equal(w, expected)


WORKLOADS = {"row_select.cu": _row_select, "nm_mask.cu": _nm_mask, "sq_norm.cu": _sq_norm,
             "wanda_scores.cu": _wanda_scores, "outlier_count.cu": _outlier_count, "besa_prob.cu": _besa_prob,
             "apply_mask.cu": _apply_mask}


def test_every_kernel_file_has_a_workload():
    assert set(WORKLOADS) == {p.name for p in kernels.kernel_files()}


@pytest.mark.parametrize("order,seed", ORDERS)
@pytest.mark.parametrize("filename", sorted(WORKLOADS))
def test_every_kernel_is_right_in_any_thread_and_block_order(filename, order, seed):
    WORKLOADS[filename](EmulatedModule(filename), order=order, seed=seed)


# --------------------------------------------------------------------------- generated broken variants

def _call_span(source: str, start: int) -> tuple[int, list[str]]:
    """End index and top-level arguments of the call whose '(' is at ``start``."""
    depth, args, last = 0, [], start + 1
    for i in range(start, len(source)):
        if source[i] == "(":
            depth += 1
        elif source[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1, args + [source[last:i].strip()]
        elif source[i] == "," and depth == 1:
            args.append(source[last:i].strip())
            last = i + 1
    raise ValueError("unbalanced call")


def broken_variants(source: str) -> list[tuple[str, str]]:
    """(what was removed, source without it): each __syncthreads() deleted, each atomicAdd(&x, v) made a
    plain ``x += v``, one at a time."""
    out = []
    line = lambda at: source.count("\n", 0, at) + 1  # noqa: E731
    for m in re.finditer(r"__syncthreads\(\);", source):
        out.append((f"__syncthreads() at line {line(m.start())}", source[:m.start()] + source[m.end():]))
    for m in re.finditer(r"\batomicAdd\(", source):
        end, (target, value) = _call_span(source, m.end() - 1)
        assert target.startswith("&")
        plain = f"(({target[1:]}) += ({value}))"
        out.append((f"atomicAdd at line {line(m.start())}", source[:m.start()] + plain + source[end:]))
    return out


VARIANTS = [(f, what, src) for f in sorted(WORKLOADS) for what, src in broken_variants(kernels.kernel_source(f))]


def test_the_variants_cover_every_barrier_and_atomic():
    counted = {f: sum(1 for g, _, _ in VARIANTS if g == f) for f in WORKLOADS}
    for f in WORKLOADS:
        src = kernels.kernel_source(f)
        assert counted[f] == src.count("__syncthreads();") + len(re.findall(r"\batomicAdd\(", src))
    assert len(VARIANTS) >= 10  # row_select, besa_prob and outlier_count hold barriers; two kernels atomics


@pytest.mark.parametrize("filename,what,source", VARIANTS, ids=[f"{f}:{w}" for f, w, _ in VARIANTS])
def test_removing_a_barrier_or_an_atomic_is_caught(filename, what, source):
    with pytest.raises(AssertionError):  # EmulatorError (race, uninitialised read) or a wrong answer
        WORKLOADS[filename](EmulatedModule(filename, source))


def test_a_race_is_reported_with_the_kernel_block_and_thread():
    src = kernels.kernel_source("sq_norm.cu").replace("atomicAdd(&out[j], acc);", "out[j] += acc;")
    with pytest.raises(EmulatorError, match=r"race in kernel accumulate_sq_norm, block \(\d+,\d+,0\), thread "
                                            r"\(\d+,0,0\): .*conflicts with block"):
        _sq_norm(EmulatedModule("sq_norm.cu", src))


# --------------------------------------------------------------------------- the emulator's other checks

def test_an_out_of_bounds_access_aborts_the_launch_and_names_the_argument():
    mod = EmulatedModule("wanda_scores.cu")
    w, norm, out = torch.randn(4, 8), torch.rand(8), torch.empty(4, 8)
    with pytest.raises(EmulatorError, match=r"out-of-bounds read in kernel wanda_scores.*argument 0"):
        mod.launch("wanda_scores", (1,), (T,), w, norm, out, 40, 8)  # n says 40, the buffers hold 32
    with pytest.raises(EmulatorError, match=r"out-of-bounds read.*argument 1"):  # norm read with a wrong width
        mod.launch("wanda_scores", (1,), (T,), w.reshape(2, 16), norm, out, 32, 16)


def test_a_read_of_uninitialised_shared_memory_is_reported():
    src = kernels.kernel_source("row_select.cu").replace("hist[b] = 0u;", ";")
    with pytest.raises(EmulatorError, match="uninitialised __shared__ memory"):
        _row_select(EmulatedModule("row_select.cu", src))


def test_a_barrier_inside_a_branch_is_reported():
    src = kernels.kernel_source("besa_prob.cu").replace(
        "  __syncthreads();\n  for (int offset", "  if (t < 128) __syncthreads();\n  for (int offset", 1)
    assert src != kernels.kernel_source("besa_prob.cu")
    with pytest.raises(EmulatorError, match=r"__syncthreads\(\) reached by 128 of 256 threads"):
        _besa_prob(EmulatedModule("besa_prob.cu", src))


def test_a_buffer_of_the_wrong_dtype_is_refused():
    mod = EmulatedModule("row_select.cu")
    with pytest.raises(AssertionError, match="int32"):
        mod.launch("row_select", (1,), (T,), torch.rand(1, 8), torch.tensor([3]),  # int64 counts
                   torch.zeros(1, 8, dtype=torch.uint8), 8)


# --------------------------------------------------------------------------- the host launch code

@pytest.fixture
def emulated_device(monkeypatch):
    """Make kernels.py take its GPU path for CPU tensors, with launches run by the emulator (random orders)."""
    modules: dict[str, EmulatedModule] = {}
    launches: list[str] = []

    def launch(name, grid, block, args):
        filename = kernels.KERNELS[name][0]
        mod = modules.setdefault(filename, EmulatedModule(filename))
        launches.append(name)
        mod.launch(name, grid, block, *args, order="random", seed=len(launches))

    monkeypatch.setattr(kernels, "_on_device", lambda t: True)
    monkeypatch.setattr(kernels, "_launch", launch)
    return launches


@pytest.mark.parametrize("max_grid", [kernels.MAX_GRID, 3])  # 3: every grid-stride loop takes several turns
def test_the_host_path_matches_the_cpu_path(emulated_device, monkeypatch, max_grid):
    monkeypatch.setattr(kernels, "MAX_GRID", max_grid)
    g = torch.Generator().manual_seed(11)
    s = torch.randint(0, 30, (6, 520), generator=g).float().t()  # non-contiguous, ties
    counts = torch.randint(0, 7, (520,), generator=g)
    assert torch.equal(kernels.row_mask(s, counts), ref.row_mask(s.contiguous(), counts))
    assert torch.equal(kernels.row_mask(s, 3), ref.row_mask(s.contiguous(), torch.tensor(3)))
    m = torch.randn(9, 64, generator=g, dtype=torch.float64)
    assert torch.equal(kernels.nm_mask(m, 2, 4), ref.nm_mask(m.float(), 2, 4))
    assert torch.equal(kernels.nm_mask(m, 5, 16), ref.nm_mask(m.float(), 5, 16))
    w, norm = torch.randn(33, 70, generator=g, dtype=torch.bfloat16), torch.rand(70, generator=g)
    assert torch.equal(kernels.wanda_scores(w, norm), ref.wanda_scores(w, norm))
    x = torch.randn(2, 300, 40, generator=g)  # (batch, tokens, features): 600 tokens = 3 chunks
    got = kernels.accumulate_sq_norm(x, torch.full((40,), 1.0))
    assert torch.allclose(got, 1.0 + (x.double() ** 2).sum((0, 1)).float(), rtol=1e-5)
    scores = torch.rand(3000, generator=g) ** 3
    total, count = kernels.score_sum_and_count(scores, threshold=0.5)
    assert total == pytest.approx(float(scores.double().sum()), rel=1e-9)
    assert count == int((scores > 0.5).sum())
    ranks = torch.stack([torch.randperm(300, generator=g) for _ in range(4)])  # int64: the host converts
    cands = torch.linspace(1.0, 0.0, 51)
    for probs in (torch.softmax(torch.randn(4, 51, generator=g), -1), torch.softmax(torch.randn(51, generator=g), 0)):
        assert torch.allclose(kernels.besa_keep_prob(ranks, probs, cands),
                              ref.besa_keep_prob(ranks, probs.reshape(-1, 51), cands), atol=1e-5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        wd = torch.randn(40, 33, generator=g).to(dtype)
        mask = torch.rand(40, 33, generator=g) < 0.5
        expected = wd.masked_fill(mask, 0)
        kernels.apply_mask(wd, mask)
        assert torch.equal(wd, expected)
    assert set(emulated_device) == set(kernels.KERNELS)  # every kernel was launched by the host code
