"""Declared domains of settings: the values a field may take, next to the field.

A settings dataclass declares each field with :func:`setting`, which stores the field's
:class:`Domain` in its metadata. :func:`check_settings` then checks a whole tree of settings
(nested dataclasses, lists of them) against their domains and names the first field outside
its domain; :meth:`Domain.outside` lists values outside a domain, so a property test can try
every field with values it must refuse. A bound may name a sibling field (``lt="max_length"``):
relations within a group are declared like ranges.

The checks here are the generic ones (type, range, choices, text, list length); what depends
on other groups or on the machine is checked by the group that knows it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AnyOf",
    "Choice",
    "Domain",
    "Flag",
    "Free",
    "Items",
    "Number",
    "Table",
    "Text",
    "check_settings",
    "domain_of",
    "setting",
]

_FIELD_METADATA_KEY = "domain"


@dataclass(frozen=True)
class Domain:
    """The values one field may take. ``nullable``: None (YAML ``null``) is one of them."""

    nullable: bool = dataclasses.field(default=False, kw_only=True)

    def problem(self, value: Any, siblings: Any = None) -> str | None:
        """Why ``value`` is outside the domain, or None when it is inside.

        ``siblings``: the settings object holding the field (for bounds naming a sibling).
        """
        if value is None:
            return None if self.nullable else f"must be {self.describe()}, got null"
        return self._problem(value, siblings)

    def _problem(self, value: Any, siblings: Any) -> str | None:
        raise NotImplementedError

    def describe(self) -> str:
        """The domain in words, as messages say it (``an integer >= 1``)."""
        raise NotImplementedError

    def outside(self) -> list[Any]:
        """Values outside the domain (wrong type, out of range, unknown choice, empty text)."""
        return [] if self.nullable else [None]

    def _or_null(self, text: str) -> str:
        return f"{text} or null" if self.nullable else text


@dataclass(frozen=True)
class Number(Domain):
    """An int or float within bounds; a bound is a number or a sibling field's name.

    ``also``: values allowed besides the range (``-1``: "no limit" for Lightning's counts).
    """

    kind: type = int
    ge: float | str | None = None
    gt: float | str | None = None
    le: float | str | None = None
    lt: float | str | None = None
    also: tuple[float, ...] = ()

    def _problem(self, value: Any, siblings: Any) -> str | None:
        integral = isinstance(value, int) and not isinstance(value, bool)
        if not (integral or (self.kind is float and isinstance(value, float))):
            noun = "an integer" if self.kind is int else "a number"
            return (
                f"must be {self._or_null(f'{noun} {self._range(siblings)}'.strip())}, got {value!r}"
            )
        if value in self.also:
            return None
        bounds = [(op, b) for op, b in self._bounds(siblings) if b is not None]
        if math.isnan(value) or not all(_compare(value, op, b) for op, b in bounds):
            return f"must be {self.describe(siblings)}, got {value!r}"
        return None

    def _bounds(self, siblings: Any) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if isinstance(bound, str):  # a sibling field; unset (null) bounds nothing
                value = getattr(siblings, bound, None) if siblings is not None else None
                found.append((op, None if value is None else _Named(bound, value)))
            else:
                found.append((op, bound))
        return found

    def _range(self, siblings: Any = None) -> str:
        """``in [0, 1)``, ``>= 1``, ``> 0``: the range as messages write it."""
        bounds = self._bounds(siblings)
        (_, ge), (_, gt), (_, le), (_, lt) = bounds
        low, high = (
            (ge, "[") if ge is not None else (gt, "("),
            (le, "]") if le is not None else (lt, ")"),
        )
        if low[0] is not None and high[0] is not None:
            return f"in {low[1]}{_show(low[0])}, {_show(high[0])}{high[1]}"
        return " and ".join(f"{op} {_show(b)}" for op, b in bounds if b is not None)

    def describe(self, siblings: Any = None) -> str:
        text = self._range(siblings) or ("an integer" if self.kind is int else "a number")
        if self.also:
            text += f" (or {', '.join(str(v) for v in self.also)})"
        return self._or_null(text)

    def outside(self) -> list[Any]:
        found: list[Any] = [*super().outside(), "abc"]
        if self.kind is int:
            found.append(1.5)
        for op, bound in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)):
            if isinstance(bound, int | float) and not isinstance(bound, bool):
                step = 1 if self.kind is int else 0.5
                value = {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[op]
                found.append(self.kind(value))
        return [v for v in found if v not in self.also]


@dataclass(frozen=True)
class _Named:
    """A bound that is a sibling field's value, shown with the field's name."""

    name: str
    value: float


def _show(bound: Any) -> str:
    if isinstance(bound, _Named):
        return f"{bound.name}={bound.value}"
    if isinstance(bound, int) and bound >= 2**16 and bound & (bound - 1) == 0:
        return f"2**{bound.bit_length() - 1}"  # 2**32, not 4294967296
    return str(bound)


def _compare(value: float, op: str, bound: Any) -> bool:
    bound = bound.value if isinstance(bound, _Named) else bound
    return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]


@dataclass(frozen=True)
class Choice(Domain):
    """One of ``options`` (names of a registry, modes); ``options`` may be a callable that
    returns them, so a registry filled later is read when the check runs."""

    options: Sequence[Any] | Callable[[], Sequence[Any]] = ()

    def choices(self) -> list[Any]:
        return list(self.options() if callable(self.options) else self.options)

    def _problem(self, value: Any, siblings: Any) -> str | None:
        if isinstance(value, Mapping | list) or value not in self.choices():
            return f"unknown {value!r}; must be {self.describe()}"
        return None

    def describe(self) -> str:
        return self._or_null(f"one of {self.choices()}")

    def outside(self) -> list[Any]:
        return [*super().outside(), "not_a_choice"]


@dataclass(frozen=True)
class Flag(Domain):
    """True or false."""

    def _problem(self, value: Any, siblings: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"

    def describe(self) -> str:
        return self._or_null("true or false")

    def outside(self) -> list[Any]:
        return [*super().outside(), "maybe"]


@dataclass(frozen=True)
class Text(Domain):
    """A string; ``empty``: the empty string is allowed."""

    empty: bool = False

    def _problem(self, value: Any, siblings: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be {self.describe()}, got {value!r}"
        if not value.strip() and not self.empty:
            return f"must be {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        return self._or_null("text" if self.empty else "non-empty text")

    def outside(self) -> list[Any]:
        return [*super().outside(), ["abc"], *([] if self.empty else [""])]


@dataclass(frozen=True)
class Items(Domain):
    """A list whose every item is in ``item``, of ``min_len`` to ``max_len`` items."""

    item: Domain = dataclasses.field(default_factory=lambda: Free())
    min_len: int = 0
    max_len: int | None = None

    def _problem(self, value: Any, siblings: Any) -> str | None:
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            return f"must be {self.describe()}, got {value!r}"
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            return f"must be {self.describe()}, got {len(value)} items"
        for i, item in enumerate(value):
            problem = self.item.problem(item, siblings)
            if problem is not None:
                return f"item {i}: {problem}"
        return None

    def describe(self) -> str:
        size = f"{self.min_len}+" if self.max_len is None else f"{self.min_len}-{self.max_len}"
        if self.max_len == self.min_len:
            size = str(self.min_len)
        return self._or_null(f"a list of {size} items, each {self.item.describe()}")

    def outside(self) -> list[Any]:
        found = [*super().outside()]
        if self.min_len > 0:
            found.append([])
        found += [[bad] for bad in self.item.outside() if bad is not None][:1]
        return found


@dataclass(frozen=True)
class Table(Domain):
    """A mapping (pass-through keyword arguments, a strategy's options), its keys and values
    judged by the group that uses it."""

    def _problem(self, value: Any, siblings: Any) -> str | None:
        return None if isinstance(value, Mapping) else f"must be a mapping, got {value!r}"

    def describe(self) -> str:
        return self._or_null("a mapping")

    def outside(self) -> list[Any]:
        return [*super().outside(), "abc"]


@dataclass(frozen=True)
class AnyOf(Domain):
    """In at least one of ``members`` (an int count or a fraction, a name or a mapping)."""

    members: tuple[Domain, ...] = ()

    def _problem(self, value: Any, siblings: Any) -> str | None:
        problems = [m.problem(value, siblings) for m in self.members]
        if any(p is None for p in problems):
            return None
        # A list judged by the list member, a mapping by the mapping member: say its reason.
        shaped = [p for m, p in zip(self.members, problems, strict=True) if _fits(m, value)]
        return shaped[0] if len(shaped) == 1 else f"must be {self.describe()}, got {value!r}"

    def describe(self) -> str:
        return self._or_null(" or ".join(m.describe() for m in self.members))

    def outside(self) -> list[Any]:
        found = [*super().outside()]
        for member in self.members:
            found += [v for v in member.outside() if v is not None and v not in found]
        return [v for v in found if self.problem(v) is not None]


def _fits(member: Domain, value: Any) -> bool:
    """Whether ``value`` has the shape ``member`` takes (a list, a mapping, a single value)."""
    listed = isinstance(value, list | tuple)
    return isinstance(member, Items) == listed and isinstance(member, Table) == isinstance(
        value, Mapping
    )


@dataclass(frozen=True)
class Free(Domain):
    """Anything the group's own check judges (a mapping of pass-through arguments, a value
    whose type depends on another key); ``nullable`` defaults to True."""

    nullable: bool = dataclasses.field(default=True, kw_only=True)

    def _problem(self, value: Any, siblings: Any) -> str | None:
        return None

    def describe(self) -> str:
        return "anything"


def setting(default: Any = dataclasses.MISSING, domain: Domain | None = None, **kwargs: Any) -> Any:
    """A dataclass field with its declared domain; a list or dict default becomes a factory."""
    metadata = {_FIELD_METADATA_KEY: domain or Free()}
    if isinstance(default, list | dict):
        copy = default.copy()
        return dataclasses.field(default_factory=lambda: copy.copy(), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def domain_of(field: dataclasses.Field[Any]) -> Domain | None:
    """The domain a field declared with :func:`setting` (None for a nested group or none)."""
    return field.metadata.get(_FIELD_METADATA_KEY)


def check_settings(
    settings: Any, prefix: str, first: Sequence[str] = ()
) -> Iterator[tuple[str, str]]:
    """(key, problem) for every field of ``settings`` (a dataclass, nested ones and lists
    of them included) outside its declared domain, keys dotted under ``prefix``; the fields
    named in ``first`` are checked before the others."""
    fields = sorted(dataclasses.fields(settings), key=lambda f: f.name not in first)
    for field in fields:
        value = getattr(settings, field.name)
        key = f"{prefix}.{field.name}" if prefix else field.name
        domain = domain_of(field)
        if domain is not None:
            problem = domain.problem(value, settings)
            if problem is not None:
                yield key, problem
                continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from check_settings(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item) and not isinstance(item, type):
                    yield from check_settings(item, f"{key}.{i}")
