"""A Donkeycar vehicle part that drives with the model store's served brain.

In a car's ``manage.py``::

    from continuonbrain.integrations.donkeycar import ContinuonPilot
    V.add(ContinuonPilot(cfg.CAR_PATH + "/brain"), inputs=["cam/image_array"],
          outputs=["pilot/angle", "pilot/throttle"], run_condition="run_pilot")

How it works, and why:

* **Serving.** The part owns a :class:`~continuonbrain.runtime.brain_service.BrainService` on
  ``<model_root>/<slot>`` (``current`` by default) and calls its ``act`` once per loop. So the
  car gets exactly the server's guarantees, implemented once: every file of a version is
  checked against its manifest before it is loaded, a promoted brain is picked up by the
  service's watcher thread and drives from the next frame on (the recurrent state starts over,
  as it must for another model), and a damaged or unloadable ``current`` is refused while the
  last good brain keeps driving. Donkeycar's own ``FileWatcher`` reloads any changed model
  file unchecked; this part never needs it.
* **The loop thread.** ``run`` executes in Donkeycar's drive loop, not as a ``threaded`` part
  with ``update``/``run_threaded``: one act is a few milliseconds on a 160x120 frame (BENCHMARKS.md,
  "Donkeycar part in a real vehicle loop"), well inside the 50 ms of a 20 Hz loop, and acting on the frame of *this*
  loop keeps the control delay at one tick, where a background thread would act on a frame
  up to one loop old and add a lock. Loading a new version happens in the service's watcher
  thread, never in ``run``.
* **Inputs.** ``run(img_arr, *inputs)`` maps the camera frame to the model's image key (by
  default its only one, ``cam/image_array`` for a brain trained on Donkeycar tubs) and the
  further inputs, in order, to ``input_keys`` (by default the model's ``state_keys``). A
  mapping that cannot fit the served model (a missing key, a second camera, a frame of another
  size) is a :class:`ValueError` naming keys and shapes, raised by the constructor when a brain
  is already served, so a wrong ``manage.py`` fails at start, not on the track.
* **Never crash the car.** Donkeycar's vehicle loop stops the whole car (manual driving too)
  when a part raises. So once the car runs, ``run`` does not raise: when it cannot drive it
  returns ``(0.0, 0.0)`` (straight, no throttle: the car coasts to a stop), counts why in
  :meth:`status` and logs it (once per distinct reason, then at most every ``log_every_s``).
  That is also what Donkeycar's ``DriveMode`` makes of a pilot's ``None``, but plain zeros are
  safe for every other part that reads ``pilot/*``. The reasons: no frame yet (cameras return
  ``None`` for their first loops), no input value yet, nothing served, a frame or input the
  model cannot take, a non-finite action, or any unexpected error from the brain.
* **Bounds.** ``angle`` and ``throttle`` are plain floats clipped to ``[-1, 1]`` (Donkeycar's
  units; the model's own action bounds are within them for a brain trained on tubs).
* **Pauses.** When the pilot has not run for ``reset_after_s`` (the driver switched to user
  mode: ``run_condition`` was false), the next call starts from a zero recurrent state: the
  state described a scene that is gone.

This module does not import ``donkeycar``: a part is any object with ``run`` (and optionally
``shutdown``), so it imports, and is tested, without the package; tests drive it inside a real
``donkeycar.vehicle.Vehicle`` loop.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.hope import HopeConfig
from continuonbrain.runtime.brain_service import BrainService, NoModelError
from continuonbrain.runtime.frames import as_frame

__all__ = ["SAFE_ACTION", "ContinuonPilot"]

log = logging.getLogger(__name__)

#: What the part outputs when it cannot drive: straight ahead, no throttle.
SAFE_ACTION = (0.0, 0.0)
#: Why :meth:`ContinuonPilot.run` returned :data:`SAFE_ACTION` (the keys of ``status()["stopped"]``).
STOP_REASONS = ("no_frame", "no_input", "no_model", "bad_input", "non_finite", "error")


@dataclass(frozen=True)
class _Mapping:
    """How ``run``'s arguments become one served version's observation."""

    version: str
    image_key: str
    image_shape: tuple[int, int, int]
    input_keys: tuple[str, ...]


class ContinuonPilot:
    """A Donkeycar part: ``run(img_arr, *inputs) -> (angle, throttle)``; see the module doc.

    ``model_root``: the model store (``continuonbrain models ...``); ``slot``: ``"current"``
    (driving) or ``"candidate"`` (trying weights before the gate, on a stand). ``image_key``:
    the model's image key that ``img_arr`` is (None: the model's only image key).
    ``input_keys``: the model's state keys that the further inputs are, in order (None: the
    model's ``state_keys`` in their order). ``backend``, ``watch_interval_s``, ``torch_threads``:
    the :class:`BrainService`'s (``torch_threads`` is set for the whole process, one by default:
    a batch of one gains nothing from more, and the car's other parts need the second core).
    ``reset_after_s``: a pause after which the recurrent state starts over. ``log_every_s``:
    how often a repeated stop reason is logged again.
    """

    def __init__(
        self,
        model_root: str | Path,
        *,
        slot: str = "current",
        image_key: str | None = None,
        input_keys: list[str] | tuple[str, ...] | None = None,
        backend: str = "numpy",
        watch_interval_s: float = 0.02,
        torch_threads: int | None = 1,
        reset_after_s: float = 0.5,
        log_every_s: float = 10.0,
    ):
        if not (reset_after_s > 0 and math.isfinite(reset_after_s)):
            raise ValueError(f"reset_after_s must be a positive number, got {reset_after_s!r}")
        self.image_key = image_key
        self.input_keys = None if input_keys is None else tuple(input_keys)
        if self.input_keys is not None and len(set(self.input_keys)) != len(self.input_keys):
            raise ValueError(f"input_keys has duplicates: {list(self.input_keys)}")
        self.reset_after_s = float(reset_after_s)
        self.log_every_s = float(log_every_s)
        self._service = BrainService(
            model_root, slot=slot, backend=backend, watch_interval_s=watch_interval_s, torch_threads=torch_threads
        )
        self._no_model = f"no brain is served from {model_root}/{slot} (why: status()['service']['refused'])"
        self._mapping: _Mapping | None = None
        self._model_version: str | None = None
        self._last_run: float | None = None
        self._driven = 0
        self._calls = 0
        self._stopped = dict.fromkeys(STOP_REASONS, 0)
        self._last_stop: dict[str, Any] | None = None
        self._logged: dict[str, float] = {}  # stop message -> when it was last logged
        self._service.start()
        served = self._service.served()
        if served is None:
            log.warning(
                "ContinuonPilot: nothing is served from %s/%s yet (%s); the pilot outputs (0, 0) until a "
                "brain is promoted",
                model_root,
                slot,
                self._service.status().get("refused") or "no version",
            )
        else:
            try:
                self._mapping = self._map(*served)  # a manage.py that cannot fit the model fails here
            except ValueError:
                self._service.stop()
                raise

    # -- the part ------------------------------------------------------------------------

    @property
    def model_version(self) -> str | None:
        """The version that computed the last action (None before the first one)."""
        return self._model_version

    @property
    def served_version(self) -> str | None:
        """The version the next call will act with (None while nothing is served)."""
        return self._service.version

    def run(self, img_arr: Any, *inputs: Any) -> tuple[float, float]:
        """One drive-loop tick: the camera frame (and further inputs) -> ``(angle, throttle)``.

        Never raises: when it cannot drive it returns :data:`SAFE_ACTION` and counts why.
        """
        self._calls += 1
        now = time.monotonic()
        paused = self._last_run is not None and now - self._last_run > self.reset_after_s
        self._last_run = now
        if img_arr is None:
            return self._stop("no_frame", "no camera frame yet (img_arr is None)")
        served = self._service.served()
        if served is None:
            return self._stop("no_model", self._no_model)
        try:
            mapping = self._mapping
            if mapping is None or mapping.version != served[0]:
                mapping = self._mapping = self._map(*served)
            if len(inputs) != len(mapping.input_keys):
                raise ValueError(
                    f"the part got {len(inputs)} input(s) after the image, the model {mapping.version} takes "
                    f"{len(mapping.input_keys)}: {list(mapping.input_keys)} (V.add(..., inputs=[image, *these]))"
                )
            if any(v is None for v in inputs):
                missing = [k for k, v in zip(mapping.input_keys, inputs, strict=True) if v is None]
                return self._stop("no_input", f"no value yet for input(s) {missing}")
            if isinstance(img_arr, str | bytes):
                raise ValueError(f"img_arr is {type(img_arr).__name__}: the part takes the camera's uint8 array")
            frame = as_frame(mapping.image_key, img_arr, mapping.image_shape, max_chars=0)
            obs: dict[str, Any] = {mapping.image_key: frame}
            for key, value in zip(mapping.input_keys, inputs, strict=True):
                obs[key] = np.asarray(value, dtype=np.float32)
            result = self._service.act(obs, reset=paused)
        except NoModelError as exc:
            return self._stop("no_model", str(exc))
        except ValueError as exc:
            return self._stop("bad_input", str(exc))
        except Exception as exc:  # a brain that fails must not stop the car (Donkeycar stops on any raise)
            return self._stop("error", f"{type(exc).__name__}: {exc}", exc_info=True)
        action = result.action
        self._model_version = result.model_version
        if action.shape[0] < 2 or not np.isfinite(action[:2]).all():
            return self._stop("non_finite", f"version {result.model_version} gave the action {action.tolist()}")
        self._driven += 1
        angle = min(1.0, max(-1.0, float(action[0])))
        throttle = min(1.0, max(-1.0, float(action[1])))
        return angle, throttle

    def shutdown(self) -> None:
        """Stop watching the store (Donkeycar calls this when the vehicle stops)."""
        self._service.stop()
        stopped = {k: v for k, v in self._stopped.items() if v}
        log.info("ContinuonPilot: %d of %d calls driven; stopped: %s", self._driven, self._calls, stopped or "never")

    def reload(self) -> str | None:
        """Check the store now instead of at the watcher's next poll; returns the served version."""
        return self._service.reload()

    def status(self) -> dict[str, Any]:
        """Counts of driven and stopped calls (by reason), the last stop, and the service's status."""
        mapping = self._mapping
        return {
            "model_version": self._model_version,
            "calls": self._calls,
            "driven": self._driven,
            "stopped": dict(self._stopped),
            "last_stop": dict(self._last_stop) if self._last_stop else None,
            "image_key": mapping.image_key if mapping else self.image_key,
            "input_keys": list(mapping.input_keys if mapping else self.input_keys or ()),
            "service": self._service.status(),
        }

    # -- helpers -------------------------------------------------------------------------

    def _map(self, version: str, cfg: HopeConfig) -> _Mapping:
        """Fit this part's arguments to one served model; ValueError naming keys and shapes."""
        where = f"model version {version}"
        if cfg.action_dim != 2:
            raise ValueError(f"{where} has action_dim={cfg.action_dim}; a Donkeycar pilot outputs [angle, throttle]")
        images = list(cfg.image_keys)
        if self.image_key is not None:
            if self.image_key not in images:
                raise ValueError(f"image_key {self.image_key!r} is not an image key of {where} (it has {images})")
            image_key = self.image_key
        elif len(images) == 1:
            image_key = images[0]
        else:
            raise ValueError(
                f"{where} takes {len(images)} camera images {images}: pass image_key= to say which one img_arr is"
                if images
                else f"{where} takes no camera image (state keys {list(cfg.state_keys)}): it cannot drive from img_arr"
            )
        if len(images) > 1:
            others = [k for k in images if k != image_key]
            raise ValueError(f"{where} also needs camera(s) {others}; this part feeds one camera")
        state = list(cfg.state_keys)
        keys = tuple(state) if self.input_keys is None else self.input_keys
        if sorted(keys) != sorted(state):
            missing = [k for k in state if k not in keys]
            extra = [k for k in keys if k not in state]
            raise ValueError(
                f"input_keys {list(keys)} do not fit {where}, whose state keys are {state}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not in the model {extra}" if extra else "")
            )
        return _Mapping(version, image_key, cfg.image_shape_tuples[image_key], keys)

    def _stop(self, reason: str, message: str, exc_info: bool = False) -> tuple[float, float]:
        """Count and (rate-limited) log why this call does not drive; the safe action."""
        self._stopped[reason] += 1
        self._last_stop = {"reason": reason, "message": message, "time": time.time()}
        now = time.monotonic()
        last = self._logged.get(message)
        if last is None or now - last >= self.log_every_s:
            if len(self._logged) > 256:  # bounded: messages may carry values
                self._logged.clear()
            self._logged[message] = now
            level = logging.INFO if reason == "no_frame" else logging.ERROR
            log.log(
                level,
                "ContinuonPilot: not driving (%s): %s (%d such calls so far)",
                reason,
                message,
                self._stopped[reason],
                exc_info=exc_info,
            )
        return SAFE_ACTION
