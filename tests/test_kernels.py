"""CUDA kernels without a GPU: NVRTC/nvcc compile checks, and the unmodified sources executed on the CPU
through the CUDA-emulation header, compared with the torch reference. GPU tests skip without a device."""

import shutil
import subprocess

import pytest
import torch
from emu.harness import EmulatedModule

from workbench.backend import kernels
from workbench.backend import reference as ref

FILES = [p.name for p in kernels.kernel_files()]
T = 256


def test_every_kernel_file_is_known_and_every_kernel_has_a_file():
    assert set(FILES) == {f for f, _ in kernels.KERNELS.values()}
    assert len(FILES) == 7


# --------------------------------------------------------------------------- compile checks

@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("filename", FILES)
def test_compiles_with_nvrtc(filename, arch):
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(kernels.kernel_source(filename), filename, [], [])
    try:
        nvrtc.compileProgram(prog, [f"--gpu-architecture=compute_{arch}", "--std=c++17"])
    except nvrtc.NVRTCError as err:
        pytest.fail(f"{filename} sm_{arch}: {err}\n{nvrtc.getProgramLog(prog)}")
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for name, (f, _) in kernels.KERNELS.items():
        if f == filename:
            assert f".entry {name}(" in ptx


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed (NVRTC check above still runs)")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("filename", FILES)
def test_compiles_with_nvcc(filename, arch, tmp_path):
    res = subprocess.run(["nvcc", "-ptx", f"-arch=sm_{arch}", "-o", str(tmp_path / "k.ptx"),
                          str(kernels.KERNEL_DIR / filename)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- emulated execution

@pytest.fixture(scope="module")
def emu():
    return {f: EmulatedModule(f) for f in FILES}


def emu_row_select(mod, scores, counts):
    rows, cols = scores.shape
    out = torch.zeros(rows, cols, dtype=torch.uint8)
    mod.launch("row_select", (rows,), (T,), scores.float().contiguous(), counts.to(torch.int32).contiguous(), out,
               cols)
    return out.bool()


ROW_CASES = {
    "random": lambda g: (torch.randn(6, 300, generator=g), torch.randint(0, 301, (6,), generator=g)),
    "length_1": lambda g: (torch.randn(5, 1, generator=g), torch.tensor([0, 1, 0, 1, 1])),
    "k_0_and_k_full": lambda g: (torch.randn(2, 70, generator=g), torch.tensor([0, 70])),
    "ties": lambda g: (torch.randint(0, 4, (4, 600), generator=g).float(), torch.tensor([1, 150, 301, 599])),
    "all_equal": lambda g: (torch.full((2, 257), 0.5), torch.tensor([3, 256])),
    "signed_zero_negative": lambda g: (torch.tensor([[0.0, -0.0, -1.0, 2.0, -0.0, 0.0, -3.0, 1.0]]),
                                       torch.tensor([4])),
    "longer_than_block": lambda g: (torch.rand(3, 1000, generator=g), torch.tensor([10, 500, 999])),
    "longer_than_cache": lambda g: (torch.rand(1, 9000, generator=g), torch.tensor([4500])),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_row_select_matches_reference(emu, case):
    scores, counts = ROW_CASES[case](torch.Generator().manual_seed(0))
    got = emu_row_select(emu["row_select.cu"], scores, counts)
    assert torch.equal(got, ref.row_mask(scores, counts))


@pytest.mark.parametrize("n,m,cols", [(2, 4, 64), (4, 8, 40), (1, 32, 32), (31, 32, 64), (2, 4, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_nm_mask_matches_reference(emu, n, m, cols, ties):
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 3, (5, cols), generator=g).float() if ties else torch.randn(5, cols, generator=g)
    out = torch.zeros(5, cols, dtype=torch.uint8)
    groups = 5 * cols // m
    emu["nm_mask.cu"].launch("nm_mask", ((groups + T - 1) // T,), (T,), s, out, groups, n, m)
    assert torch.equal(out.bool(), ref.nm_mask(s, n, m))


@pytest.mark.parametrize("tokens,features,chunk", [(37, 5, 8), (300, 600, 256), (1, 1, 1)])
def test_sq_norm_matches_reference(emu, tokens, features, chunk):
    x = torch.randn(tokens, features, generator=torch.Generator().manual_seed(2))
    out = torch.full((features,), 0.5)  # accumulates onto what is there
    grid = ((features + T - 1) // T, (tokens + chunk - 1) // chunk)
    emu["sq_norm.cu"].launch("accumulate_sq_norm", grid, (T,), x, out, tokens, features, chunk)
    assert torch.allclose(out, 0.5 + (x.double() ** 2).sum(0).float(), rtol=1e-5)


def test_wanda_scores_match_reference_with_a_grid_stride(emu):
    g = torch.Generator().manual_seed(3)
    w, norm = torch.randn(33, 70, generator=g), torch.rand(70, generator=g)
    out = torch.empty(33, 70)
    emu["wanda_scores.cu"].launch("wanda_scores", (3,), (T,), w, norm, out, w.numel(), 70)  # 3 blocks < n/256
    assert torch.equal(out, w.abs() * norm[None, :])


@pytest.mark.parametrize("n", [1, 255, 257, 10_000])
def test_outlier_two_stage_reduction(emu, n):
    s = torch.rand(n, generator=torch.Generator().manual_seed(4)) ** 4
    mod, blocks = emu["outlier_count.cu"], min((n + T - 1) // T, 5)
    partial, out = torch.zeros(blocks, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    mod.launch("block_reduce", (blocks,), (T,), s, n, 0, 0.0, partial)
    mod.launch("final_reduce", (1,), (T,), partial, blocks, out)
    total = float(out[0])
    assert total == pytest.approx(float(s.double().sum()), rel=1e-12)
    threshold = 3 * total / n
    mod.launch("block_reduce", (blocks,), (T,), s, n, 1, threshold, partial)
    mod.launch("final_reduce", (1,), (T,), partial, blocks, out)
    assert int(out[0]) == int((s > torch.tensor(threshold, dtype=torch.float32)).sum())


def _besa_oracle(ranks, probs, cands):
    rows, cols = ranks.shape
    out = torch.empty(rows, cols)
    for r in range(rows):
        p = probs[r if probs.shape[0] > 1 else 0]
        for c in range(cols):
            out[r, c] = 1 - sum(float(p[k]) for k in range(len(cands)) if ranks[r, c] < cols * float(cands[k]))
    return out


@pytest.mark.parametrize("rowwise", [True, False])
def test_besa_keep_prob_matches_a_direct_computation(emu, rowwise):
    g = torch.Generator().manual_seed(5)
    rows, cols = 3, 40
    ranks = torch.stack([torch.randperm(cols, generator=g) for _ in range(rows)]).to(torch.int32)
    cands = torch.linspace(1.0, 0.0, 101)
    probs = torch.softmax(torch.sigmoid(torch.randn(rows if rowwise else 1, 101, generator=g)), dim=-1)
    out = torch.empty(rows, cols)
    emu["besa_prob.cu"].launch("besa_keep_prob", (rows,), (T,), ranks, probs.contiguous(),
                               101 if rowwise else 0, cands, 101, out, cols)
    oracle = _besa_oracle(ranks, probs, cands)
    assert torch.allclose(out, oracle, atol=2e-6)
    assert torch.allclose(ref.besa_keep_prob(ranks, probs, cands), oracle, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_mask_any_width(emu, dtype):
    g = torch.Generator().manual_seed(6)
    w = torch.randn(17, 30, generator=g).to(dtype)
    mask = torch.rand(17, 30, generator=g) < 0.4
    expected = w.masked_fill(mask, 0)
    size = w.element_size()
    view = w.view(torch.int32 if size == 4 else torch.int16)
    emu["apply_mask.cu"].launch(f"apply_mask_{8 * size}", (2,), (T,), view, mask.to(torch.uint8), w.numel())
    assert torch.equal(w, expected)


# The emulator's own failure modes (every barrier and atomic removed, races, bounds): test_kernel_emulator.py


# --------------------------------------------------------------------------- backend dispatch and bad input

def test_cpu_dispatch_uses_the_reference_and_makes_inputs_contiguous():
    s = torch.randn(40, 12).t()  # non-contiguous (12, 40)
    assert torch.equal(kernels.row_mask(s, 7), ref.row_mask(s.contiguous(), torch.tensor(7)))
    assert torch.equal(kernels.nm_mask(s.double(), 2, 4), ref.nm_mask(s.contiguous(), 2, 4))
    total, count = kernels.score_sum_and_count(torch.tensor([1.0, 2.0, 9.0]), threshold=3.0)
    assert total == 12.0 and count == 1


@pytest.mark.parametrize("call,match", [
    (lambda: kernels.row_mask(torch.rand(3, 5), torch.tensor([0, 6, 1])), r"counts must lie in \[0, 5\]"),
    (lambda: kernels.row_mask(torch.rand(3, 5), torch.tensor([-1, 0, 1])), r"counts must lie in \[0, 5\]"),
    (lambda: kernels.row_mask(torch.rand(3, 5), torch.tensor([1, 2])), "one entry per row"),
    (lambda: kernels.row_mask(torch.ones(3, 5, dtype=torch.long), 1), "floating-point"),
    (lambda: kernels.row_mask(torch.rand(3, 5), torch.tensor([1.5, 2.0, 0.0])), "integers"),
    (lambda: kernels.nm_mask(torch.rand(3, 6), 2, 4), "not divisible"),
    (lambda: kernels.apply_mask(torch.rand(3, 5), torch.zeros(5, 3, dtype=torch.bool)), "mask shape"),
    (lambda: kernels.wanda_scores(torch.rand(3, 5), torch.rand(4)), "act_norm must have shape"),
    (lambda: kernels.besa_keep_prob(torch.zeros(2, 4, dtype=torch.int32), torch.rand(2, 3),
                                    torch.tensor([0.0, 0.5, 1.0])), "descending"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@gpu
def test_gpu_kernels_match_the_cpu_reference():
    g = torch.Generator().manual_seed(8)
    for rows, cols in [(7, 1), (64, 300), (16, 4096), (4, 11008)]:
        s = torch.randint(0, 50, (rows, cols), generator=g).float()  # many ties
        counts = torch.randint(0, cols + 1, (rows,), generator=g)
        assert torch.equal(kernels.row_mask(s.cuda(), counts.cuda()).cpu(), ref.row_mask(s, counts))
        if cols % 4 == 0:
            assert torch.equal(kernels.nm_mask(s.cuda(), 2, 4).cpu(), ref.nm_mask(s, 2, 4))
    w, norm = torch.randn(128, 512, generator=g), torch.rand(512, generator=g)
    assert torch.allclose(kernels.wanda_scores(w.cuda(), norm.cuda()).cpu(), w.abs() * norm)
    x = torch.randn(1000, 512, generator=g)
    out = kernels.accumulate_sq_norm(x.cuda(), torch.zeros(512, device="cuda")).cpu()
    assert torch.allclose(out, (x ** 2).sum(0), rtol=1e-4)
    total, count = kernels.score_sum_and_count(w.abs().cuda(), threshold=2.0)
    assert total == pytest.approx(float(w.abs().double().sum()), rel=1e-6)
    assert count == int((w.abs() > 2.0).sum())
    ranks = torch.argsort(torch.argsort(torch.rand(32, 576, generator=g), dim=1), dim=1).to(torch.int32)
    cands = torch.linspace(1.0, 0.0, 101)
    probs = torch.softmax(torch.sigmoid(torch.randn(32, 101, generator=g)), -1)
    got = kernels.besa_keep_prob(ranks.cuda(), probs.cuda(), cands).cpu()
    assert torch.allclose(got, ref.besa_keep_prob(ranks, probs, cands), atol=1e-5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        wd = torch.randn(64, 256, generator=g).to(dtype)
        mask = torch.rand(64, 256, generator=g) < 0.5
        on_gpu = wd.cuda()
        kernels.apply_mask(on_gpu, mask.cuda())
        assert torch.equal(on_gpu.cpu(), wd.masked_fill(mask, 0))


@gpu
def test_gpu_prune_matches_cpu_prune():
    from workbench.data import calibration_samples
    from workbench.models import load_model, prunable_linears
    from workbench.prune import prune

    results = {}
    for device in ("cpu", "cuda"):
        model, tok = load_model("tiny-llama", device=device)
        calib = calibration_samples(tok, "embedded", nsamples=4, seqlen=64)
        prune(model, tok, metric="wanda", allocation="uniform", sparsity=0.5, calibration=calib, progress=False)
        results[device] = {n: (lin.weight == 0).cpu() for n, lin in prunable_linears(model).items()}
    agree = sum(torch.equal(results["cpu"][n], results["cuda"][n]) for n in results["cpu"])
    assert agree >= len(results["cpu"]) - 1  # float rounding of activations may flip a boundary weight
