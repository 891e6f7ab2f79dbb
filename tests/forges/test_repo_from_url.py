"""repo_from_url: a project's forge repository name, derived from its clone URL."""

from __future__ import annotations

import pytest

from gatebot.forges import repo_from_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/shop.git", "acme/shop"),
        ("https://github.com/acme/shop", "acme/shop"),
        ("https://github.com/acme/shop/", "acme/shop"),
        ("http://git.example.com:8080/acme/shop.git", "acme/shop"),
        ("https://user:p%40ss@gitlab.example.com/acme/shop.git", "acme/shop"),
        ("https://gitlab.example.com/group/sub/shop.git", "group/sub/shop"),
        ("ssh://git@github.com/acme/shop.git", "acme/shop"),
        ("ssh://git@gitlab.example.com:2222/group/sub/shop.git", "group/sub/shop"),
        ("ssh://git@host.example/~alice/shop.git", "alice/shop"),
        ("git@github.com:acme/shop.git", "acme/shop"),
        ("git@gitlab.example.com:group/sub/shop", "group/sub/shop"),
        ("deploy@git.example.com:/acme/shop.git", "acme/shop"),
        ("file:///srv/git/acme/shop.git", "acme/shop"),
        ("file:///tmp/pytest-1/repo", "pytest-1/repo"),
        ("  https://github.com/acme/shop.git\n", "acme/shop"),
    ],
)
def test_repo_from_url(url: str, expected: str) -> None:
    assert repo_from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://github.com/",
        "https://github.com/shop.git",  # only one segment
        "file:///shop.git",
        "ftp://example.com/acme/shop.git",
        "https:///acme/shop",  # no host
        "not a url",
        "/srv/git/acme/shop.git",  # a bare path is not a URL gatebot accepts
        "https://github.com/acme/../shop",
        "https://[::1/acme/shop",  # unparseable
    ],
)
def test_repo_from_url_gives_none_when_there_is_no_repository(url: str) -> None:
    assert repo_from_url(url) is None
