"""clustervm.core.record: the core's frozen, slotted records (pure logic, no MPI)."""
from __future__ import annotations

import pytest

from clustervm.core.record import FrozenRecordError, record


@record
class Base:
    a: int
    b: str = "b"


@record
class Child(Base):
    c: float = 1.5


def test_fields_defaults_and_inherited_fields_are_set_in_order():
    x = Child(1)
    assert (x.a, x.b, x.c) == (1, "b", 1.5)
    y = Child(2, "x", c=3.0)
    assert (y.a, y.b, y.c) == (2, "x", 3.0)
    assert Child._fields == ("a", "b", "c") and Child.__match_args__ == ("a", "b", "c")
    assert repr(y) == "Child(a=2, b='x', c=3.0)"
    with pytest.raises(TypeError):
        Child()                       # a field without a default is required


def test_records_are_frozen_slotted_and_compare_by_value():
    x = Child(1)
    with pytest.raises(FrozenRecordError, match="field 'a' of Child"):
        x.a = 2
    with pytest.raises(FrozenRecordError):
        del x.b
    assert not hasattr(x, "__dict__")
    assert x == Child(1) and hash(x) == hash(Child(1)) and x != Child(2)
    assert Base(1) != Child(1)        # another class: never equal


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="without a default follows one with"):
        @record
        class Bad(Base):
            d: int
