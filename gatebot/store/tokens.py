"""API tokens and the audit trail of what they changed.

A token is ``gb_<lookup>_<secret>``: `lookup` is a random, non-secret id that finds the row,
`secret` is 256 random bits. Only the SHA-256 of the whole token is stored, so the database
cannot give a token away; the hash is compared in constant time. A token is shown once, when
it is created, and can be revoked; a revoked or unknown token authenticates nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiosqlite

from gatebot.errors import GatebotError
from gatebot.store.db import Database, utcnow

Scope = Literal["read", "deploy"]
SCOPES: tuple[Scope, ...] = ("read", "deploy")
PREFIX = "gb_"
_LOOKUP_LEN = 12
_TOKEN = re.compile(r"^gb_(?P<lookup>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{32,64})$")
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
LAST_USED_EVERY = timedelta(seconds=60)  # how stale last_used_at may get (saves writes)
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


def allows(granted: str, needed: Scope) -> bool:
    """A deploy token may also read; a read token may only read."""
    return granted == "deploy" or granted == needed


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """(lookup, token): a fresh random token and its non-secret lookup id."""
    lookup = secrets.token_hex(_LOOKUP_LEN // 2)
    return lookup, f"{PREFIX}{lookup}_{secrets.token_urlsafe(32)}"


class TokenError(GatebotError):
    """A token cannot be created or revoked as asked (bad name, name taken, unknown)."""


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    lookup: str
    scope: Scope
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Token:
        data = dict(row)
        del data["hash"]
        return cls(**data)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Tokens:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, scope: str = "read") -> tuple[Token, str]:
        """A new token named `name`; returns it and its secret text (shown once, never kept)."""
        if not TOKEN_NAME.fullmatch(name):
            raise TokenError(
                f"{name!r} is not a valid token name: 1 to 64 letters, digits, '_', '.', '@' "
                "or '-', starting with a letter or digit"
            )
        if scope not in SCOPES:
            raise TokenError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        lookup, token = new_token()
        async with self.db.transaction() as conn:
            taken = await (
                await conn.execute(
                    "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
                )
            ).fetchone()
            if taken:
                raise TokenError(f"a token named {name!r} exists: revoke it first")
            cursor = await conn.execute(
                "INSERT INTO tokens (name, lookup, hash, scope, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, lookup, hash_token(token), scope, utcnow()),
            )
            token_id = cursor.lastrowid
        row = await self.db.fetchone("SELECT * FROM tokens WHERE id = ?", (token_id,))
        assert row is not None
        return Token.from_row(row), token

    async def list(self, *, include_revoked: bool = False) -> list[Token]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = await self.db.fetchall(f"SELECT * FROM tokens {where} ORDER BY id")  # noqa: S608
        return [Token.from_row(r) for r in rows]

    async def revoke(self, name: str) -> Token:
        """Revoke the live token named `name` (or whose lookup id is `name`)."""
        now = utcnow()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE (name = ? OR lookup = ?)"
                " AND revoked_at IS NULL",
                (now, name, name),
            )
            if cursor.rowcount == 0:
                raise TokenError(f"no live token named {name!r}")
        row = await self.db.fetchone(
            "SELECT * FROM tokens WHERE (name = ? OR lookup = ?) AND revoked_at = ?"
            " ORDER BY id DESC",
            (name, name, now),
        )
        assert row is not None
        return Token.from_row(row)

    async def live(self, token_id: int) -> Token | None:
        """The token with this id, unless it is revoked (a page session asks at each request,
        which counts as a use of the token)."""
        row = await self.db.fetchone(
            "SELECT * FROM tokens WHERE id = ? AND revoked_at IS NULL", (token_id,)
        )
        if row is None:
            return None
        token = Token.from_row(row)
        await self._touch(token)
        return token

    async def authenticate(self, presented: str) -> Token | None:
        """The live token `presented` is, or None. Hashes are compared in constant time."""
        match = _TOKEN.fullmatch(presented)
        row = (
            await self.db.fetchone(
                "SELECT * FROM tokens WHERE lookup = ?", (match.group("lookup"),)
            )
            if match
            else None
        )
        stored = str(row["hash"]) if row is not None else _DUMMY_HASH
        # Only a well-formed token (ASCII, by its pattern) is hashed: a header with bytes that
        # are not UTF-8 arrives with lone surrogates, which cannot be encoded.
        matches = hmac.compare_digest(stored, hash_token(presented if match else PREFIX))
        if row is None or not matches:
            return None
        token = Token.from_row(row)
        if token.revoked:
            return None
        await self._touch(token)
        return token

    async def _touch(self, token: Token) -> None:
        now = datetime.now(UTC)
        if token.last_used_at is not None:
            last = datetime.fromisoformat(token.last_used_at)
            if now - last < LAST_USED_EVERY:
                return
        await self.db.execute(
            "UPDATE tokens SET last_used_at = ? WHERE id = ?",
            (now.isoformat(timespec="milliseconds"), token.id),
        )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    project: str | None
    job_id: int | None
    detail: str

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> AuditEntry:
        return cls(**dict(row))


class Audit:
    """Who changed what through the API: one row per deploy, rollback or cancel."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        actor: str,
        action: str,
        *,
        project: str | None = None,
        job_id: int | None = None,
        detail: str = "",
    ) -> None:
        await self.db.execute(
            "INSERT INTO audit (at, actor, action, project, job_id, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (utcnow(), actor, action, project, job_id, detail),
        )

    async def recent(self, *, limit: int = 100) -> list[AuditEntry]:
        rows = await self.db.fetchall("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditEntry.from_row(r) for r in rows]
