"""Fast loop (reflex policy, numpy fast path) and Mid loop (world model, context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from continuonbrain.hope import VQVAE, FastLoop, FastLoopNumpy, HopeConfig, MidLoop


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


BOUNDS = {"action_low": [-2.0, 0.0], "action_high": [2.0, 1.0]}


def bc_batch(b: int = 64, length: int = 5) -> dict[str, torch.Tensor]:
    """Raw-unit observations; the action depends nonlinearly on the observation and on its
    change since the previous step (so the SSM memory matters); a few left-padded windows."""
    obs = torch.randn(b, length, 10) * 2 + 1
    prev = torch.cat([obs[:, :1], obs[:, :-1]], 1)
    raw = torch.tanh(obs @ torch.randn(10, 2) / 3 + (obs - prev)[..., :2] @ torch.randn(2, 2))
    action = raw * torch.tensor([2.0, 0.5]) + torch.tensor([0.0, 0.5])
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[:8, :2] = False
    obs[~mask] = 0.0
    action[~mask] = 0.0
    return {"observation": obs, "action": action, "mask": mask}


def perturb(module: torch.nn.Module, scale: float = 0.2) -> None:
    """Move every parameter off its initial value (zero-init gates and heads hide bugs)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


# --------------------------------------------------------------------------- fast loop


def test_fast_loop_overfits_a_small_bc_dataset() -> None:
    fast = FastLoop(HopeConfig(obs_dim=10, action_dim=2, **BOUNDS))
    batch = bc_batch()
    fast.fit_normalizer(batch["observation"], batch["mask"])
    opt = torch.optim.Adam(fast.parameters(), lr=1e-2)
    first = float(fast.loss(batch)["bc_mse"])
    for _ in range(100):
        losses = fast.loss(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    last = float(fast.loss(batch)["bc_mse"])
    assert last < 0.1 * first
    assert set(losses) == {"loss", "bc_mse", "abs_err"}


def test_fast_loop_param_count_is_pi_sized() -> None:
    n = sum(p.numel() for p in FastLoop(HopeConfig()).parameters())
    assert 10_000 <= n <= 60_000


def test_actions_never_leave_the_bounds() -> None:
    cfg = HopeConfig(obs_dim=10, action_dim=2, **BOUNDS)
    fast = FastLoop(cfg)
    perturb(fast, 5.0)
    obs = torch.randn(8, 20, 10) * 1e4
    with torch.no_grad():
        a = fast(obs)
    low, high = torch.tensor(BOUNDS["action_low"]), torch.tensor(BOUNDS["action_high"])
    assert torch.all(a >= low) and torch.all(a <= high)
    fnp = fast.export_numpy()
    state = fnp.init_state()
    for t in range(20):
        act, state = fnp.step(obs[0, t].numpy(), state)
        assert np.all(act >= low.numpy()) and np.all(act <= high.numpy())


def test_step_matches_forward_with_context_and_padding() -> None:
    cfg = HopeConfig(obs_dim=10, action_dim=2, **BOUNDS)
    fast = FastLoop(cfg).eval()
    perturb(fast)
    fast.fit_normalizer(torch.randn(100, 10) * 3 + 1)
    obs = torch.randn(3, 12, 10) * 3
    ctx = torch.rand(3, 12, cfg.context_dim) * 2 - 1
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :4] = False
    with torch.no_grad():
        window = fast(obs, ctx, mask)
        for b in range(3):
            state = None
            for t in range(12):
                if not mask[b, t]:
                    continue
                a, state = fast.step(obs[b, t], state, ctx[b, t])
                torch.testing.assert_close(a, window[b, t], atol=1e-5, rtol=1e-5)


def test_context_is_optional_and_matters() -> None:
    cfg = HopeConfig(obs_dim=10, action_dim=2)
    fast = FastLoop(cfg).eval()
    perturb(fast)
    obs = torch.randn(2, 5, 10)
    with torch.no_grad():
        none = fast(obs)
        zeros = fast(obs, torch.zeros(2, cfg.context_dim))  # [B, C] is held over the window
        ones = fast(obs, torch.ones(2, cfg.context_dim))
    torch.testing.assert_close(none, zeros)
    assert not torch.allclose(none, ones)
    no_ctx = FastLoop(HopeConfig(obs_dim=10, action_dim=2, fast={"use_context": False}))
    assert no_ctx.in_proj.in_features == 10


def test_burn_in_steps_are_not_scored() -> None:
    fast = FastLoop(HopeConfig(obs_dim=10, action_dim=2, **BOUNDS))
    batch = bc_batch(length=8)
    spoiled = {**batch, "action": batch["action"].clone()}
    spoiled["action"][:, :3] = 7.0
    assert float(fast.loss(spoiled, burn_in=3)["bc_mse"]) == pytest.approx(float(fast.loss(batch, burn_in=3)["bc_mse"]))
    assert float(fast.loss(spoiled)["bc_mse"]) != pytest.approx(float(fast.loss(batch)["bc_mse"]))


@pytest.mark.parametrize("bounds", [{}, BOUNDS])
def test_numpy_fast_path_matches_torch_step(bounds: dict) -> None:
    cfg = HopeConfig(obs_dim=10, action_dim=2, **bounds)
    fast = FastLoop(cfg).eval()
    perturb(fast)
    fast.fit_normalizer(torch.randn(200, 10) * 4 - 2)
    fnp = FastLoopNumpy.from_torch(fast)
    obs = torch.randn(2, 30, 10) * 4 - 2
    ctx = torch.rand(2, cfg.context_dim) * 2 - 1
    with torch.no_grad():
        state, want = None, []
        for t in range(30):
            a, state = fast.step(obs[:, t], state, ctx if t >= 10 else None)  # context arrives at t = 10
            want.append(a)
    want_np = torch.stack(want, 1).numpy()
    s1 = fnp.init_state()
    s2 = fnp.init_state(batch_size=2)
    for t in range(30):
        a1, s1 = fnp.step(obs[0, t].numpy(), s1, ctx[0].numpy() if t == 10 else None)
        a2, s2 = fnp.step(obs[:, t].numpy(), s2, ctx.numpy() if t == 10 else None)
        np.testing.assert_allclose(a1, want_np[0, t], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(a2, want_np[:, t], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        _, tstate = fast.step(obs[:, 0], None)
    fresh = fnp.init_state()
    fnp.step(obs[0, 0].numpy(), fresh)
    np.testing.assert_allclose(fresh.h[0], tstate[0][0].numpy(), atol=1e-5, rtol=1e-5)


def test_numpy_state_copy_is_independent() -> None:
    fast = FastLoop(HopeConfig(obs_dim=10, action_dim=2)).eval()
    perturb(fast)
    fnp = fast.export_numpy()
    obs = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    s = fnp.init_state()
    fnp.step(obs[0], s)
    snap = s.copy()
    a1, _ = fnp.step(obs[1], s)
    a2, _ = fnp.step(obs[1], snap)
    np.testing.assert_array_equal(a1, a2)


# --------------------------------------------------------------------------- mid loop


MID_CFG = HopeConfig(
    obs_dim=4,
    action_dim=1,
    mid_every=2,
    vqvae={"codebook_size": 16, "n_tokens": 2},
    mid={"d_model": 32, "d_state": 32},
)


def token_batch(b: int = 32, length: int = 40) -> dict[str, torch.Tensor]:
    """Token 0 moves +1/-1 (mod 16) per Mid step with the sign of the held action; token 1
    is constant per sequence. Codes and actions at control rate (``mid_every`` = 2)."""
    k = MID_CFG.mid_every
    n = length // k
    sign = torch.randint(0, 2, (b, n)) * 2 - 1
    action = sign.repeat_interleave(k, 1)[..., None].float() * 0.8
    tok0 = torch.cumsum(torch.cat([torch.randint(0, 16, (b, 1)), sign[:, :-1]], 1), 1) % 16
    tok1 = torch.randint(0, 16, (b, 1)).expand(b, n)
    codes = torch.stack([tok0, tok1], -1).repeat_interleave(k, 1)
    return {"codes": codes, "action": action}


def test_mid_loop_learns_action_conditioned_next_tokens() -> None:
    mid = MidLoop(MID_CFG)
    opt = torch.optim.Adam(mid.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        out = mid.loss(token_batch())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = float(out["token_ce"]) if first is None else first
    out = mid(token_batch())
    assert float(out["token_ce"]) < 0.3 * first
    assert float(out["token_acc"]) > 0.6
    assert out["context"].shape == (32, 20, MID_CFG.mid.context_dim)
    assert out["context_steps"].shape == (32, 40, MID_CFG.mid.context_dim)
    torch.testing.assert_close(out["context_steps"][:, 1], out["context"][:, 0])
    # imagination: open loop with the true action signs reproduces the token-0 walk
    batch = token_batch(b=4)
    k = MID_CFG.mid_every
    acts = batch["action"][:, ::k]
    with torch.no_grad():
        rollout = mid.imagine(batch["codes"][:, 0], acts[:, :5])
    assert rollout["codes"].shape == (4, 6, 2) and rollout["logits"].shape == (4, 5, 2, 16)
    with torch.no_grad():
        first = mid(batch)["logits"][:, 0].argmax(-1)
    torch.testing.assert_close(rollout["codes"][:, 1], first)  # one imagined step = the model's prediction
    assert float((rollout["codes"][:, 1:, 1] == batch["codes"][:, :1, 1]).float().mean()) > 0.8  # token 1 is kept


def test_mid_step_and_predict_next_match_the_window_forward() -> None:
    mid = MidLoop(MID_CFG).eval()
    perturb(mid)
    batch = token_batch(b=3, length=12)
    batch = {"codes": batch["codes"][:, :11], "action": torch.rand(3, 11, 1) * 2 - 1}  # the last interval is partial
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[2, :3] = False  # padded start: first real tick is step 4
    batch["mask"] = mask
    k = MID_CFG.mid_every
    with torch.no_grad():
        out = mid(batch)
        for b in (0, 2):
            state = None
            ticks = [t for t in range(0, 11, k) if mask[b, t]]
            for j, t in enumerate(ticks):
                real = mask[b, max(t - k, 0) : t]
                prev = batch["action"][b : b + 1, max(t - k, 0) : t][:, real].mean(1) if j and real.any() else None
                if j == 0 and t > 0:  # the tick before was padding, partially real steps count
                    seg = batch["action"][b, t - k : t][mask[b, t - k : t]]
                    prev = seg.mean(0, keepdim=True) if len(seg) else None
                nxt = batch["action"][b : b + 1, t : t + k].mean(1)
                ctx, state = mid.step(batch["codes"][b : b + 1, t], state, prev)
                torch.testing.assert_close(ctx[0], out["context"][b, t // k], atol=1e-5, rtol=1e-5)
                if t // k < out["logits"].shape[1]:
                    logits = mid.next_logits(state, nxt)
                    torch.testing.assert_close(logits[0], out["logits"][b, t // k], atol=1e-4, rtol=1e-4)
        logits, state = mid.predict_next(batch["codes"][:1, 0], batch["action"][:1, 0:2].mean(1))
        torch.testing.assert_close(logits[0], out["logits"][0, 0], atol=1e-4, rtol=1e-4)


def test_mid_loop_tokenizes_with_a_vqvae_when_codes_are_absent() -> None:
    vq = VQVAE(MID_CFG).eval()
    mid = MidLoop(MID_CFG)
    obs, action = torch.randn(2, 12, 4), torch.rand(2, 12, 1)
    with pytest.raises(ValueError, match="codes"):
        mid.loss({"observation": obs, "action": action})
    out = mid.loss({"observation": obs, "action": action}, vqvae=vq)
    codes, _ = vq.encode(obs)
    ref = mid.loss({"codes": codes, "action": action})
    torch.testing.assert_close(out["loss"], ref["loss"])
    out["loss"].backward()
    assert all(p.grad is None for p in vq.parameters())


def test_mid_loop_window_without_targets_gives_zero_loss() -> None:
    mid = MidLoop(MID_CFG)
    out = mid.loss({"codes": torch.zeros(2, 2, 2, dtype=torch.long), "action": torch.zeros(2, 2, 1)})
    assert float(out["token_ce"]) == 0.0 and out["loss"].requires_grad
