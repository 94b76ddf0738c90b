"""One registry pattern for everything pluggable.

Families, streams, probes, parameterizations and executors are each a
:class:`Registry`; a new entry is one decorator::

    @FAMILIES.register("my_mlp", options=MyOptions)
    def build_my_mlp(width: int, options: MyOptions) -> Model: ...

Keyword arguments beyond ``options`` and ``description`` are the entry's *traits*:
facts declared as data that the core reads without calling the entry (a stream's
``loss``, a family's ``network_rules``); each registry documents its own.

Lookup of an unknown name raises a :class:`~widthwise.errors.UserError` that lists
what is available, so a typo in a spec teaches the right spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from widthwise.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object, the pydantic model that validates its options, and its traits."""

    name: str
    obj: T
    options: type[BaseModel] | None
    description: str
    traits: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A named collection of entries of one kind (e.g. ``"family"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        options: type[BaseModel] | None = None,
        description: str = "",
        **traits: Any,
    ) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a name may be registered once.

        ``traits`` are stored on the entry as declared (e.g. ``loss="mse"`` for a stream).
        """

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, options, doc, dict(traits))
            return obj

        return add

    def entry(self, name: str) -> Entry[T]:
        """The entry called ``name``; unknown names raise a UserError listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"Unknown {self.kind} {name!r}. Available: {', '.join(sorted(self._entries))}"
            ) from None

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise a UserError listing the known ones."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def validate_options(self, name: str, options: dict[str, Any] | None) -> BaseModel | None:
        """Validate ``options`` with the entry's model; raises pydantic.ValidationError."""
        model = self.entry(name).options
        if model is None:
            if options:
                raise UserError(f"{self.kind} {name!r} takes no options, got {sorted(options)}")
            return None
        return model.model_validate(options or {})
