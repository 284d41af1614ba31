"""HOPE v1 seed: the model that the robot trains on itself and serves.

Components (each a ``torch.nn.Module`` built from one :class:`HopeConfig`, with the verbs
``loss(batch) -> dict`` for training and ``step(...)`` for inference with carried state):

* :class:`VQVAE` (``vqvae.py``): observations -> discrete tokens (EMA codebook).
* :class:`MidLoop` (``mid_loop.py``): SSM world model over tokens and actions at the Mid
  rate; predicts the next tokens and emits a context for the Fast loop.
* :class:`FastLoop` (``fast_loop.py``): the reflex policy, an SSM over 50-100 ms windows with
  bounded actions, plus :class:`FastLoopNumpy`, its pure-numpy per-tick path, and
  :class:`PixelEncoder` (``pixels.py``), its eyes: a small conv encoder, trained end to end
  on the action loss, read at every tick when observations hold camera frames.
* :class:`HopeBrain` (``brain.py``): the assembly that acts, with safetensors persistence.
* ``ssm.py`` (diagonal linear SSM with a parallel scan), ``lora.py`` (PEFT-format LoRA).

Import rule: this package depends on numpy, torch and safetensors only, never on the
rest of ContinuonBrain.
"""

from __future__ import annotations

from continuonbrain.hope.brain import (
    COMPONENTS,
    CONFIG_NAME,
    HopeBrain,
    build_component,
    component_path,
    list_components,
    load_component,
    save_component,
)
from continuonbrain.hope.config import FastLoopConfig, HopeConfig, MidLoopConfig, VQVAEConfig
from continuonbrain.hope.fast_loop import FastLoop, FastLoopNumpy, FastLoopNumpyState
from continuonbrain.hope.lora import (
    LoRALinear,
    adapter_config,
    inject_lora,
    load_adapter,
    lora_parameters,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    save_adapter,
)
from continuonbrain.hope.mid_loop import MidLoop, MidState
from continuonbrain.hope.pixels import PixelEncoder
from continuonbrain.hope.ssm import DiagonalSSM, SSMBlock, SSMStack, linear_scan
from continuonbrain.hope.vqvae import VQVAE, VQVAEOutput

__all__ = [
    "COMPONENTS",
    "CONFIG_NAME",
    "VQVAE",
    "DiagonalSSM",
    "FastLoop",
    "FastLoopConfig",
    "FastLoopNumpy",
    "FastLoopNumpyState",
    "HopeBrain",
    "HopeConfig",
    "LoRALinear",
    "MidLoop",
    "MidLoopConfig",
    "MidState",
    "PixelEncoder",
    "SSMBlock",
    "SSMStack",
    "VQVAEConfig",
    "VQVAEOutput",
    "adapter_config",
    "build_component",
    "component_path",
    "inject_lora",
    "linear_scan",
    "list_components",
    "load_adapter",
    "load_component",
    "lora_parameters",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge_lora",
    "save_adapter",
    "save_component",
]
