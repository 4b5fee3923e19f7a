"""A plugin's typed, keyword-only constructor is its recipe schema.

``options_of(factory)`` reads the signature (types, defaults, ranges given with ``Annotated``) and
``validate(factory, table, where)`` checks a recipe table against it, collecting every problem
into one error that names the TOML path, what is valid and the closest match.

Ranges and choices are declared with the markers below::

    def __init__(self, *, eta: Annotated[float, Range(gt=0)] = 0.3,
                 mode: Literal["nominal", "scaled"] = "nominal") -> None: ...
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from .errors import UserError, UserErrors, closest


@dataclass(frozen=True)
class Range:
    """Numeric bounds of an option (any of ge/gt/le/lt)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def check(self, value: float) -> str | None:
        for bound, op, ok in (
            (self.ge, ">=", lambda v, b: v >= b),
            (self.gt, ">", lambda v, b: v > b),
            (self.le, "<=", lambda v, b: v <= b),
            (self.lt, "<", lambda v, b: v < b),
        ):
            if bound is not None and not ok(value, bound):
                return f"must be {op} {bound}"
        return None

    def describe(self) -> str:
        parts = [f"{op} {b}" for b, op in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<"))
                 if b is not None]
        return " and ".join(parts)


@dataclass(frozen=True)
class NonFinite:
    """Marks a float option that takes ``inf`` or ``nan`` (every other number must be finite)."""


@dataclass(frozen=True)
class Doc:
    """A one-line description of an option, shown by ``grpo plugins show``."""

    text: str


_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    name: str
    annotation: Any
    default: Any
    range: Range | None
    doc: str
    nonfinite: bool = False  # takes inf / nan (a NonFinite marker)

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def type_name(self) -> str:
        return type_name(self.annotation)


def _strip_annotated(tp: Any) -> tuple[Any, Range | None, str, bool]:
    rng, doc, nonfinite = None, "", False
    if get_origin(tp) in (Union, types.UnionType):  # Python 3.10 wraps an option defaulting to None in Optional
        inner = [a for a in get_args(tp) if get_origin(a) is typing.Annotated]
        if len(inner) == 1 and all(a is inner[0] or a is type(None) for a in get_args(tp)):
            tp = inner[0]
    if get_origin(tp) is typing.Annotated:
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Range):
                rng = extra
            elif isinstance(extra, Doc):
                doc = extra.text
            elif isinstance(extra, NonFinite):
                nonfinite = True
        return base, rng, doc, nonfinite
    return tp, rng, doc, nonfinite


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _qualname(factory: Any) -> str:
    """A factory's name for an error message (a class or function's qualified name, else its repr)."""
    return factory.__qualname__ if inspect.isclass(factory) or inspect.isfunction(factory) else repr(factory)


def options_of(factory: Any) -> list[Option]:
    """The recipe options of a plugin factory (a class or a function with keyword-only parameters)."""
    if dataclasses.is_dataclass(factory):
        hints = typing.get_type_hints(factory, include_extras=True)
        options = []
        for f in dataclasses.fields(factory):
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if default is dataclasses.MISSING:
                default = _MISSING
            base, rng, doc, nonfinite = _strip_annotated(hints[f.name])
            options.append(Option(f.name, base, default, rng, doc, nonfinite))
        return options
    if inspect.isclass(factory) and factory.__init__ is object.__init__:
        return []  # a class without a constructor has no options
    target = factory.__init__ if inspect.isclass(factory) else factory
    who = _qualname(factory)
    hints = typing.get_type_hints(target, include_extras=True)
    sig = inspect.signature(target)
    options = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{who}: *{p.name} hides the options from the "
                            "recipe schema; list every option as a keyword-only parameter")
        if p.name not in hints:
            raise TypeError(f"{who}: option {p.name!r} has no type annotation")
        if p.kind is not p.KEYWORD_ONLY:
            raise TypeError(f"{who}: option {p.name!r} must be keyword-only (after *)")
        base, rng, doc, nonfinite = _strip_annotated(hints[p.name])
        options.append(Option(p.name, base, p.default, rng, doc, nonfinite))
    return options


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against type `tp`; returns the (possibly converted) value or raises UserError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as e:
                errors.append(e)
        raise UserError(f"expected {type_name(tp)}, got {value!r}", where=where)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        best = closest(str(value), [str(c) for c in choices])
        hint = (f"did you mean {best!r}? " if best else "") + "valid: " + ", ".join(repr(c) for c in choices)
        raise UserError(f"{value!r} is not a valid choice", where=where, hint=hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"expected a list ({type_name(tp)}), got {value!r}", where=where)
        args = get_args(tp)
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected a table, got {value!r}", where=where)
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"expected true or false, got {value!r}", where=where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"expected an integer, got {value!r}", where=where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"expected a number, got {value!r}", where=where)
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"expected a string, got {value!r}", where=where)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"expected {type_name(tp)}, got {value!r}", where=where)


# option names a recipe may still use from before they were renamed, with their new names
RENAMED = {"depths": "pruned_depths", "slide_every": "depth_slide_every", "stop_depth": "depth_stop",
           "active_fraction": "pruning_fraction", "ratio": "width_ratio", "pooled": "width_pooled",
           "across_ranks": "width_pooled_across_ranks", "alpha": "fusion_alpha", "clamp": "advantage_clamp",
           "depth_pruning": "pruned_depths", "width_pruning": "width_ratio"}


def unknown_key(key: str, accepted: list[str], path: str) -> UserError:
    """The error of a key a table does not take: its new name if it was renamed, else the closest."""
    if RENAMED.get(key) in accepted:
        return UserError(f"{key!r} was renamed {RENAMED[key]!r}", where=path, hint=f"write {RENAMED[key]} instead")
    best = closest(key, accepted)
    hint = (f"did you mean {best!r}? " if best else "") + "valid keys: " + (", ".join(accepted) or "(none)")
    return UserError(f"unknown key {key!r}", where=path, hint=hint)


def _non_finite(value: Any) -> float | None:
    """The first inf or nan in a value (in lists and tables too), else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        if (bad := _non_finite(item)) is not None:
            return bad
    return None


def validate(factory: Any, table: dict[str, Any], where: str, *, ignore: tuple[str, ...] = (),
             paths: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate a recipe table against a factory's options; returns the complete keyword arguments.

    Every problem is collected; the raised ``UserErrors`` names each TOML path: ``where.key``, or
    ``paths[key]`` for a key set elsewhere in the recipe (a strategy's short key).
    """
    options = {o.name: o for o in options_of(factory)}
    errors: list[UserError] = []
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key in ignore:
            continue
        path = (paths or {}).get(key, f"{where}.{key}")
        if key not in options:
            errors.append(unknown_key(key, sorted({*options, *ignore}), path))
            continue
        opt = options[key]
        try:
            coerced = _coerce(value, opt.annotation, path)
            if not opt.nonfinite and (bad := _non_finite(coerced)) is not None:
                raise UserError(f"{bad!r} is not a finite number", where=path, hint="give a finite value")
            if opt.range is not None:
                values = coerced if isinstance(coerced, (list, tuple)) else [coerced]
                for v in values:
                    if v is not None and (problem := opt.range.check(v)) is not None:
                        raise UserError(f"{v!r} {problem}", where=path, hint=f"valid range: {opt.range.describe()}")
            kwargs[key] = coerced
        except UserError as e:
            errors.append(e)
    for opt in options.values():
        if opt.name not in kwargs and opt.name not in table:
            if opt.required:
                errors.append(UserError(f"missing required key {opt.name!r} ({opt.type_name})", where=where))
            else:
                kwargs[opt.name] = opt.default
    if errors:
        raise UserErrors(errors)
    return kwargs


def component_table(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A component as a recipe table: ``use`` and every option (None dropped), TOML-ready."""
    return {"use": name, **{k: toml_value(v) for k, v in options.items() if v is not None}}


def toml_value(value: Any) -> Any:
    """A value as it can be written to TOML (tuples become lists; None is dropped by the caller)."""
    if isinstance(value, tuple):
        return [toml_value(v) for v in value]
    if isinstance(value, list):
        return [toml_value(v) for v in value]
    return value
