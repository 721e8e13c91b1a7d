"""Classifier heads: probabilities, state round trip, the scriptable module, class restriction."""

import pytest
import torch

from cmm_cache.errors import CmmError
from cmm_cache.heads.base import HEADS, load_head, normalize_rows
from cmm_cache.heads.cmm import CMMHead, Model, fuse, logits
from cmm_cache.heads.zero_shot import ZeroShotHead


def _cmm(alpha=0.7, **kw):
    g = torch.Generator().manual_seed(0)
    C, d = 6, 8
    T0 = normalize_rows(torch.randn(C, d, generator=g))
    W = None if kw.pop("no_map", False) else 0.1 * torch.randn(d, d, generator=g)
    return CMMHead(Model(W, T0 + 0.2 * torch.randn(C, d, generator=g), T0, **kw), alpha)


HEAD_CASES = {
    "cmm-prob": lambda: _cmm(),
    "cmm-logit": lambda: _cmm(fusion="logit"),
    "cmm-only": lambda: _cmm(cmm_only=True),
    "cmm-no-map-normT": lambda: _cmm(no_map=True, normalize_T_in_s=True),
    "zero-shot": lambda: ZeroShotHead(_cmm().model.T0),
}


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_head_probs_state_and_module_agree(case):
    head = HEAD_CASES[case]()
    x = normalize_rows(torch.randn(11, 8, generator=torch.Generator().manual_seed(3)))
    p = head.probs(x)
    torch.testing.assert_close(p.sum(1), torch.ones(11))
    assert torch.equal(p.argmax(1), head.logits(x).argmax(1))
    arrays, params = head.state()
    again = load_head(head.kind, arrays, params)
    torch.testing.assert_close(again.probs(x), p)
    exported = torch.export.export(head.module(), (x,)).module()  # what `export` ships: plain torch
    torch.testing.assert_close(exported(3.0 * x), p, rtol=1e-5, atol=1e-6)  # the module normalizes its input
    sub = torch.tensor([4, 1, 2])
    torch.testing.assert_close(head.logits(x, sub), head.logits(x, sub))
    assert head.logits(x, sub).shape == (11, 3)
    torch.testing.assert_close(head.probs(x, sub).sum(1), torch.ones(11))


def test_cmm_head_is_the_papers_fusion():
    head = _cmm(alpha=0.4)
    x = normalize_rows(torch.randn(5, 8))
    cmm, clip = logits(head.model, x)
    torch.testing.assert_close(head.logits(x), fuse(cmm, clip, 0.4, "prob"))
    torch.testing.assert_close(head.probs(x), (0.4 * cmm.softmax(-1) + clip.softmax(-1)) / 1.4)
    parts = head.all_logits(x)
    torch.testing.assert_close(parts["cmm_only"], cmm)
    torch.testing.assert_close(parts["zero_shot"], clip)
    assert _cmm(alpha=0.4, cmm_only=True).alpha is None


def test_unknown_head_kind_lists_the_known_ones():
    with pytest.raises(CmmError, match="cmm"):
        load_head("no-such-head", {}, {})
    assert {"cmm", "zero-shot"} <= set(HEADS)
