"""JSON round trips for the frozen policy dataclasses recorded in manifests."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

P = TypeVar("P", bound="PolicyDict")


class PolicyDict:
    """``to_dict``/``from_dict`` for a frozen dataclass whose tuples are stored as JSON lists."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any]) -> P:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)
