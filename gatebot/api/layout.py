"""The frame every HTML page of gatebot shares: one style sheet, the document around a page's
body, escaping and time formats, and the response headers (a strict Content-Security-Policy:
styles and scripts only with the page's nonce, nothing from outside, forms only to gatebot).

The referrer policy is `same-origin`: nothing leaks to other sites (the forge links), while a
form posted to gatebot carries its real Origin, which the form handlers check (with
`no-referrer` a browser sends ``Origin: null``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from aiohttp import web

from gatebot.redact import redact
from gatebot.runtime.base import SlotTask

STYLE = """
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--run:#9a6700;--dim:#6e7781;
--line:#8884;--soft:#8881}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
max-width:60rem;padding:1rem}
a{color:inherit}a:hover{text-decoration-thickness:2px}
:focus-visible{outline:3px solid #0969da;outline-offset:2px}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;overflow-wrap:anywhere}
h1{font-size:1.35rem;margin:0}h2{font-size:1.05rem;margin:1.5rem 0 .5rem}
.status{font-weight:600;border-radius:1rem;padding:.1rem .7rem;border:1px solid currentColor}
.s-ACTIVE{color:var(--ok)}.s-FAILED{color:var(--bad)}.s-DEPLOYING,.s-PENDING{color:var(--run)}
.s-ROLLED_BACK{color:var(--dim)}
.j-queued,.j-running{color:var(--run)}.j-failed{color:var(--bad)}.j-succeeded{color:var(--ok)}
.j-cancelled,.j-superseded{color:var(--dim)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:1rem 0}
dt{color:var(--dim)}dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
.scroll{overflow-x:auto}
td,th{text-align:left;padding:.3rem .5rem .3rem 0;border-bottom:1px solid var(--line);
vertical-align:top}
td.num{white-space:nowrap;font-variant-numeric:tabular-nums}
tr.failed td{color:var(--bad)}
pre{background:var(--soft);padding:.75rem;overflow:auto;max-height:70vh;font-size:12.5px;
white-space:pre-wrap;overflow-wrap:anywhere}
.error{color:var(--bad);font-weight:600}
.live{color:var(--run)}.dim{color:var(--dim)}
form{display:flex;flex-wrap:wrap;gap:.5rem;margin-top:1rem}
form.inline{display:inline;margin:0}
input,select{font:inherit;padding:.4rem;flex:1 1 16rem;min-width:0}
button{font:inherit;padding:.4rem 1rem;cursor:pointer}
nav.bar{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:center;padding:.4rem 0 .6rem;
margin-bottom:1rem;border-bottom:1px solid var(--line);font-size:.9rem}
nav.bar .home{font-weight:700;text-decoration:none}nav.bar .who{margin-left:auto}
.q-ok{color:var(--ok)}.q-paused,.q-waiting{color:var(--run)}.q-bad{color:var(--bad)}
.projects{display:grid;gap:1rem;grid-template-columns:repeat(auto-fill,minmax(18rem,1fr));
padding:0;list-style:none}
.card{border:1px solid var(--line);border-radius:.5rem;padding:.75rem 1rem;
overflow-wrap:anywhere}
.card h2{margin:0 0 .25rem}.card dl{margin:.5rem 0 0;font-size:.92rem}
.notice{border-left:4px solid var(--run);background:var(--soft);padding:.5rem .75rem}
.notice.problem{border-color:var(--bad)}
.actions{display:grid;gap:0 1.5rem;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr))}
"""


def e(value: object) -> str:
    """`value` as HTML text or attribute value: every markup character escaped."""
    return html.escape(str(value), quote=True)


def tasks(shown: Sequence[SlotTask], secrets: Sequence[str]) -> str:
    """Where a live swarm release's tasks run, a line each: node, address, state, error."""
    return "<br>".join(
        f"{e(t.node)} <code>{e(t.address)}</code> {e(t.state)}"
        + (f" ({e(redact(t.error, secrets))})" if t.error else "")
        for t in shown
    )


def duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f} s"


def clock(iso: str | None) -> str:
    """``2025-01-01T12:00:03.123+00:00`` -> ``2025-01-01 12:00:03 UTC``."""
    if not iso:
        return "—"
    return iso.replace("T", " ")[:19] + " UTC"


def document(title: str, body: str, nonce: str, script: str = "", *, head: str = "") -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        f"{head}"
        f'<title>{e(title)}</title><style nonce="{nonce}">{STYLE}</style></head>\n'
        f"<body>\n{body}\n{script}</body></html>\n"
    )


def html_response(
    text: str, nonce: str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src 'self'; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
            **(headers or {}),
        },
    )
