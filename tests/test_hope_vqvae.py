"""VQ-VAE tokenizer: learns structured data, keeps its codebook alive, handles images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from continuonbrain.hope import VQVAE, HopeConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def arm_states(n: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Points on the state manifold of a two-link arm, in raw (non-standardised) units:
    joint angle cos/sin and the tip position (offset and scaled)."""
    q = torch.rand(n, 2, generator=gen) * 2 * math.pi
    tip_x = torch.cos(q[:, 0]) + 0.8 * torch.cos(q.sum(1))
    tip_y = torch.sin(q[:, 0]) + 0.8 * torch.sin(q.sum(1))
    return torch.cat([torch.cos(q), torch.sin(q), 3 * torch.stack([tip_x, tip_y], 1) + 1], 1)


def test_vqvae_learns_arm_states_and_uses_many_codes() -> None:
    vq = VQVAE(HopeConfig(obs_dim=6, action_dim=2))
    vq.fit_normalizer(arm_states(2000))
    assert vq.normalizer.mean[4] == pytest.approx(1.0, abs=0.2)
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    vq.train()
    first = None
    for _ in range(60):
        losses = vq(arm_states(128)).losses
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["recon"]) if first is None else first
    vq.eval()
    with torch.no_grad():
        out = vq(arm_states(1000))
    assert float(out.losses["recon"]) < 0.3 * first
    assert float(out.losses["perplexity"]) > 8.0
    assert set(out.losses) >= {"recon", "commit", "perplexity", "loss", "codes_used", "dead_restarts"}
    # reconstructions come back in raw units
    x = arm_states(500)
    with torch.no_grad():
        codes, z_q = vq.encode(x)
        decoded = vq.decode(codes).observation
    assert codes.shape == (500, 4) and codes.dtype == torch.long and z_q.shape == (500, 4, 8)
    assert decoded is not None and float((decoded - x).abs().mean()) < 0.5


def test_encode_and_eval_forward_never_touch_the_codebook() -> None:
    vq = VQVAE(HopeConfig(obs_dim=6, action_dim=2))
    vq.train()
    vq(arm_states(64))  # initialises the codebook from data
    before = {k: v.clone() for k, v in vq.quantizer.state_dict().items()}
    vq.encode(arm_states(64))
    vq.eval()
    vq(arm_states(64))
    for k, v in vq.quantizer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_dead_codes_are_restarted_from_encoder_outputs() -> None:
    cfg = HopeConfig(obs_dim=6, action_dim=2, vqvae={"codebook_size": 32, "dead_code_steps": 3})
    vq = VQVAE(cfg)
    vq.train()
    vq(arm_states(64))
    with torch.no_grad():  # park half the codebook far from any encoder output
        vq.quantizer.embed[16:] = 1e3
        vq.quantizer.embed_sum[16:] = 1e3
    restarted = 0.0
    for _ in range(4):
        with torch.no_grad():
            restarted += float(vq(arm_states(64)).losses["dead_restarts"])
    assert restarted >= 16
    assert float(vq.quantizer.embed[16:].abs().max()) < 100.0
    assert float(vq.quantizer.code_age.max()) < 3


def test_ema_codebook_tracks_cluster_means() -> None:
    """With a fixed (frozen) encoder the EMA codebook converges to the means of its clusters."""
    cfg = HopeConfig(obs_dim=2, action_dim=1, vqvae={"codebook_size": 4, "n_tokens": 1, "code_dim": 2, "decay": 0.8})
    vq = VQVAE(cfg)
    vq.train()
    centers = torch.tensor([[-4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, 4.0]])
    data = lambda n: centers[torch.randint(0, 4, (n,))] + 0.1 * torch.randn(n, 2)  # noqa: E731
    with torch.no_grad():
        for _ in range(40):
            z = data(256)
            vq.quantizer(z)
        z = data(1000)
        _, _, stats = vq.quantizer(z)
    assert float(stats["perplexity"]) > 3.5
    emb = vq.quantizer.embed
    for c in centers:
        assert float((emb - c).norm(dim=1).min()) < 0.3


def test_images_and_dict_observations() -> None:
    cfg = HopeConfig(
        obs_dim=3,
        action_dim=2,
        state_keys=["s"],
        image_keys=["cam"],
        image_shapes={"cam": [16, 16, 3]},
        vqvae={"conv_channels": [8, 16], "image_feature_dim": 32, "hidden_dim": 64, "codebook_size": 64},
    )
    vq = VQVAE(cfg)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.randint(0, 12, (n, 2))
        img = torch.zeros(n, 16, 16, 3, dtype=torch.uint8)
        for i in range(n):
            img[i, pos[i, 0] : pos[i, 0] + 4, pos[i, 1] : pos[i, 1] + 4] = 255
        return torch.cat([pos.float(), torch.ones(n, 1)], 1), img

    vq.fit_normalizer(data(256)[0])
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    vq.train()
    first = None
    for _ in range(30):
        obs, img = data(64)
        losses = vq(obs, {"cam": img}).losses
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["image_recon"]) if first is None else first
    assert float(losses["image_recon"]) < 0.6 * first
    obs, img = data(6)
    codes, _ = vq.encode(obs.reshape(2, 3, 3), {"cam": img.reshape(2, 3, 16, 16, 3)})
    assert codes.shape == (2, 3, 4)
    decoded = vq.decode(codes)
    assert decoded.images["cam"].shape == (2, 3, 16, 16, 3) and decoded.images["cam"].dtype == torch.uint8
    assert decoded.observation is not None and decoded.observation.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="image 'cam' is missing"):
        vq.encode(obs)
    with pytest.raises(ValueError, match="expected"):
        vq.encode(obs, {"cam": torch.zeros(6, 8, 8, 3, dtype=torch.uint8)})


def test_loss_on_a_window_batch_ignores_padding() -> None:
    vq = VQVAE(HopeConfig(obs_dim=6, action_dim=2))
    vq.train()
    obs = arm_states(40).reshape(4, 10, 6)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, :3] = False
    obs[:, :3] = 0.0
    losses = vq.loss({"observation": obs, "mask": mask})
    assert torch.isfinite(losses["loss"])
    vq.fit_normalizer(obs.numpy(), mask.numpy())
    assert np.allclose(vq.normalizer.mean.numpy(), obs[mask].mean(0).numpy(), atol=1e-5)
