"""`evolve`: the cheap `dataclasses.replace` of the hot path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from agentserver.domain.values import evolve


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Checked:
    x: int

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("negative")


def test_evolve_equals_replace_and_leaves_the_original() -> None:
    p = Point(1, 2, {"a": "b"})
    q = evolve(p, y=5)
    assert q == dataclasses.replace(p, y=5) == Point(1, 5, {"a": "b"})
    assert p == Point(1, 2, {"a": "b"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.x = 3  # type: ignore[misc]


def test_evolve_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError, match="z"):
        evolve(Point(1), z=3)


def test_evolve_refuses_a_class_that_checks_itself() -> None:
    with pytest.raises(AssertionError, match="replace"):
        evolve(Checked(1), x=-1)
