"""The Donkeycar ``linear`` port the drive2d proof compares HOPE with (bench/donkey_linear.py):
its layers are Donkeycar's, it learns from a tub, and the saved pilot acts as the trained net."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from continuonbrain.rlds import read_episodes
from continuonbrain.sim import collect_to_dir

BENCH = Path(__file__).resolve().parents[1] / "bench" / "donkey_linear.py"


@pytest.fixture(scope="module")
def dl():
    spec = importlib.util.spec_from_file_location("donkey_linear", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["donkey_linear"] = module
    spec.loader.exec_module(module)
    return module


def test_layers_are_keras_linear_at_donkeycars_image_size(dl) -> None:
    # default_n_linear(2, (120, 160, 3)): 8x13x64 = 6656 features after the conv stack, and the
    # parameter count model.summary() prints, layer by layer:
    # conv 1824 + 19232 + 51264 + 36928 + 36928, dense 665700 + 5050, heads 2 x 51.
    assert dl.conv_output_hw(120, 160) == (8, 13)
    assert dl.keras_param_count() == 1824 + 19232 + 51264 + 36928 + 36928 + 665700 + 5050 + 102 == 817028
    net = dl.build((120, 160, 3))
    assert sum(p.numel() for p in net.parameters()) == 817028
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding) for c in convs] == [
        (24, 5, 2, (0, 0)),
        (32, 5, 2, (0, 0)),
        (64, 5, 2, (0, 0)),
        (64, 3, 1, (0, 0)),
        (64, 3, 1, (0, 0)),
    ]
    drops = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.2] * 7  # after each conv and each hidden dense layer
    biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert all(not b.detach().any() for b in biases)  # Keras zero bias init
    out = net.eval()(torch.zeros(3, 120, 160, 3, dtype=torch.uint8))
    assert out.shape == (3, 2)


def test_too_small_an_image_is_refused_with_a_reason(dl) -> None:
    with pytest.raises(ValueError, match="too small"):
        dl.conv_output_hw(48, 64)


def test_learns_from_a_tub_and_the_saved_pilot_acts_like_the_net(dl, tmp_path: Path) -> None:
    tub = tmp_path / "tub"
    collect_to_dir("drive2d", 1, tub, "tub", seed=3, dart_sigma=0.3, env_kwargs={"image_height": 64,
                   "image_width": 80})  # fmt: skip
    images, actions = dl.load_frames(tub)
    assert images.dtype == np.uint8 and images.shape[1:] == (64, 80, 3)
    assert actions.shape == (len(images), 2)
    # the episodes HOPE's trainer held out are skipped (here: the only one, so nothing is left)
    (only,) = [ep.episode_id for ep in read_episodes(tub)]
    with pytest.raises(ValueError, match="no episodes"):
        dl.load_frames(tub, exclude=frozenset({only}))
    info = dl.train(tub, 60, tmp_path / "model", batch_size=32, threads=1)
    assert info["frames"] == len(images) and info["steps"] == 60
    assert info["final_loss"] < info["initial_loss"]
    pilot = dl.LinearPilot(tmp_path / "model")
    a = pilot.act({"cam/image_array": images[0]})
    assert a.shape == (2,) and np.all(np.isfinite(a))
    # act is the eval-mode net on that frame (dropout off: deterministic)
    np.testing.assert_array_equal(a, pilot.act({"cam/image_array": images[0]}))
    with torch.inference_mode():
        batch = pilot.net(torch.from_numpy(images[:4]))
    np.testing.assert_allclose(a, batch[0].numpy(), rtol=1e-5, atol=1e-6)
    # the safetensors file records the input shape it was trained on
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model" / dl.WEIGHTS), "pt") as f:
        assert json.loads(f.metadata()["input_shape"]) == [64, 80, 3]
