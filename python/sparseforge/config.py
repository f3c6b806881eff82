"""Method configurations: dataclasses with the paper's defaults, validation and a versioned JSON form.

A method's config subclasses :class:`Config` and declares each field with :func:`param`, which records
the help text and the allowed values so that validation, ``sparseforge info`` and the CLI share one
source of truth.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, ClassVar

__all__ = ["Config", "ConfigError", "param"]


class ConfigError(ValueError):
    """A config value is outside what the method accepts. ``field`` names it, ``allowed`` says what fits."""

    def __init__(self, method: str, field: str, value: Any, allowed: str):
        self.method, self.field, self.value, self.allowed = method, field, value, allowed
        super().__init__(f"{method}: config field '{field}' = {value!r} is invalid; allowed: {allowed}")


def param(default: Any, help: str, *, range: tuple | None = None, choices: tuple | None = None,
          optional: bool = False) -> Any:
    """Declare a config field.

    ``range=(lo, hi)`` is inclusive at both ends unless written ``range=(lo, hi, "[)")`` etc.;
    ``choices`` lists the allowed values; ``optional`` admits ``None``.
    """
    meta = {"help": help, "range": range, "choices": choices, "optional": optional}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _describe_allowed(meta: dict, ftype: Any) -> str:
    if meta.get("choices") is not None:
        allowed = " | ".join(repr(c) for c in meta["choices"])
    elif meta.get("range") is not None:
        lo, hi, *rest = meta["range"]
        brackets = rest[0] if rest else "[]"
        allowed = f"{brackets[0]}{lo}, {hi}{brackets[1]}"
    else:
        allowed = getattr(ftype, "__name__", str(ftype))
    if meta.get("optional"):
        allowed += " or None"
    return allowed


def _check_type(value: Any, ftype: Any) -> Any:
    """Returns value coerced to ftype where that loses nothing (int -> float), else raises TypeError."""
    origin = typing.get_origin(ftype)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(ftype):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg)
            except TypeError:
                pass
        raise TypeError
    if ftype is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if ftype is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if ftype is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if ftype is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return origin(value)
    return value


@dataclasses.dataclass
class Config:
    """Base class of every method's config. Subclasses are dataclasses whose fields use :func:`param`."""

    #: Bumped when a field's meaning changes; stored in the JSON so old files are read knowingly.
    VERSION: ClassVar[int] = 1
    #: Filled in by the registry: the method this config belongs to.
    METHOD: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Checks every field against its declared type, range and choices; raises :class:`ConfigError`."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            meta = dict(f.metadata)
            value = getattr(self, f.name)
            allowed = _describe_allowed(meta, hints.get(f.name))
            if value is None:
                if meta.get("optional"):
                    continue
                raise ConfigError(self.METHOD, f.name, value, allowed)
            try:
                value = _check_type(value, hints.get(f.name))
            except TypeError:
                raise ConfigError(self.METHOD, f.name, value, allowed) from None
            object.__setattr__(self, f.name, value)
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(self.METHOD, f.name, value, allowed)
            rng = meta.get("range")
            if rng is not None:
                lo, hi, *rest = rng
                brackets = rest[0] if rest else "[]"
                ok_lo = value >= lo if brackets[0] == "[" else value > lo
                ok_hi = value <= hi if brackets[1] == "]" else value < hi
                if not (ok_lo and ok_hi):
                    raise ConfigError(self.METHOD, f.name, value, allowed)
        self.check()

    def check(self) -> None:
        """Cross-field checks; override in a subclass and raise :class:`ConfigError`."""

    # -- introspection ----------------------------------------------------------------------------
    @classmethod
    def describe_fields(cls) -> list[dict]:
        """One dict per field: name, type, default, help, allowed."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            ftype = hints.get(f.name)
            out.append({
                "name": f.name,
                "type": getattr(ftype, "__name__", str(ftype).replace("typing.", "")),
                "default": default,
                "help": f.metadata.get("help", ""),
                "allowed": _describe_allowed(dict(f.metadata), ftype),
            })
        return out

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"method": self.METHOD, "version": self.VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        data = dict(data)
        method = data.pop("method", cls.METHOD)
        if method != cls.METHOD:
            raise ValueError(f"config is for method {method!r}, not {cls.METHOD!r}")
        version = data.pop("version", cls.VERSION)
        if not isinstance(version, int) or version > cls.VERSION:
            raise ValueError(f"{cls.METHOD}: config version {version!r} is newer than this sparseforge "
                             f"understands ({cls.VERSION}); upgrade sparseforge or the plugin")
        if version < cls.VERSION:
            data = cls.migrate(data, version)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(cls.METHOD, unknown[0], data[unknown[0]], f"one of the fields {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    @classmethod
    def migrate(cls, data: dict, version: int) -> dict:
        """Upgrades the fields of an older config version; the default accepts them unchanged."""
        return data
