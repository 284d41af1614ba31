"""The RLDS episode schema shared with the Continuon app and cloud ingestion.

These pydantic models are the single source of truth for what an episode file may hold:
``continuonbrain rlds schema`` prints their JSON Schema, which is committed as
``docs/rlds-episode.schema.json`` for the Flutter app and the cloud to validate against, and
the readers check every episode's metadata with :func:`check_metadata`. A test keeps the
committed document equal to the generated one, so they cannot drift.

Unknown metadata keys are allowed (``extra="allow"``): newer apps may add fields and an
older robot must still read their episodes.

Upload readiness: an episode may leave the robot only when ``safety.pii_cleared`` is true
and ``safety.pending_review`` is false; the ``owner`` block is local-only and
:func:`export_metadata` strips it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from continuonbrain.rlds.errors import RLDSError

SCHEMA_VERSION = "1.1"
#: The highest plausible control rate. Real control loops run at 10 Hz - 1 kHz; a rate past
#: 10 kHz (1e308 Hz, say) is a corrupt field, and windows sized in seconds would be nonsense.
MAX_CONTROL_HZ = 10_000.0

# Strict: "yes" is not a boolean. The JSON Schema says so, and the reader must agree with it.
_Open = ConfigDict(extra="allow", strict=True)

Number = int | float
NumericArray = Number | bool | list[Any]
InlineImage = dict[str, str]


class Safety(BaseModel):
    model_config = _Open
    pii_attestation: str | None = Field(None, description="Who or what attests the PII state (e.g. 'synthetic').")
    pii_cleared: bool | None = Field(None, description="True once faces/voices/text were checked or removed.")
    pii_redacted: bool | None = Field(None, description="True when redaction changed the recorded content.")
    pending_review: bool | None = Field(None, description="True while a person still has to review the episode.")
    content_rating: str | None = Field(None, description="e.g. 'general'.")


class Share(BaseModel):
    model_config = _Open
    public: bool = Field(False, description="May be shared publicly once upload-ready.")
    license: str | None = None
    dataset: str | None = None


class Provenance(BaseModel):
    model_config = _Open
    origin: str | None = Field(
        None, description="Where the episode came from: 'xr_app', 'pi_logger', 'sim:<env>', 'imagined:<method>'."
    )
    source_commit: str | None = None
    source_host: str | None = None
    notes: str | None = None


class Software(BaseModel):
    model_config = _Open
    name: str | None = None
    version: str | None = None


#: A bound of a Box: one number for every element, or one per element; ``null`` (how JSON
#: writers store an infinite bound) and +-inf mean unbounded.
Bound = Number | None | list[Number | None]


def _control_hz(description: str) -> Any:
    """The one definition of a valid control rate: a finite number in (0, MAX_CONTROL_HZ]."""
    return Field(None, gt=0, le=MAX_CONTROL_HZ, allow_inf_nan=False, description=description)


class BoxSpace(BaseModel):
    """A gymnasium ``Box`` as ``sim collect`` records it. The data must agree with it: every
    step's action has ``shape`` and lies within ``[low, high]`` (``rlds validate`` says where not)."""

    model_config = _Open
    type: str | None = Field(None, description="'box'.")
    shape: list[NonNegativeInt] | None = Field(None, description="Shape of one step's value, e.g. [2].")
    dtype: str | None = None
    low: Bound = None
    high: Bound = None
    names: list[str] | None = None


class Capabilities(BaseModel):
    """What the robot that recorded the episode can do: its control rate and action space."""

    model_config = _Open
    control_hz: float | None = _control_hz("Control rate in Hz, in (0, 10000].")
    action_space: BoxSpace | None = None


class Owner(BaseModel):
    """Local-only: who owns the robot and the recording. Never leaves the robot."""

    model_config = _Open
    owner_id: str | None = None
    name: str | None = None
    contact: str | None = None


class EpisodeMetadata(BaseModel):
    """``metadata.json`` of a Continuon episode (layout v1.1)."""

    model_config = _Open
    schema_version: str = Field(SCHEMA_VERSION, description="Continuon layout version, '1.1'.")
    episode_id: str | None = Field(None, description="Unique id; the directory name when absent.")
    robot_id: str | None = None
    robot_model: str | None = None
    xr_mode: str | None = Field(None, description="'none', 'passthrough', 'vr', ...")
    control_role: str | None = Field(None, description="'teleop', 'expert', 'policy', 'random', ...")
    environment_id: str | None = None
    split: str | None = Field(
        None,
        description="Dataset split ('train', 'test', ...). Set from the TFDS split an episode was read from; "
        "converting keeps it (Continuon: <out>/<split>/<episode>/, TFDS: the split's shards).",
    )
    tags: list[str] = Field(default_factory=list)
    software: Software | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)
    control_hz: float | None = _control_hz("Control rate in Hz, in (0, 10000]; used when steps carry no timestamps.")
    safety: Safety | None = None
    share: Share | None = None
    provenance: Provenance | None = None
    owner: Owner | None = None


class StepRecord(BaseModel):
    """One line of ``steps/NNNNNN.jsonl`` (or one element of ``steps`` in a ``.json`` file).

    ``observation``/``action``: a number, a (nested) list of numbers, or an object of named
    values, where a value is a numeric array, a blob path string (an encoded image relative
    to the episode directory), an inline image ``{"b64": ..., "format": "png"}``, or a
    nested object of those. Older logs may say ``obs`` instead of ``observation``.
    """

    model_config = _Open
    observation: NumericArray | dict[str, Any] | None = None
    obs: NumericArray | dict[str, Any] | None = Field(None, description="Older name of 'observation'.")
    action: NumericArray | dict[str, Any]
    reward: Number = 0.0
    discount: Number = 1.0
    is_first: bool | None = Field(None, description="Inferred from position when absent.")
    is_last: bool | None = Field(None, description="Inferred from position when absent.")
    is_terminal: bool | None = Field(None, description="Defaults to is_last.")
    language_instruction: str | None = None
    step_metadata: dict[str, str | Number | bool | list[Number]] = Field(
        default_factory=dict, description="Named per-step values: text, scalars or numeric vectors."
    )
    timestamp: Number | None = Field(None, description="Seconds; must not go backwards.")
    timestamp_s: Number | None = None
    timestamp_ns: int | None = None


class EpisodeDocument(BaseModel):
    """A single-file episode (``.json``): its steps and its metadata."""

    model_config = _Open
    steps: list[StepRecord]
    episode_metadata: EpisodeMetadata | None = None
    metadata: EpisodeMetadata | None = Field(None, description="Accepted as a synonym of episode_metadata.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema document committed as ``docs/rlds-episode.schema.json``."""
    schema = EpisodeDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://continuon.ai/schemas/rlds-episode-1.1.json"
    schema["title"] = "Continuon RLDS episode (layout v1.1)"
    schema["description"] = (
        "A single-file episode. In the directory layout, metadata.json holds an EpisodeMetadata "
        "and each line of steps/NNNNNN.jsonl a StepRecord (both under $defs)."
    )
    return schema


def check_metadata(metadata: dict[str, Any]) -> EpisodeMetadata:
    """Validate episode metadata; raise :class:`RLDSError` naming the first bad field."""
    try:
        return EpisodeMetadata.model_validate(metadata)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RLDSError(first["msg"], field=f"metadata.{loc}") from None


def upload_problems(metadata: dict[str, Any]) -> list[str]:
    """Why this episode may not be exported for sharing (empty when it may)."""
    safety = metadata.get("safety") or {}
    problems = []
    if safety.get("pii_cleared") is not True:
        problems.append("safety.pii_cleared is not true")
    if safety.get("pending_review") is not False:
        problems.append(
            "safety.pending_review is true" if safety.get("pending_review") else "safety.pending_review is not set"
        )
    return problems


def export_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as it may leave the robot: the local-only ``owner`` block removed."""
    return {k: v for k, v in metadata.items() if k != "owner"}
