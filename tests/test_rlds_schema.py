"""The committed JSON Schema is what the code generates, and it accepts what the readers accept."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import make_episode

from continuonbrain.rlds import read_episodes, write_episodes
from continuonbrain.rlds.schema import json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "rlds-episode.schema.json"


def test_committed_schema_matches_the_models() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json.loads(json.dumps(json_schema())), (
        "docs/rlds-episode.schema.json is stale: run `continuonbrain rlds schema --out docs/rlds-episode.schema.json`"
    )


def _validator(definition: str | None = None) -> jsonschema.Validator:
    schema = json_schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema)


def test_written_episodes_validate_against_the_schema(tmp_path: Path) -> None:
    write_episodes([make_episode(episode_id="e", owner={"name": "Ada"})], tmp_path)
    meta = json.loads((tmp_path / "e" / "metadata.json").read_text())
    _validator("EpisodeMetadata").validate(meta)
    step_validator = _validator("StepRecord")
    for line in (tmp_path / "e" / "steps" / "000000.jsonl").read_text().splitlines():
        step_validator.validate(json.loads(line))
    # And the single-file document form validates and reads to the same episode.
    doc = {"episode_metadata": meta, "steps": [json.loads(x) for x in (tmp_path / "e/steps/000000.jsonl").open()]}
    _validator().validate(doc)
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    (ep,) = read_episodes(tmp_path / "doc.json", on_error="raise")
    assert len(ep) == 12


@pytest.mark.parametrize(
    ("meta", "ok"),
    [
        ({"episode_id": "x", "tags": ["a"]}, True),
        ({"episode_id": "x", "tags": "a"}, False),
        ({"episode_id": "x", "safety": {"pii_cleared": "yes"}}, False),
        ({"episode_id": "x", "control_hz": 0}, False),
        ({"episode_id": "x", "a_future_field": {"anything": 1}}, True),
    ],
)
def test_schema_and_reader_agree_on_metadata(tmp_path: Path, meta: dict, ok: bool) -> None:
    schema_ok = _validator("EpisodeMetadata").is_valid(meta)
    ep = tmp_path / "ep"
    (ep / "steps").mkdir(parents=True)
    (ep / "metadata.json").write_text(json.dumps(meta))
    (ep / "steps" / "000000.jsonl").write_text('{"observation": [1.0], "action": [0.0]}\n')
    reader_ok = len(list(read_episodes(ep, on_error="skip"))) == 1
    assert schema_ok == reader_ok == ok
