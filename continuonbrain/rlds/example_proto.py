"""``tf.train.Example`` and friends, without TensorFlow and without protoc.

TFDS shards hold one serialized ``tensorflow.Example`` per record. Rather than vendoring
generated ``*_pb2.py`` files (which are tied to a protobuf version) or depending on
TensorFlow, the two schema files are described here as a ``FileDescriptorProto`` built in
Python, with the exact package, message names and field numbers of TensorFlow's
``tensorflow/core/example/feature.proto`` and ``example.proto``; protobuf's own runtime
(upb) then parses and serializes them at C speed. The descriptors live in a private
``DescriptorPool`` so they can never clash with TensorFlow's when both are imported.

:func:`parse_example` turns a record into ``{key: numpy array | list[bytes]}``, converting
each repeated field with one ``np.asarray`` call (upb containers expose ``__array__``), which
is what keeps the TFDS reader fast. :func:`build_example` is the inverse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from continuonbrain.rlds.errors import RLDSError

_F = descriptor_pb2.FieldDescriptorProto


def _add_field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    type_: int,
    label: int = _F.LABEL_OPTIONAL,
    type_name: str | None = None,
    oneof: int | None = None,
    packed: bool = False,
) -> None:
    field = msg.field.add(name=name, number=number, type=type_, label=label)
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    if packed:
        field.options.packed = True


def _add_map(msg: descriptor_pb2.DescriptorProto, name: str, entry: str, value_type: str) -> None:
    """``map<string, value_type> name = 1``: protobuf encodes it as a nested entry message."""
    nested = msg.nested_type.add(name=entry)
    nested.options.map_entry = True
    _add_field(nested, "key", 1, _F.TYPE_STRING)
    _add_field(nested, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)
    _add_field(msg, name, 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, type_name=f"{msg.name}.{entry}")


def _feature_proto() -> descriptor_pb2.FileDescriptorProto:
    """``tensorflow/core/example/feature.proto``."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/feature.proto", package="tensorflow", syntax="proto3"
    )
    rep = _F.LABEL_REPEATED
    _add_field(fdp.message_type.add(name="BytesList"), "value", 1, _F.TYPE_BYTES, rep)
    _add_field(fdp.message_type.add(name="FloatList"), "value", 1, _F.TYPE_FLOAT, rep, packed=True)
    _add_field(fdp.message_type.add(name="Int64List"), "value", 1, _F.TYPE_INT64, rep, packed=True)
    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    _add_field(feature, "bytes_list", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.BytesList", oneof=0)
    _add_field(feature, "float_list", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.FloatList", oneof=0)
    _add_field(feature, "int64_list", 3, _F.TYPE_MESSAGE, type_name=".tensorflow.Int64List", oneof=0)
    _add_map(fdp.message_type.add(name="Features"), "feature", "FeatureEntry", ".tensorflow.Feature")
    _add_field(fdp.message_type.add(name="FeatureList"), "feature", 1, _F.TYPE_MESSAGE, rep, ".tensorflow.Feature")
    _add_map(fdp.message_type.add(name="FeatureLists"), "feature_list", "FeatureListEntry", ".tensorflow.FeatureList")
    return fdp


def _example_proto() -> descriptor_pb2.FileDescriptorProto:
    """``tensorflow/core/example/example.proto``."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/example.proto",
        package="tensorflow",
        syntax="proto3",
        dependency=["tensorflow/core/example/feature.proto"],
    )
    _add_field(fdp.message_type.add(name="Example"), "features", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.Features")
    seq = fdp.message_type.add(name="SequenceExample")
    _add_field(seq, "context", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.Features")
    _add_field(seq, "feature_lists", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.FeatureLists")
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_feature_proto())
_POOL.Add(_example_proto())


def _cls(name: str) -> type[Message]:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tensorflow.{name}"))


BytesList = _cls("BytesList")
FloatList = _cls("FloatList")
Int64List = _cls("Int64List")
Feature = _cls("Feature")
Features = _cls("Features")
FeatureList = _cls("FeatureList")
FeatureLists = _cls("FeatureLists")
Example = _cls("Example")
SequenceExample = _cls("SequenceExample")

#: What a parsed feature is: float32 or int64 values, or the raw entries of a bytes_list.
FeatureValue = np.ndarray | list[bytes]


def parse_example(data: bytes) -> dict[str, FeatureValue]:
    """Parse a serialized ``tf.train.Example`` into ``{key: values}``.

    ``float_list`` becomes a float32 array, ``int64_list`` an int64 array, ``bytes_list`` a
    list of bytes; a feature with no kind set becomes an empty float32 array (TensorFlow
    treats it as an empty list of whatever type is asked for). Malformed bytes raise
    :class:`RLDSError`.
    """
    try:
        example = Example.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise RLDSError(f"not a valid tf.train.Example ({exc or type(exc).__name__})") from None
    out: dict[str, FeatureValue] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, dtype=np.int64)
        elif kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        else:
            out[key] = np.zeros(0, np.float32)
    return out


def build_example(features: Mapping[str, Any]) -> bytes:
    """Serialize ``{key: values}`` as a ``tf.train.Example``.

    A value is a numpy array or a sequence of numbers (floating point -> ``float_list``;
    integers and bools -> ``int64_list``), or ``bytes``/``str`` or a sequence of them
    (-> ``bytes_list``, text as UTF-8). Arrays of any shape are flattened in C order, which
    is how TFDS stores tensors.
    """
    example = Example()
    fmap = example.features.feature
    for key, value in features.items():
        kind, values = _as_feature_values(key, value)
        getattr(fmap[key], kind).value.extend(values)
    return example.SerializeToString()


def _as_feature_values(key: str, value: Any) -> tuple[str, Sequence[Any]]:
    if isinstance(value, bytes | str):
        return "bytes_list", [_as_bytes(value)]
    if isinstance(value, list | tuple) and value and all(isinstance(v, bytes | str) for v in value):
        return "bytes_list", [_as_bytes(v) for v in value]
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        return "bytes_list", [_as_bytes(v) for v in arr.ravel().tolist()]
    if arr.dtype.kind == "f":
        # tolist() hands protobuf Python floats in one C loop; extending from the numpy array
        # directly goes element by element and is ~5x slower.
        return "float_list", arr.ravel().tolist()
    if arr.dtype.kind == "b":
        return "int64_list", arr.ravel().astype(np.int64).tolist()
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        return "int64_list", arr.ravel().view(np.int64).tolist()  # TFDS bitcasts uint64 to int64
    if arr.dtype.kind in "iu":
        return "int64_list", arr.ravel().tolist()
    raise RLDSError(f"cannot store dtype {arr.dtype} in a tf.train.Example", field=key)


def _as_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise RLDSError(f"expected bytes or str, got {type(value).__name__}")
