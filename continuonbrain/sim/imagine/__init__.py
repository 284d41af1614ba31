"""Imagined rollouts: offline search in the learned Mid-loop world model, written as RLDS episodes.

The HOPE Mid loop is a one-step world model over VQ-VAE tokens: given the tokens of the
current observation, the history in its SSM state and an action held for one Mid step
(``mid_every`` control steps, 200 ms at 50 Hz), it predicts the tokens of the observation one
Mid step later (:meth:`~continuonbrain.hope.mid_loop.MidLoop.next_logits`). This package
plans in that model and turns the plans into training data:

1. **Start states** are drawn (seeded) from the steps of real episodes: the ``rlds_dir``
   recorded in the model's manifest, or an explicit one. Imagined episodes found there are
   skipped: imagining from imagined states would compound the model's errors.
2. **History**: the real observations at the ``history`` Mid ticks before the start (every
   ``mid_every`` steps, as the Mid loop was trained) are tokenized and stepped through the
   Mid loop with the mean real action of each interval, so the search starts from the
   state the world model would have on the robot at that moment.
3. **Search**: the cross-entropy method (CEM, below) over sequences of ``horizon``
   actions, each held for one Mid step, rolled forward in token space (most likely tokens,
   fed back) and decoded with the VQ-VAE decoder to score them against the env's goal
   (:data:`GOALS`).
4. **Selection**: each start keeps its best sequence; sequences whose *predicted final*
   cost is above ``max_final_cost`` are dropped, and of the rest the ``n`` with the lowest
   predicted cost are kept (a bounded heap: memory holds ``n`` trajectories, not all).
5. **Output**: ordinary RLDS episodes in the Continuon layout, tagged ``imagined`` with
   ``provenance.origin = "imagined:cem:<model version>"`` (the RLDS contract the
   trainer's ``max_imagined_fraction`` cap recognises), the search parameters and the
   predicted costs in ``metadata["imagination"]``.

What the observations of an imagined episode are, honestly: step 0 is the real observation
of the source episode; the observation at every Mid tick after it is the VQ-VAE decoding of
the world model's predicted tokens (a prediction, never simulated or measured); the
``mid_every - 1`` control steps between two ticks are linear interpolations of the two tick
observations, because the world model has no finer time resolution. Each step says which in
``step_metadata["obs_source"]`` (``real``, ``decoded``, ``interpolated``). Observation fields
that the env holds constant during an episode (the reach2d target) are pinned to the start
state's values (listed in ``metadata["imagination"]["observations"]["pinned"]``): the world
model's quantisation noise on them is not information. Actions are the planned ones, held
for ``mid_every`` steps. ``reward`` is minus the goal cost of the next observation (no
success bonus), and ``is_terminal`` is always false: the world model predicts no termination.

Why CEM rather than MPPI: the world model decodes the *most likely* tokens, so the predicted
cost is piecewise constant in the actions (it only changes when a token flips). CEM ranks
the candidates and refits a Gaussian to the elite fraction, which needs no gradient and is
invariant to the scale of the cost; MPPI's exponential weighting needs a temperature matched
to the cost scale, which differs per env and per model, and on plateaus it averages
candidates that tie. CEM here is vectorised over start states and candidates (one batched
Mid-loop step per horizon step for all of them), keeps the best sequence ever sampled per
start (so more iterations never make the result worse), and re-inserts the current mean as
a candidate from the second iteration on.

Bounded memory: start states are chosen in a first streaming pass that keeps episode
lengths only, and their histories extracted in a second one; the search runs
``batch_starts`` starts at a time (``batch_starts * population`` rollouts), and only the
kept trajectories are held until writing. Seeded and deterministic: the same model, data,
parameters and seed give the same episodes (on one torch build and thread count: float sums
in other orders can flip a most-likely token).

The package, one module per step: :mod:`~continuonbrain.sim.imagine.goals` (the per-env
goals), :mod:`~continuonbrain.sim.imagine.world_model` (the model store slot and the world
model over it), :mod:`~continuonbrain.sim.imagine.starts` (start states),
:mod:`~continuonbrain.sim.imagine.cem` (the search and its parameters),
:mod:`~continuonbrain.sim.imagine.episodes` (plans as RLDS episodes) and
:mod:`~continuonbrain.sim.imagine.run` (:func:`imagine_to_dir`, the whole). Everything public
is importable from ``continuonbrain.sim.imagine`` itself, as when it was one module.
"""

from continuonbrain.sim.imagine.cem import METHODS, SearchConfig, SearchResult, cem_search
from continuonbrain.sim.imagine.episodes import imagined_episode
from continuonbrain.sim.imagine.errors import ImagineError
from continuonbrain.sim.imagine.goals import GOALS, Goal, goal_for
from continuonbrain.sim.imagine.run import imagine_to_dir
from continuonbrain.sim.imagine.starts import StartState, detect_env, select_starts
from continuonbrain.sim.imagine.world_model import (
    ModelInfo,
    ModelSlot,
    WorldModel,
    load_world_model,
    open_slot,
    world_model_from_slot,
)

__all__ = [
    "GOALS",
    "METHODS",
    "Goal",
    "ImagineError",
    "ModelInfo",
    "ModelSlot",
    "SearchConfig",
    "SearchResult",
    "StartState",
    "WorldModel",
    "cem_search",
    "detect_env",
    "goal_for",
    "imagine_to_dir",
    "imagined_episode",
    "load_world_model",
    "open_slot",
    "select_starts",
    "world_model_from_slot",
]
