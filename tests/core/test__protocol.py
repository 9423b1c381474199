"""``Run.native``: a dict of the framework's objects in which an adapter holds some weakly."""

from __future__ import annotations

import gc
import weakref

import pytest

from callbridge import Run
from callbridge._protocol import NativeObjects


class Trainer:
    """Stands in for a framework's trainer: any object that supports weak references."""


def test_a_weakly_held_entry_reads_as_its_object_while_it_lives() -> None:
    trainer, args = Trainer(), {"lr": 0.1}
    run = Run("hf")
    run.native = {"trainer": weakref.ref(trainer), "args": args}

    assert isinstance(run.native, NativeObjects)  # assignment converts
    assert run.native["trainer"] is trainer
    assert run.native.get("trainer") is trainer
    assert run.native == {"trainer": trainer, "args": args}
    assert sorted(run.native) == ["args", "trainer"]
    assert "trainer" in run.native
    assert repr(run.native) == "NativeObjects({'trainer', 'args'})"  # names only, never values


def test_a_weakly_held_entry_goes_with_its_object_and_holds_nothing() -> None:
    trainer = Trainer()
    alive = weakref.ref(trainer)
    run = Run("hf", native={"trainer": weakref.ref(trainer), "args": {"lr": 0.1}})
    gc.disable()  # freed by reference counting alone: no cycle collector involved
    try:
        del trainer
        assert alive() is None
    finally:
        gc.enable()

    assert "trainer" not in run.native
    assert run.native.get("trainer") is None
    with pytest.raises(KeyError, match="trainer"):
        run.native["trainer"]
    assert list(run.native) == ["args"]
    assert len(run.native) == 1


def test_values_set_as_they_are_are_held_strongly() -> None:
    run = Run("lightning")
    run.native["pl_module"] = module = Trainer()
    alive = weakref.ref(module)
    del module
    assert alive() is run.native["pl_module"]
    del run.native["pl_module"]
    assert dict(run.native) == {}
