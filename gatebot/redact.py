"""The one redaction of secrets, for logs, CLI output, API answers, pages and stored text.

`secrets_of(settings)` is every secret value the configuration holds (webhook secrets, forge
tokens, project environment values, `build_args` values, the password in a repository URL),
worked out once per Settings object. `redact(text, secrets)` replaces each of them, anything
shaped like a gatebot API token, and the credentials of every URL in `text` with one mask,
``***``. Everything runs in time linear in the text: it sits on the event loop for every
journal and streamed line.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    from gatebot.settings import Settings

MASK = "***"
MIN_SECRET_LEN = 6  # shorter values ("1", "true", a port) would mask half the text
_API_TOKEN = re.compile(r"gb_[0-9a-f]{12}_[A-Za-z0-9_-]{8,}")
# scheme://userinfo@ : the userinfo runs to the *last* "@" before the next "/" or blank, so a
# raw "@" in a password cannot leave its tail behind, and its length is not capped. The scheme
# is bounded and the userinfo stops at "/", which every later "://" needs, so each character is
# scanned a bounded number of times: linear, whatever the text.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)[^/\s]*@")

_cache: dict[int, tuple[str, ...]] = {}


def redact_url(text: str) -> str:
    """`text` with the ``user:password@`` of every URL in it replaced by ``***@``."""
    if "://" not in text:  # no URL: skip the search (a log line per delivery passes here)
        return text
    return _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + MASK + "@", text)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret (longest first), API token and URL credential masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    if "gb_" in text:  # every API token starts so: skip the search otherwise
        text = _API_TOKEN.sub("gb_" + MASK, text)
    return redact_url(text)


def url_secrets(url: str) -> list[str]:
    """The secret parts of a repository URL's credentials: the password (as written and
    decoded), or for http(s) a bare user name, which is how a token is often passed."""
    try:
        parts = urlsplit(url.strip())
        password, user = parts.password, parts.username
    except ValueError:
        return []
    found: list[str] = []
    if password:
        found += [password, unquote(password)]
    elif user and parts.scheme.lower() in ("http", "https"):
        found += [user, unquote(user)]
    return found


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Every secret value the configuration holds, longest first; worked out once per
    Settings object (later calls return the same tuple)."""
    key = id(settings)
    found = _cache.get(key)
    if found is None:
        found = _collect(settings)
        _cache[key] = found
        weakref.finalize(settings, _cache.pop, key, None)
    return found


def _collect(settings: Settings) -> tuple[str, ...]:
    values: list[str] = []
    for section in (settings.github, settings.gitlab):
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, SecretStr):
                values.append(value.get_secret_value())
    for project in settings.projects:
        if project.webhook_secret is not None:
            values.append(project.webhook_secret.get_secret_value())
        values.extend(settings.container_env(project).values())
        values.extend(project.build_args.values())
        values.extend(url_secrets(project.repo))
    unique = {v for v in values if len(v) >= MIN_SECRET_LEN}
    return tuple(sorted(unique, key=len, reverse=True))
