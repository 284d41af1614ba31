"""Torch hooks for the local LoRA trainer: a frozen base, LoRA on its Linear layers, PEFT files.

:func:`build_torch_hooks` wires four pluggable parts into the trainer's
:class:`~continuonbrain.trainer.lora_hooks.ModelHooks`:

* ``base_model_loader``: returns the model to adapt, given the base directory (or no
  argument). Default: the HOPE seed in ``<model_root>/current`` read with
  ``HopeBrain.load(apply_adapter=False)``: each run trains a fresh adapter on the seed. It
  must return a fresh model on every call: it is called for training and again for each
  slot evaluated in shadow (with that slot's directory; its adapter is then merged).
* ``lora_injector(model, layers)``: wraps the named ``nn.Linear`` layers in
  :class:`~continuonbrain.hope.lora.LoRALinear` and returns the trainable parameters. Default:
  :func:`make_lora_injector` with the config's rank, alpha and dropout. The adapter is saved
  with :func:`~continuonbrain.hope.lora.save_adapter`, so the injector must produce those
  layers (``inject_lora`` does).
* ``loss_fn(model, batch)``: a loss tensor, or a dict with ``"loss"`` and other scalars to log,
  on a batch of Fast windows (``observation [B, L, D]``, ``action [B, L, A]``, ``mask
  [B, L]``, and ``context [B, L, C]`` for a HOPE seed with a Mid loop). Default for HOPE: the
  Fast loop's behaviour-cloning loss; :func:`supervised_loss` adapts a ``(pred, target)``
  criterion for other models.
* ``action_distance_fn`` / ``safety_fn``: the gate's guards
  (:func:`~continuonbrain.trainer.safety.build_simple_action_guards`).

The candidate slot gets the base seed's files (config and component weights, copied when the
run starts so a promotion meanwhile cannot change them under the adapter) plus
``adapter_config.json`` and ``adapter_model.safetensors`` with PEFT's key names, which
``HopeBrain.load`` merges for inference. Shadow evaluation loads each slot exactly as the
runtime will (the HOPE brain on its numpy path), so what is gated is what will be served.

Training uses the seed trainer's machinery: its batch loop (:func:`~continuonbrain.trainer.hope_data.batches`,
with a DataLoader generator of its own), its Mid-context code and its RNG checkpointing, so the
hooks are resumable: :meth:`TorchLoRAHooks.state_dict` holds the adapter weights, the optimizer,
the data position and the RNG states, and a run killed with ``kill -9`` and resumed ends with the
uninterrupted run's adapter, byte for byte. Which keys form the state vector is the seed's rule
(:meth:`~continuonbrain.hope.config.HopeConfig.vector_keys`).

torch is imported when the hooks are built, never at module import: ``import
continuonbrain.trainer`` and stub dry runs stay free of it.

Why one module of 461 lines: it is one implementation of the ``ModelHooks`` contract for
torch; most of it is :class:`TorchLoRAHooks`, whose training, resumable state and shadow
loading share the same model, optimizer and data position.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.models.safety import ActionDistance, Violates
from continuonbrain.trainer.budgets import release_memory
from continuonbrain.trainer.checkpoint import rng_state, seed_rngs, set_rng_state
from continuonbrain.trainer.lora_hooks import AdaptationError, AdaptationJob, CandidateFiles, ModelHooks, Policy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from continuonbrain.hope import HopeBrain, HopeConfig

__all__ = [
    "TorchLoRAHooks",
    "build_torch_hooks",
    "hope_bc_loss",
    "hope_observations",
    "load_hope_base",
    "make_lora_injector",
    "supervised_loss",
]

ModelLoader = Callable[..., "nn.Module"]
LoraInjector = Callable[["nn.Module", Sequence[str]], "Sequence[nn.Parameter] | None"]
LossFn = Callable[["nn.Module", dict[str, Any]], "torch.Tensor | dict[str, torch.Tensor]"]
EvalForward = Callable[["nn.Module", Any], Any]


# --------------------------------------------------------------------------- parts


def load_hope_base(directory: str | Path) -> HopeBrain:
    """The HOPE seed in ``directory`` without its adapter (the default ``base_model_loader``)."""
    from continuonbrain.hope import CONFIG_NAME, HopeBrain

    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise AdaptationError(
            "no_base",
            f"no HOPE model in {directory}: train and promote a seed first "
            "(continuonbrain train, then continuonbrain models promote)",
        )
    return HopeBrain.load(directory, apply_adapter=False)


def make_lora_injector(rank: int = 4, alpha: float = 8.0, dropout: float = 0.0) -> LoraInjector:
    """``(model, layers) -> LoRA parameters``: :func:`~continuonbrain.hope.lora.inject_lora`
    with the base frozen."""

    def inject(model: nn.Module, layers: Sequence[str]) -> list[nn.Parameter]:
        from continuonbrain.hope.lora import inject_lora, lora_parameters

        inject_lora(model, list(layers), rank=rank, alpha=alpha, dropout=dropout, freeze_base=True)
        return lora_parameters(model)

    return inject


def hope_bc_loss(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The Fast loop's behaviour-cloning loss (masked MSE in normalised action units)."""
    return model.fast_loop.loss(batch)  # type: ignore[union-attr,operator]


def supervised_loss(criterion: Callable[[Any, Any], torch.Tensor]) -> LossFn:
    """Adapt a ``criterion(prediction, target)`` (e.g. ``torch.nn.functional.mse_loss``) for a
    model mapping ``observation [B, L, D]`` to actions ``[B, L, A]``."""

    def loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return criterion(model(batch["observation"].float()), batch["action"].float())

    return loss


def _call_loader(loader: ModelLoader, directory: Path) -> nn.Module:
    """Call ``loader(directory)`` or, for a loader that takes no argument, ``loader()``."""
    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):
        return loader(directory)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return loader(directory) if positional else loader()


# --------------------------------------------------------------------------- hooks


class TorchLoRAHooks(ModelHooks):
    """See the module doc; built by :func:`build_torch_hooks`."""

    resumable = True

    def __init__(
        self,
        base_model_loader: ModelLoader | None = None,
        lora_injector: LoraInjector | None = None,
        loss_fn: LossFn | None = None,
        action_distance_fn: ActionDistance | None = None,
        safety_fn: Violates | None = None,
        eval_forward: EvalForward | None = None,
    ) -> None:
        self.base_model_loader = base_model_loader
        self.lora_injector = lora_injector
        self.loss_fn = loss_fn
        self.action_distance_fn = action_distance_fn
        self.safety_fn = safety_fn
        self.eval_forward = eval_forward
        self.is_hope = base_model_loader is None
        self._reset_state()

    def _reset_state(self) -> None:
        self.model: Any = None
        self.optimizer: Any = None
        self.params: list[Any] = []
        self.dataset: Any = None
        self.batches: Iterator[tuple[int, dict[str, Any]]] | None = None
        self.job: AdaptationJob | None = None
        self.base_copy: Path | None = None

    # -- training

    def start(self, job: AdaptationJob) -> None:
        import torch

        from continuonbrain.hope import HopeBrain
        from continuonbrain.hope.lora import find_lora_layers

        cfg = job.cfg
        self.job = job
        torch.set_num_threads(cfg.torch_threads)
        seed_rngs(cfg.seed)
        base_dir = job.base_dir
        if self.base_model_loader is None:
            self.base_copy = _snapshot_hope_files(base_dir, job.workdir / "base", reuse=job.resuming)
            model = load_hope_base(self.base_copy)
        else:
            model = _call_loader(self.base_model_loader, base_dir)
        self.is_hope = isinstance(model, HopeBrain)
        if self.is_hope and self.base_copy is None:  # a custom loader that returned a HOPE brain
            self.base_copy = _snapshot_hope_files(base_dir, job.workdir / "base", reuse=job.resuming)
        for p in model.parameters():
            p.requires_grad_(False)
        lora = cfg.lora
        injector = self.lora_injector or make_lora_injector(lora.rank, lora.alpha, lora.dropout)
        params = injector(model, list(lora.layers))
        layers = sorted(find_lora_layers(model))
        if not layers:
            raise AdaptationError("error", "the LoRA injector added no LoRALinear layers (use hope.lora.inject_lora)")
        self.params = list(params) if params is not None else [p for n, p in model.named_parameters() if "lora_" in n]
        for p in self.params:
            p.requires_grad_(True)
        episodes = job.train_episodes
        obs_keys = cfg.data.observation_keys
        if self.is_hope:
            outside = [n for n in layers if not n.startswith("fast_loop.")]
            if outside:
                raise AdaptationError(
                    "error", f"LoRA layers {outside} are outside the Fast loop, which is what the HOPE loss trains"
                )
            obs_keys = model.config.vector_keys(obs_keys)  # the seed's rule, as in sequential training
            if model.uses_mid:
                _attach_mid_context(model, [*episodes, *job.replay_episodes], obs_keys, cfg.data.action_keys)
            if model.fast_loop is not None and model.fast_loop.pixels is not None:
                _attach_image_features(model, [*episodes, *job.replay_episodes])
        if self.loss_fn is None and not self.is_hope:
            raise AdaptationError("error", "a model from base_model_loader needs a loss_fn(model, batch)")
        self.model = model
        train = cfg.training
        self.optimizer = torch.optim.AdamW(self.params, lr=train.learning_rate, weight_decay=train.weight_decay)
        self.dataset = self._dataset(job.training_source(), obs_keys)
        self.batches = self._batches(0)
        job.log_event(
            {
                "event": "lora",
                "layers": layers,
                "trainable_params": int(sum(p.numel() for p in self.params)),
                "base_dir": str(base_dir),
            }
        )

    def _dataset(self, episodes: Any, obs_keys: list[str] | None) -> Any:
        """Fast windows of the training source (the run's episodes, replay ones mixed in; a
        new shuffle and mixing order each epoch)."""
        from continuonbrain.rlds.windows import FastWindowDataset

        assert self.job is not None
        cfg = self.job.cfg
        return FastWindowDataset(
            episodes,
            length_s=cfg.data.window_s,
            shuffle_buffer=cfg.training.batch_size * cfg.training.shuffle_buffer_multiplier,
            seed=cfg.seed,
            observation_keys=obs_keys,
            action_keys=cfg.data.action_keys,
        )

    def _batches(self, start_epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """The seed trainer's endless batch loop over :attr:`dataset` (resumable)."""
        from continuonbrain.trainer.hope_data import batches

        assert self.job is not None
        return batches(self.dataset, self.job.cfg.training.batch_size, start_epoch)

    def _next_batch(self) -> dict[str, Any]:
        from continuonbrain.trainer.hope_data import TrainingError

        assert self.batches is not None
        try:
            return next(self.batches)[1]
        except TrainingError:
            raise AdaptationError("no_data", "the training episodes yield no Fast windows") from None

    def train_step(self) -> dict[str, float]:
        import torch

        assert self.batches is not None and self.optimizer is not None
        batch = self._next_batch()
        trained = self.model.fast_loop if self.is_hope else self.model
        trained.train()  # dropout only: the frozen Mid loop and VQ-VAE stay in eval mode
        try:
            out = (self.loss_fn or hope_bc_loss)(self.model, batch)
        finally:
            trained.eval()
        losses = out if isinstance(out, dict) else {"loss": out}
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        clip = self.job.cfg.training.grad_clip if self.job else None
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.dataset.mark_consumed(batch)
        return {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.dim() == 0}

    # -- checkpoints

    def _named_trainable(self) -> dict[str, Any]:
        wanted = {id(p) for p in self.params}
        return {n: p for n, p in self.model.named_parameters() if id(p) in wanted}

    def state_dict(self) -> dict[str, Any]:
        assert self.model is not None and self.optimizer is not None
        return {
            "params": {n: p.detach().clone() for n, p in self._named_trainable().items()},
            "optimizer": self.optimizer.state_dict(),
            "data": self.dataset.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        assert self.model is not None and self.optimizer is not None
        params = self._named_trainable()
        if set(params) != set(state["params"]):
            raise AdaptationError(
                "error",
                f"cannot resume: the checkpoint adapts {sorted(state['params'])[:3]}..., this run "
                f"{sorted(params)[:3]}... (were lora.layers or the base changed?)",
            )
        with torch.no_grad():
            for name, p in params.items():
                saved = state["params"][name]
                if saved.shape != p.shape:
                    raise AdaptationError(
                        "error",
                        f"cannot resume: {name} is {list(saved.shape)} in the checkpoint, {list(p.shape)} "
                        "here (was lora.rank changed?)",
                    )
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.dataset.load_state_dict(state["data"])
        self.batches = self._batches(int(state["data"]["epoch"]))
        set_rng_state(state["rng"])

    def save_candidate(self, out_dir: Path) -> CandidateFiles:
        from continuonbrain.hope.lora import find_lora_layers, save_adapter

        assert self.job is not None and self.model is not None
        cfg, base_dir = self.job.cfg, self.job.base_dir
        adapter_dir = out_dir / "adapter"
        files = save_adapter(adapter_dir, self.model, base_model_name_or_path=str(base_dir))
        layers = find_lora_layers(self.model)
        first = next(iter(layers.values()))
        info = {
            "target_modules": sorted(layers),
            "r": first.rank,
            "lora_alpha": first.alpha,
            "trainable_params": int(sum(p.numel() for p in self.params)),
            "format": "peft-lora",
        }
        if self.is_hope:
            assert self.base_copy is not None
            from continuonbrain.hope import list_components

            base_files = sorted(p for p in self.base_copy.iterdir() if p.is_file())
            return CandidateFiles([*base_files, *files], list_components(self.base_copy), "hope-lora", info)
        base_files = []
        if cfg.base_model_path and Path(cfg.base_model_path).is_file():
            base_files = [Path(cfg.base_model_path)]
        return CandidateFiles([*base_files, *files], [], "torch-lora", info)

    def close(self) -> None:
        self._reset_state()
        release_memory()

    # -- shadow evaluation

    def load_policy(self, slot_dir: Path) -> Policy | None:
        from continuonbrain.hope import HopeBrain
        from continuonbrain.hope.lora import ADAPTER_CONFIG_NAME, load_adapter

        if self.is_hope:
            brain = HopeBrain.load(slot_dir)  # adapter merged, numpy Fast path: what the runtime serves
            return Policy(act=brain.act, reset=brain.reset, observations=hope_observations(brain.config))
        assert self.base_model_loader is not None
        model = _call_loader(self.base_model_loader, slot_dir)
        if (slot_dir / ADAPTER_CONFIG_NAME).is_file():
            load_adapter(slot_dir, model, merge=True)
        model.eval()
        forward = self.eval_forward or _default_forward
        reset = getattr(model, "reset", None)
        return Policy(act=lambda obs: forward(model, obs), reset=reset if callable(reset) else (lambda: None))


def _default_forward(model: nn.Module, obs: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        y = model(torch.as_tensor(np.asarray(obs, dtype=np.float32))[None])
    return y[0].detach().cpu().numpy()


def _snapshot_hope_files(base_dir: Path, dest: Path, reuse: bool = False) -> Path:
    """Copy the seed's config and component files (not its adapter or manifest) into the run's
    scratch dir: the candidate is built from exactly the weights that were trained on. ``reuse``
    (a resumed run): the killed run's snapshot is used as it is, even if ``current`` changed since."""
    from continuonbrain.hope import CONFIG_NAME, component_path, list_components

    if reuse and (dest / CONFIG_NAME).is_file() and list_components(dest):
        return dest
    if not (base_dir / CONFIG_NAME).is_file() or not list_components(base_dir):
        raise AdaptationError(
            "no_base",
            f"no HOPE model in {base_dir}: train and promote a seed first "
            "(continuonbrain train, then continuonbrain models promote)",
        )
    dest.mkdir(parents=True, exist_ok=True)
    for src in [base_dir / CONFIG_NAME, *(component_path(base_dir, n) for n in list_components(base_dir))]:
        shutil.copy2(src, dest / src.name)
    return dest


def _attach_mid_context(
    brain: HopeBrain, episodes: list[Any], obs_keys: list[str] | None, action_keys: list[str] | None
) -> None:
    """Each episode gets ``extras["context"]``: the frozen Mid loop's context at every control
    step (camera frames tokenized too), what the Fast loop sees from it on the robot. The same
    code as sequential training, so the adapter trains on the contexts the seed was trained on."""
    from continuonbrain.trainer.hope_data import with_mid_context

    source = with_mid_context(
        lambda: iter(episodes),
        brain.vqvae,
        brain.mid_loop,
        obs_keys,
        image_keys=brain.config.image_keys,
        action_keys=action_keys,
    )
    for _ in source():  # sets ep.extras["context"] in place
        pass


def _attach_image_features(brain: HopeBrain, episodes: list[Any]) -> None:
    """Each episode gets ``extras["image_features"]``: the seed Fast loop's frozen camera
    features of every frame, what it reads every tick on the robot (LoRA adapts the layers
    after them). The same code as sequential training."""
    from continuonbrain.trainer.hope_data import with_image_features

    assert brain.fast_loop is not None and brain.fast_loop.pixels is not None
    source = with_image_features(lambda: iter(episodes), brain.fast_loop.pixels, brain.config.image_keys)
    for _ in source():  # sets ep.extras["image_features"] in place
        pass


def hope_observations(config: HopeConfig) -> Callable[[Any], Iterator[Any]]:
    """``episode -> observations`` as a HOPE brain takes them on the robot: state vectors, or
    dicts of the state keys and decoded camera frames, one step at a time (a whole episode of
    decoded frames would not fit a Pi's memory budget)."""
    keys = config.vector_keys()

    def observations(ep: Any) -> Iterator[Any]:
        if not config.image_keys:
            yield from ep.observation_vector(keys)
            return
        obs = ep.observation
        for t in range(len(ep)):
            step: dict[str, Any] = {k: np.asarray(obs[k][t], np.float32) for k in config.state_keys}
            for k in config.image_keys:
                frame = obs[k][t]
                step[k] = frame.decode() if hasattr(frame, "decode") else np.asarray(frame, np.uint8)
            yield step

    return observations


def build_torch_hooks(
    base_model_loader: ModelLoader | None = None,
    lora_injector: LoraInjector | None = None,
    loss_fn: LossFn | None = None,
    *,
    action_distance_fn: ActionDistance | None = None,
    safety_fn: Violates | None = None,
    eval_forward: EvalForward | None = None,
) -> TorchLoRAHooks:
    """Torch hooks for :func:`~continuonbrain.trainer.local_lora_trainer.maybe_run_local_training`.

    With no arguments: LoRA on the HOPE seed in ``<model_root>/current`` (or
    ``base_model_path``) with the config's ``lora`` rank/alpha/dropout and the Fast loop's BC loss.
    ``eval_forward(model, observation) -> action`` runs a custom model in shadow (default:
    ``model(obs[None])[0]``). Raises ImportError here, not mid-run, when torch is missing.
    """
    import torch  # noqa: F401

    return TorchLoRAHooks(base_model_loader, lora_injector, loss_fn, action_distance_fn, safety_fn, eval_forward)
