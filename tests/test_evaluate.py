"""Perplexity: the paper protocol against an independent, obvious computation."""

import math

import pytest
import torch

from workbench.data import tokenize
from workbench.evaluate import perplexity, perplexity_from_ids


def _obvious_ppl(model, ids, seqlen):
    """Token by token: log-softmax of each position, summed per window, averaged the reference way."""
    n = ids.numel() // seqlen
    total = 0.0
    for w in range(n):
        window = ids[w * seqlen:(w + 1) * seqlen]
        with torch.no_grad():
            logp = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
        nll = -sum(logp[t, window[t + 1]].item() for t in range(seqlen - 1)) / (seqlen - 1)
        total += nll * seqlen
    return math.exp(total / (n * seqlen))


def test_protocol_matches_an_independent_loop(tiny, text_file):
    model, tok = tiny
    ids = tokenize(tok, text_file.read_text())[:1000]
    for seqlen in (64, 128):
        expected = _obvious_ppl(model, ids, seqlen)
        got = perplexity_from_ids(model, ids, seqlen, progress=False)
        assert got == pytest.approx(expected, rel=1e-5)


def test_batching_does_not_change_the_value_and_remainder_is_dropped(tiny, text_file):
    model, tok = tiny
    ids = tokenize(tok, text_file.read_text())[:1000]
    one = perplexity_from_ids(model, ids, 100, batch_size=1, progress=False)
    four = perplexity_from_ids(model, ids, 100, batch_size=4, progress=False)
    assert four == pytest.approx(one, rel=1e-5)
    # 1000..1099 tokens all give the same 10 windows
    assert perplexity_from_ids(model, tokenize(tok, text_file.read_text())[:1099], 100,
                               progress=False) == pytest.approx(one, rel=1e-6)


def test_perplexity_record_fields(tiny, text_file):
    model, tok = tiny
    res = perplexity(model, tok, dataset=str(text_file), seqlen=128, batch_size=2, progress=False)
    n_tokens = tokenize(tok, text_file.read_text()).numel()
    assert res.n_windows == n_tokens // 128 and res.n_tokens == res.n_windows * 128
    assert res.seqlen == 128 and len(res.text_sha256) == 64
    assert 1.0 < res.ppl < 1e4  # a random model over 258 tokens: near the vocabulary size at most
    assert res.to_dict()["protocol"].startswith("paper")


@pytest.mark.parametrize("seqlen,match", [(1, "seqlen=1"), (0, "seqlen=0"), (10**7, "larger than")])
def test_bad_seqlen(tiny, text_file, seqlen, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        perplexity(model, tok, dataset=str(text_file), seqlen=seqlen, progress=False)


def test_bad_batch_size(tiny, text_file):
    model, tok = tiny
    with pytest.raises(ValueError, match="batch_size=0"):
        perplexity(model, tok, dataset=str(text_file), seqlen=64, batch_size=0, progress=False)


@pytest.mark.slow
def test_embedded_model_dense_perplexity(smollm):
    model, tok = smollm
    res = perplexity(model, tok, dataset="embedded", split="validation", seqlen=512, progress=False)
    # a pretrained model on English documentation: far below a random model's ~49152
    assert 2.0 < res.ppl < 60.0, res
    assert res.n_windows >= 10


def test_perplexity_reads_the_split_it_is_given_at_the_default_seqlen(tiny):
    from workbench.data import DEFAULT_DATASET, eval_tokens

    model, tok = tiny
    res = perplexity(model, tok, "embedded", "validation", progress=False)  # seqlen: 512 off the paper datasets
    ids, _ = eval_tokens(tok, "embedded", "validation")
    assert not torch.equal(ids, eval_tokens(tok, "embedded", "test")[0])
    assert (res.dataset, res.split, res.seqlen, res.n_windows) == ("embedded", "validation", 512, ids.numel() // 512)
    assert res.ppl == pytest.approx(perplexity_from_ids(model, ids, 512, progress=False), rel=1e-9)
    default = perplexity(model, tok, progress=False)  # the defaults: the default dataset's test split
    assert (default.dataset, default.split, default.seqlen) == (DEFAULT_DATASET, "test", 512)
    assert default.ppl != res.ppl


def test_perplexity_on_c4_reads_256_windows_of_the_validation_shard(tiny, monkeypatch):
    from hub_standins import standin_hub

    from workbench import data

    calls = []
    monkeypatch.setattr(data, "_load_dataset", standin_hub(calls))
    model, tok = tiny
    res = perplexity(model, tok, "c4", "test", seqlen=16, progress=False)
    assert [c[2] for c in calls] == ["validation"]
    assert (res.n_windows, res.n_tokens, res.dataset, res.split) == (data.C4_EVAL_WINDOWS, 256 * 16, "c4", "test")


def test_paper_datasets_default_to_seqlen_2048(tiny, monkeypatch):
    from hub_standins import standin_hub

    from workbench import data, evaluate

    monkeypatch.setattr(data, "_load_dataset", standin_hub([]))
    seen = []
    monkeypatch.setattr(evaluate, "perplexity_from_ids", lambda model, ids, seqlen, **kw: seen.append(seqlen) or 1.0)
    model, tok = tiny
    res = perplexity(model, tok, "c4", "test", progress=False)
    assert seen == [2048] and res.seqlen == 2048  # the papers' windows (the scoring itself is tested above)


def test_seqlen_two_is_the_smallest_window_and_bools_are_refused(tiny, text_file):
    model, tok = tiny
    ids = tokenize(tok, text_file.read_text())[:100]
    assert perplexity_from_ids(model, ids, 2, progress=False) > 1.0  # one predicted token per window
    for bad in (True, 2.0, "64"):
        with pytest.raises(ValueError, match=rf"^seqlen={bad!r} must be an integer >= 2$"):
            perplexity(model, tok, dataset=str(text_file), seqlen=bad, progress=False)
