"""The one fault-injection mechanism (engine/faults.py): how GROW_MEGATRON_FAULT is read."""

import pytest

from grow_megatron.engine.faults import ENV, InjectedFault, fault_armed, fault_point
from grow_megatron.study.layout import Step


def test_process_points_fire_at_their_step_only(monkeypatch):
    monkeypatch.setenv(ENV, "save.written@3:raise")
    fault_point("save.written", 2)
    fault_point("save.sealed", 3)
    with pytest.raises(InjectedFault):
        fault_point("save.written", 3)
    assert not fault_armed("step.grads", 3)


def test_caller_points_are_armed_on_every_rank_and_never_fire_themselves(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(ENV, "step.grads@4:nan")
    assert fault_armed("step.grads", 4) and not fault_armed("step.grads", 3)
    fault_point("step.grads", 4)  # the loop poisons the gradients; the point itself does nothing
    monkeypatch.setenv(ENV, "study.step@analyze:lidas:0")  # a study step holds colons; stop is its action
    assert fault_armed("study.step", Step("analyze", "lidas", 0))
    assert not fault_armed("study.step", Step("analyze", "lidas", 1))
    assert not fault_armed("step.grads", 4)


@pytest.mark.parametrize("spec", ["save.nowhere", "save.written:explode", "step.grads@2:kill", "save.done:nan"])
def test_a_bad_spec_is_refused(monkeypatch, spec):
    monkeypatch.setenv(ENV, spec)
    with pytest.raises(ValueError, match=ENV):
        fault_point("save.done", 1)
