"""Adapters that let other robot frameworks run a served ContinuonBrain brain.

:mod:`continuonbrain.integrations.donkeycar`: :class:`ContinuonPilot`, a Donkeycar vehicle
part. Each adapter serves the model store's brain in process through
:class:`~continuonbrain.runtime.brain_service.BrainService` (verified hot swap), so it imports
``runtime`` and never the training loop, and it imports nothing of the framework it plugs into
(a duck-typed part works with, and is tested against, the real framework without depending on
it).
"""
