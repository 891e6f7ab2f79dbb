"""The deployment status lifecycle: each documented step passes, every other pair is refused."""

from __future__ import annotations

import itertools

import pytest

from gatebot.errors import GatebotError, IllegalTransition
from gatebot.model import Status, check_transition

# Written out from the lifecycle in gatebot/model.py's docstring, not from ALLOWED:
#     PENDING -> DEPLOYING -> ACTIVE -> ROLLED_BACK -> ACTIVE (rollback)
#                          -> FAILED
# PENDING may fail (source stage), ACTIVE may fail (reconciliation).
LIFECYCLE: set[tuple[str, str]] = {
    ("PENDING", "DEPLOYING"),
    ("DEPLOYING", "ACTIVE"),
    ("ACTIVE", "ROLLED_BACK"),
    ("ROLLED_BACK", "ACTIVE"),
    ("DEPLOYING", "FAILED"),
    ("PENDING", "FAILED"),
    ("ACTIVE", "FAILED"),
}
NAMES = ["PENDING", "DEPLOYING", "ACTIVE", "ROLLED_BACK", "FAILED"]
ALL_PAIRS = list(itertools.product(NAMES, NAMES))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LIFECYCLE]


def test_the_statuses_are_exactly_the_documented_ones() -> None:
    assert sorted(s.value for s in Status) == sorted(NAMES)


def test_pairs_add_up() -> None:
    assert len(ALL_PAIRS) == 25
    assert len(ILLEGAL) == 25 - len(LIFECYCLE) == 18


@pytest.mark.parametrize(("old", "new"), sorted(LIFECYCLE))
def test_allowed_transition_passes(old: str, new: str) -> None:
    check_transition(7, Status(old), Status(new))  # raises IllegalTransition if refused


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_every_other_transition_raises(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(7, Status(old), Status(new))
    assert isinstance(caught.value, GatebotError)
    assert str(caught.value) == f"deployment 7: illegal status change {old} -> {new}"


def test_failed_is_final() -> None:
    for new in NAMES:
        with pytest.raises(IllegalTransition):
            check_transition(1, Status.FAILED, Status(new))
