"""The diagonal SSM: parallel scan == step-by-step recurrence, masks, stable decays."""

from __future__ import annotations

import math

import pytest
import torch

from continuonbrain.hope.ssm import DiagonalSSM, SSMStack, linear_scan


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _sequential(log_a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor | None, mask: torch.Tensor | None):
    a = torch.exp(log_a)
    h = torch.zeros(u.shape[0], u.shape[2]) if h0 is None else h0
    out = []
    for t in range(u.shape[1]):
        new = a * h + u[:, t]
        if mask is not None:
            new = torch.where(mask[:, t, None], new, h)
        h = new
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("length", [1, 2, 5, 37, 64, 100])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_linear_scan_matches_the_recurrence(length: int, with_h0: bool, with_mask: bool) -> None:
    log_a = -torch.exp(torch.randn(6))
    u = torch.randn(3, length, 6)
    h0 = torch.randn(3, 6) if with_h0 else None
    mask = torch.rand(3, length) > 0.3 if with_mask else None
    got = linear_scan(log_a, u, h0, mask)
    want = _sequential(log_a, u, h0, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_stack_parallel_forward_equals_stepping_with_initial_state() -> None:
    stack = SSMStack(16, 24, 3, tau_min=0.5, tau_max=80.0, tau_cap=200.0)
    x = torch.randn(4, 50, 16)
    h0 = [torch.randn(4, 24) for _ in range(3)]
    with torch.no_grad():
        y, h_last = stack(x, h0)
        state, ys = h0, []
        for t in range(x.shape[1]):
            yt, state = stack.step(x[:, t], state)
            ys.append(yt)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-5, rtol=1e-5)
    for a, b in zip(h_last, state, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_left_padding_leaves_the_state_at_zero() -> None:
    """A window padded at the start (mask False) reaches its first real step with a zero
    state: the real steps equal stepping from a fresh state through the real steps only."""
    stack = SSMStack(8, 12, 2, tau_min=1.0, tau_max=20.0)
    x = torch.randn(2, 10, 8)
    pads = [3, 0]
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :3] = False
    x[0, :3] = 0.0  # the data layer pads with zeros, but any value must do:
    x[0, :2] = 123.0
    with torch.no_grad():
        y, h_last = stack(x, None, mask)
        for b, pad in enumerate(pads):
            state = None
            for t in range(pad, 10):
                yt, state = stack.step(x[b : b + 1, t], state)
                torch.testing.assert_close(y[b, t], yt[0], atol=1e-5, rtol=1e-5)
            for a, s in zip(h_last, state, strict=True):
                torch.testing.assert_close(a[b], s[0], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(y).all()


def test_masked_step_holds_the_state_and_outputs_zero() -> None:
    ssm = DiagonalSSM(4, 5)
    h = torch.randn(2, 5)
    y, h2 = ssm.step(torch.randn(2, 4), h, mask=torch.tensor([False, True]))
    torch.testing.assert_close(h2[0], h[0])
    assert torch.all(y[0] == 0)
    assert not torch.allclose(h2[1], h[1])


def test_decay_stays_in_open_unit_interval_and_respects_the_cap() -> None:
    ssm = DiagonalSSM(4, 8, tau_min=1.0, tau_max=10.0, tau_cap=20.0)
    taus = ssm.time_constants().detach()
    assert taus.min() == pytest.approx(1.0, rel=1e-4)
    assert taus.max() == pytest.approx(10.0, rel=1e-4)
    with torch.no_grad():
        ssm.nu.copy_(torch.tensor([-50.0, -5.0, 0.0, 1.0, 3.0, 5.0, 50.0, 80.0]))
    a = ssm.decay()
    assert torch.all(a >= 0)  # (exp underflows to 0 for huge rates: still a valid decay)
    assert torch.all(a < 1)
    assert a.max() <= math.exp(-1 / 20.0) + 1e-7
    assert torch.all(torch.isfinite(ssm.time_constants()))


def test_gradients_flow_through_the_scan() -> None:
    stack = SSMStack(8, 8, 2, tau_min=1.0, tau_max=30.0)
    x = torch.randn(2, 16, 8, requires_grad=True)
    y, _ = stack(x)
    y.pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in stack.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_rectangular_ssm_shapes() -> None:
    ssm = DiagonalSSM(3, 7, 5)
    y, h = ssm(torch.randn(2, 9, 3))
    assert y.shape == (2, 9, 5) and h.shape == (2, 7)
    y1, h1 = ssm.step(torch.randn(2, 3))
    assert y1.shape == (2, 5) and h1.shape == (2, 7)
