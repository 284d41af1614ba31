"""One config system for every config of the project: :class:`ConfigModel`, a strict pydantic model.

Every config (the HOPE model, seed training, adaptation, and whatever else is read from JSON)
derives from :class:`ConfigModel`, which gives each of them the same behaviour:

* **Strict keys and types.** An unknown key is an error that names it and where it was
  (``unknown field 'lora_rnak' in LocalTrainerJobConfig (known: [...])``): a typo must not
  fall back to a default without a word. Types are strict: ``true`` is not an integer, ``"10"``
  is not a number, ``2.5`` is not a step count; integers are accepted where floats are meant,
  and NaN and infinity are refused. Keys starting with ``_`` (``"_comment"``) are ignored at
  every level, since JSON has no comments.
* **Range checks that name the field.** Bounds are declared on the field (``Field(ge=1)``)
  and cross-field rules in validators; every error is one :class:`ConfigError` (a
  ``ValueError``) whose message starts with the dotted path of the field
  (``HopeConfig.vqvae.decay: Input should be less than 1, got 1.0``).
* **Relative paths resolve against the file.** Fields typed :data:`PathStr` that hold a
  relative path are made absolute against the directory of the file they were read from
  (:meth:`ConfigModel.load`); in overrides (``--set``, API requests) against the working
  directory.
* **One override syntax.** ``--set a.b=v`` for ``continuonbrain train`` and ``adapt`` alike
  (:func:`parse_set`), and the same dotted keys in Python and in the API's job requests
  (:meth:`ConfigModel.with_overrides`, ``load(path, overrides=...)``). Values are JSON when
  they parse as JSON (``50``, ``true``, ``["a"]``), strings otherwise.
* **Renamed keys keep loading.** A config whose layout changed lists its old flat names in
  :attr:`ConfigModel.legacy_keys` (old name -> dotted new name), so files and overrides
  written for the old layout still load (``max_steps`` -> ``budgets.max_steps``).

Why pydantic rather than a strict dataclass base: pydantic is already a dependency (the
HTTP API's request models are pydantic), it does strict typing, unknown-key refusal, nested
models, bounds and error locations with a validator that is tested far beyond what a
fifth hand-written "dataclass from JSON" loader would be, and it gives every config a JSON
Schema (:meth:`ConfigModel.json_schema`, field docs included) for free, so the API can
document and check job requests against the very models the trainers run with. Its import
costs ~40 ms, and it imports nothing heavy (no torch).

A leaf module: it imports nothing of the project, so ``hope`` (which imports nothing of the
others) may use it.
"""

from __future__ import annotations

import copy
import json
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo
from pydantic import model_validator as _model_validator

__all__ = [
    "ConfigError",
    "ConfigModel",
    "PathStr",
    "apply_overrides",
    "parse_set",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field (dotted path) and the problem."""


# --------------------------------------------------------------------------- paths


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _resolve(value: str, info: ValidationInfo) -> str:
    """A relative path made absolute against ``context["base_dir"]`` (the config file's
    directory, or the working directory for overrides); unchanged without a context."""
    base = (info.context or {}).get("base_dir")
    if base is not None and value and not os.path.isabs(value):
        return str((Path(base) / value).resolve())
    return value


#: A filesystem path held as a string (``os.PathLike`` accepted); relative paths are resolved
#: against the file the config was read from (see the module doc).
PathStr = Annotated[str, BeforeValidator(_fspath), AfterValidator(_resolve)]


# --------------------------------------------------------------------------- the base


#: An old flat key's new place: a dotted key (the value moves as is), or a function of the
#: value giving ``{dotted key: value}`` (for a key whose meaning changed shape).
Legacy = str | Callable[[Any], Mapping[str, Any]]


class _ConfigMeta(type(BaseModel)):  # type: ignore[misc]
    """Direct construction (``HopeConfig(obs_dim=-1)``) raises :class:`ConfigError` too.

    Done here rather than in ``__init__``: pydantic calls a model's own ``__init__`` for nested
    models as well, which would turn one error into several nested ones that lose the full
    dotted path."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise config_error(cls, exc) from None


class ConfigModel(BaseModel, metaclass=_ConfigMeta):
    """The base of every config; see the module doc for what it guarantees."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
        protected_namespaces=(),
        use_attribute_docstrings=True,
        revalidate_instances="never",
    )

    #: How errors name this config (default: the class name); nested models carry their
    #: path (``"HopeConfig.vqvae"``) only when validated on their own.
    config_name: ClassVar[str | None] = None
    #: Old flat keys (files and overrides written before a layout change) -> their new place.
    legacy_keys: ClassVar[Mapping[str, Legacy]] = {}

    # -- construction and errors

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(type(self), exc) from None

    @classmethod
    def owner_name(cls) -> str:
        return cls.config_name or cls.__name__

    @_model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        """Drop ``_comment`` keys, turn tuples into lists, move legacy keys, then :meth:`_upgrade`."""
        if not isinstance(data, Mapping):
            return data
        data = {k: _lists(v) for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
        if cls.legacy_keys:
            data = _move_legacy(cls, data)
        return cls._upgrade(data)

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Subclasses: adjust the raw input (fill derived defaults) before field validation."""
        return data

    # -- dicts, JSON and files

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], owner: str | None = None, *, base_dir: str | Path | None = None
    ) -> Self:
        """Validate ``data``; relative :data:`PathStr` fields resolve against ``base_dir``
        when it is given. Raises :class:`ConfigError` naming the field; ``owner`` prefixes the
        message (a file name)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{owner or cls.owner_name()} must be a JSON object, got {type(data).__name__}")
        context = {"base_dir": str(base_dir)} if base_dir is not None else None
        try:
            return cls.model_validate(dict(data), context=context)
        except ValidationError as exc:
            err = config_error(cls, exc)
            raise ConfigError(f"{owner}: {err}" if owner else str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, every field (defaults included), in declaration order."""
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Self:
        """Read a JSON config file (relative paths resolve against its directory), then apply
        dotted ``overrides`` (:meth:`with_overrides`). Errors name the file and the field."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: the config does not parse as JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a JSON object, got {type(data).__name__}")
        cfg = cls.from_dict(data, str(path), base_dir=path.resolve().parent)
        return cfg.with_overrides(overrides) if overrides else cfg

    def with_overrides(self, overrides: Mapping[str, Any], *, base_dir: str | Path | None = None) -> Self:
        """A copy with dotted ``overrides`` applied (``{"thermal.max_temp_c": 85}``; old flat
        names in :attr:`legacy_keys` are accepted too). Relative paths in them resolve
        against ``base_dir`` (default: the working directory). The copy is validated whole."""
        if not overrides:
            return self.model_copy(deep=True)
        data = apply_overrides(self.to_dict(), _translate_legacy(type(self), overrides))
        return type(self).from_dict(data, base_dir=base_dir if base_dir is not None else os.getcwd())

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this config (field docs as descriptions)."""
        return cls.model_json_schema()


# --------------------------------------------------------------------------- overrides


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["budgets.max_steps=50", 'lora.layers=["fast_loop.head"]', "log_dir=/tmp/x"]`` ->
    ``{"budgets.max_steps": 50, ...}``: the ``--set KEY=VALUE`` syntax of ``train`` and
    ``adapt``. Values are JSON when they parse as JSON, strings otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"--set expects KEY=VALUE with a dotted KEY (a.b.c), got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key] = value
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with each dotted key of ``overrides`` set. Missing objects on
    the way are created (validation then tells whether the key exists); a ``*`` part stands
    for every key present at that level (``components.*.max_steps``)."""
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(parts):
            raise ConfigError(f"override key {key!r} has an empty part")
        _set(out, parts, value, key, 0)
    return out


def _set(node: dict[str, Any], parts: list[str], value: Any, key: str, depth: int) -> None:
    part = parts[depth]
    names = list(node) if part == "*" else [part]
    if part == "*" and not names:
        raise ConfigError(f"cannot set {key}: {'.'.join(parts[:depth]) or 'the config'} has no entries for '*'")
    for name in names:
        if depth == len(parts) - 1:
            node[name] = copy.deepcopy(value)
            continue
        nxt = node.get(name)
        if nxt is None:
            nxt = node[name] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join([*parts[:depth], name])} is not an object")
        _set(nxt, parts, value, key, depth + 1)


def _translate_legacy(cls: type[ConfigModel], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        target = cls.legacy_keys.get(key) if key not in cls.model_fields else None
        if target is None:
            out[key] = value
        elif isinstance(target, str):
            out[target] = value
        else:
            try:
                out.update(target(value))
            except ValueError as exc:
                raise ConfigError(f"{cls.owner_name()}: {exc}") from None
    return out


def _move_legacy(cls: type[ConfigModel], data: dict[str, Any]) -> dict[str, Any]:
    """Old flat keys of ``data`` moved to their dotted places (an explicit new key wins a
    conflict only if both are equal; otherwise the conflict is an error)."""
    moved: dict[str, Any] = {}
    for key in [k for k in data if k in cls.legacy_keys and k not in cls.model_fields]:
        target = cls.legacy_keys[key]
        value = data.pop(key)
        moved.update({target: value} if isinstance(target, str) else target(value))
    for dotted, value in moved.items():
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break  # e.g. a section given as a non-object: validation reports that
        else:
            if parts[-1] in node and node[parts[-1]] != value:
                raise ValueError(
                    f"{dotted} is given twice, under its name and under an old flat name "
                    f"({node[parts[-1]]!r} and {value!r})"
                )
            node[parts[-1]] = value
    return data


def _lists(value: Any) -> Any:
    """Tuples become lists (JSON has no tuples; Python callers may pass them)."""
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- errors


def config_error(cls: type[BaseModel], exc: ValidationError) -> ConfigError:
    """One :class:`ConfigError` for a pydantic error: each problem as ``Owner.dotted.field:
    message, got value``, joined with ``; ``."""
    owner = cls.owner_name() if issubclass(cls, ConfigModel) else cls.__name__
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        if err["type"] == "extra_forbidden" and loc:
            where = owner + "".join(f".{p}" for p in loc[:-1])
            known = _known_fields(cls, loc[:-1])
            problems.append(f"unknown field {loc[-1]!r} in {where}" + (f" (known: {known})" if known else ""))
            continue
        msg = str(err.get("msg", "invalid"))
        if len(loc) >= 2 and loc[-1] == "[key]":  # a bad key of a dict field: name the field, then the key
            loc, msg = loc[:-2], f"key {loc[-2]!r}: {msg}"
            problems.append(f"{owner}{''.join(f'.{p}' for p in loc)}: {msg}")
            continue
        name = owner + "".join(f".{p}" for p in loc)
        if err["type"] == "value_error":  # a validator's own words: they name the field already
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{name}: {msg}")
            continue
        if err["type"] == "assertion_error":
            msg = msg.removeprefix("Assertion failed, ")
        shown = err.get("input")
        got = "" if isinstance(shown, dict) else f", got {_short(shown)}"
        problems.append(f"{name}: {msg}{got}")
    return ConfigError("; ".join(problems) or str(exc))


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _known_fields(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the model found at ``loc`` below ``cls`` (None when not a model)."""
    annotation: Any = cls
    for part in loc:
        model = _model_in(annotation)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            continue
        args = [a for a in typing.get_args(_strip_optional(annotation))]
        if not args:
            return None
        annotation = args[-1]  # dict[K, V] -> V, list[T] -> T
    model = _model_in(annotation)
    return sorted(model.model_fields) if model is not None else None


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
