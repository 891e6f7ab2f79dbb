"""The deployment status lifecycle: each documented step passes, every other pair is refused."""

from __future__ import annotations

import itertools

import pytest

from gatebot.errors import GatebotError, IllegalTransition
from gatebot.model import ALLOWED, Status, check_transition

# Written out from the lifecycle in the README and gatebot/model.py's docstring, not from ALLOWED:
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


def test_the_transition_table_allows_exactly_the_lifecycle() -> None:
    """The pairs gatebot's table allows, read from the table itself, are the documented ones:
    none missing and none extra (the parametrized tests below go through check_transition)."""
    table = {(old.value, new.value) for old, targets in ALLOWED.items() for new in targets}
    assert table == LIFECYCLE
    assert set(ALLOWED) == set(Status), "every status has a row, FAILED an empty one"


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
