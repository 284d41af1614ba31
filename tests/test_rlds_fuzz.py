"""Property-based tests: whatever bytes or JSON a reader is fed, only RLDSError comes out."""

from __future__ import annotations

import json

from conftest import consume_scan, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

SETTINGS = fuzz_settings(60)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
step_like = st.fixed_dictionaries(
    {},
    optional={
        "observation": json_values,
        "obs": json_values,
        "action": json_values,
        "reward": json_values,
        "is_first": json_values,
        "is_last": json_values,
        "timestamp": json_values,
        "timestamp_ns": json_values,
        "step_metadata": json_values,
        "language_instruction": json_values,
    },
)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_jsonl(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fz") / "x.jsonl"
    path.write_bytes(data)
    consume_scan(path)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_json(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fz") / "x.json"
    path.write_bytes(data)
    consume_scan(path)


@SETTINGS
@given(steps=st.lists(step_like, max_size=6), meta=json_values)
def test_random_json_episode_dir(tmp_path_factory, steps: list, meta) -> None:
    ep = tmp_path_factory.mktemp("fz") / "ep"
    (ep / "steps").mkdir(parents=True)
    (ep / "metadata.json").write_text(json.dumps(meta))
    (ep / "steps" / "000000.jsonl").write_text("\n".join(json.dumps(s) for s in steps))
    consume_scan(ep)


@SETTINGS
@given(doc=json_values | st.fixed_dictionaries({"steps": st.lists(step_like, max_size=5)}))
def test_random_json_document(tmp_path_factory, doc) -> None:
    path = tmp_path_factory.mktemp("fz") / "doc.json"
    path.write_text(json.dumps(doc))
    consume_scan(path)
