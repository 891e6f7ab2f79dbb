"""The deployment status lifecycle, enforced in this one place.

    PENDING -> DEPLOYING -> ACTIVE -> ROLLED_BACK -> ACTIVE (rollback)
                         -> FAILED

PENDING may fail too (the source stage runs before DEPLOYING is recorded), and reconciliation
may mark an ACTIVE deployment FAILED when its container cannot be brought back.
"""

from __future__ import annotations

from enum import StrEnum

from gatebot.errors import IllegalTransition


class Status(StrEnum):
    PENDING = "PENDING"
    DEPLOYING = "DEPLOYING"
    ACTIVE = "ACTIVE"
    ROLLED_BACK = "ROLLED_BACK"
    FAILED = "FAILED"


ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.DEPLOYING, Status.FAILED}),
    Status.DEPLOYING: frozenset({Status.ACTIVE, Status.FAILED}),
    Status.ACTIVE: frozenset({Status.ROLLED_BACK, Status.FAILED}),
    Status.ROLLED_BACK: frozenset({Status.ACTIVE}),
    Status.FAILED: frozenset(),
}


def check_transition(deployment_id: int, old: Status, new: Status) -> None:
    """Raise IllegalTransition unless `old -> new` is a step of the lifecycle."""
    if new not in ALLOWED[old]:
        raise IllegalTransition(deployment_id, old, new)
