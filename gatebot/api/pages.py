"""GET /deployments/{id}: the page a commit status links to.

Plain server-rendered HTML with its style inline: the status, the facts (project, commit,
version, color, trigger), the timeline of stages with their durations, and the step log with
secrets redacted. While the deployment runs, a few lines of script follow its event stream
(/deployments/{id}/events, the same stream as the API's) and update the page in place.

Unless `[server] public_pages` is on, the page needs a read token: an Authorization header, or
the cookie its sign-in form sets (the form posts the token to the page itself).
"""

from __future__ import annotations

import html
import secrets as random
from collections.abc import Sequence

from aiohttp import web

from gatebot.api import sse
from gatebot.api.auth import COOKIE, authenticate, check_token
from gatebot.api.errors import ApiError
from gatebot.api.keys import ENGINE, SECRETS, SETTINGS
from gatebot.api.openapi import MAX_ID
from gatebot.numbers import parse_count
from gatebot.pipeline.engine import Engine
from gatebot.redact import redact
from gatebot.store.deployments import Deployment, Step

routes = web.RouteTableDef()
MAX_LOG_BYTES = 2 * 1024 * 1024  # a longer log shows its end; the API has all of it

STYLE = """
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--run:#9a6700;--dim:#6e7781}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
max-width:60rem;padding:1rem}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center}
h1{font-size:1.35rem;margin:0}h2{font-size:1.05rem;margin:1.5rem 0 .5rem}
.status{font-weight:600;border-radius:1rem;padding:.1rem .7rem;border:1px solid currentColor}
.s-ACTIVE{color:var(--ok)}.s-FAILED{color:var(--bad)}.s-DEPLOYING,.s-PENDING{color:var(--run)}
.s-ROLLED_BACK{color:var(--dim)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:1rem 0}
dt{color:var(--dim)}dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.3rem .5rem .3rem 0;border-bottom:1px solid #8884;
vertical-align:top}
td.num{white-space:nowrap;font-variant-numeric:tabular-nums}
tr.failed td{color:var(--bad)}
pre{background:#8881;padding:.75rem;overflow:auto;max-height:70vh;font-size:12.5px;
white-space:pre-wrap;overflow-wrap:anywhere}
.error{color:var(--bad);font-weight:600}
.live{color:var(--run)}
form{display:flex;flex-wrap:wrap;gap:.5rem;margin-top:1rem}
input{font:inherit;padding:.4rem;flex:1 1 16rem}button{font:inherit;padding:.4rem 1rem}
"""

SCRIPT = """
(function(){
var log=document.getElementById("log"),rows=document.getElementById("steps"),
st=document.getElementById("status"),live=document.getElementById("live");
var src=new EventSource(location.pathname+"/events?after="+encodeURIComponent(RESUME));
function cell(tr,text,cls){var td=document.createElement("td");td.textContent=text;
if(cls)td.className=cls;tr.appendChild(td);}
src.addEventListener("status",function(e){var d=JSON.parse(e.data);
st.textContent=d.status;st.className="status s-"+d.status;
document.title=document.title.replace(/ [A-Z_]+ /," "+d.status+" ");});
src.addEventListener("step",function(e){var s=JSON.parse(e.data),tr=document.createElement("tr");
if(/^failed/.test(s.message))tr.className="failed";cell(tr,s.stage);
cell(tr,s.duration==null?"":s.duration.toFixed(2)+" s","num");cell(tr,s.message);
rows.appendChild(tr);});
src.addEventListener("log",function(e){
var end=log.scrollTop+log.clientHeight>=log.scrollHeight-8;
log.appendChild(document.createTextNode(e.data+"\\n"));if(end)log.scrollTop=log.scrollHeight;});
src.addEventListener("end",function(){src.close();
live.textContent="finished; reload for the final state";});
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f} s"


def _clock(iso: str | None) -> str:
    """``2025-01-01T12:00:03.123+00:00`` -> ``2025-01-01 12:00:03 UTC``."""
    if not iso:
        return "—"
    return iso.replace("T", " ")[:19] + " UTC"


def _document(title: str, body: str, nonce: str, script: str = "") -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f'<title>{_e(title)}</title><style nonce="{nonce}">{STYLE}</style></head>\n'
        f"<body>\n{body}\n{script}</body></html>\n"
    )


def render_deployment(
    d: Deployment,
    steps: list[Step],
    log_lines: list[str],
    *,
    live: bool,
    resume: str,
    nonce: str,
    secrets: Sequence[str],
) -> str:
    """The deployment's page (pure): everything escaped, free text redacted."""

    def text(value: str | None) -> str:
        return _e(redact(value, secrets)) if value else "—"

    commit = d.commit_sha or ""
    facts = [
        ("Project", _e(d.project)),
        ("Version", f"v{d.version}"),
        (
            "Commit",
            f'<code title="{_e(commit)}">{_e(commit[:12]) or "—"}</code> {text(d.commit_message)}'
            if commit
            else "—",
        ),
        ("Color", f"{_e(d.color)} (port {_e(d.port)})" if d.color else "—"),
        ("Trigger", _e(d.trigger)),
        ("Created", _clock(d.created_at)),
        ("Finished", _clock(d.finished_at)),
    ]
    if d.image:
        facts.insert(4, ("Image", f"<code>{_e(d.image)}</code>"))
    if d.error:
        facts.append(
            ("Error", f'<span class="error">{_e(d.failed_stage or "")}: {text(d.error)}</span>')
        )
    rows = "".join(
        f"<tr{' class=failed' if s.message.startswith('failed') else ''}>"
        f'<td>{_e(s.stage)}</td><td class="num">{_duration(s.duration)}</td>'
        f"<td>{text(s.message)}</td></tr>"
        for s in steps
    )
    log = _e("".join(redact(line, secrets) + "\n" for line in log_lines))
    state = (
        '<p id="live" class="live">live: this page follows the deployment as it runs</p>'
        if live
        else '<p id="live"></p>'
    )
    body = f"""<header><h1>{_e(d.project)} v{d.version}</h1>
<span id="status" class="status s-{_e(d.status)}">{_e(d.status)}</span></header>
<dl>{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>
{state}
<h2>Timeline</h2>
<table><thead><tr><th>Stage</th><th>Time</th><th>What happened</th></tr></thead>
<tbody id="steps">{rows}</tbody></table>
<h2>Log</h2>
<pre id="log">{log}</pre>"""
    script = (
        f'<script nonce="{nonce}">var RESUME="{_e(resume)}";{SCRIPT}</script>\n' if live else ""
    )
    return _document(f"{d.project} v{d.version} {d.status} · gatebot", body, nonce, script)


def render_sign_in(message: str, nonce: str) -> str:
    body = f"""<header><h1>gatebot</h1></header>
<p>{_e(message)}</p>
<p>Paste an API token with scope <code>read</code> (made with
<code>gatebot token create NAME</code>). It is kept in a cookie for this browser session.</p>
<form method="post"><input type="password" name="token" autocomplete="off"
placeholder="gb_…" required aria-label="token"><button>Show the deployment</button></form>"""
    return _document("Sign in · gatebot", body, nonce)


def render_missing(deployment_id: int, nonce: str) -> str:
    body = f"<header><h1>gatebot</h1></header><p>Deployment {deployment_id} does not exist.</p>"
    return _document("Not found · gatebot", body, nonce)


def _html(text: str, nonce: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def check_access(request: web.Request) -> None:
    """Pass when pages are public or the request has a read token; else ApiError 401/403."""
    if not request.app[SETTINGS].server.public_pages:
        await authenticate(request, "read", cookie=True)


def _secrets(request: web.Request) -> tuple[str, ...]:
    found: tuple[str, ...] = request.app[SECRETS]
    return found


def _deployment_id(request: web.Request) -> int:
    value = parse_count(request.match_info["id"], high=MAX_ID)
    return value if value is not None else 0


def _read_log(engine: Engine, d: Deployment) -> tuple[list[str], int]:
    """The log's complete lines (its last MAX_LOG_BYTES) and the offset after them."""
    path = engine.log_path(d.id)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], 0
    start = max(0, size - MAX_LOG_BYTES)
    lines, offset = [], start
    while True:
        found = sse.read_new_lines(path, offset)
        if not found:
            break
        lines += [line for line, _ in found]
        offset = found[-1][1]
    if start:
        lines = ["… (the start of the log is cut; the API has all of it)", *lines[1:]]
    return lines, offset


@routes.get(r"/deployments/{id:\d+}")
async def deployment_page(request: web.Request) -> web.Response:
    nonce = random.token_urlsafe(12)
    try:
        await check_access(request)
    except ApiError as problem:
        return _html(render_sign_in(problem.message, nonce), nonce, problem.status)
    engine = request.app[ENGINE]
    d = await engine.store.deployments.get(_deployment_id(request))
    if d is None:
        return _html(render_missing(_deployment_id(request), nonce), nonce, 404)
    steps = await engine.store.deployments.steps(d.id)
    lines, offset = _read_log(engine, d)
    live = not await sse.is_finished(engine, d)
    resume = f"{steps[-1].id if steps else 0}.{offset}"
    page = render_deployment(
        d,
        steps,
        lines,
        live=live,
        resume=resume,
        nonce=nonce,
        secrets=_secrets(request),
    )
    return _html(page, nonce)


@routes.post(r"/deployments/{id:\d+}")
async def sign_in(request: web.Request) -> web.Response:
    """The sign-in form posts here: a good token becomes a cookie and the page is shown."""
    nonce = random.token_urlsafe(12)
    form = await request.post()
    token = str(form.get("token", "")).strip()
    settings = request.app[SETTINGS]
    try:
        await check_token(request.app, token or None, "read")
    except ApiError as problem:
        return _html(render_sign_in(problem.message, nonce), nonce, problem.status)
    response = web.Response(status=303, headers={"Location": request.path})
    response.set_cookie(
        COOKIE,
        token,
        path="/deployments",
        httponly=True,
        samesite="Strict",
        secure=settings.server.public_url.startswith("https://"),
    )
    return response


@routes.get(r"/deployments/{id:\d+}/events")
async def deployment_events(request: web.Request) -> web.StreamResponse:
    await check_access(request)
    engine = request.app[ENGINE]
    d = await engine.store.deployments.get(_deployment_id(request))
    if d is None:
        raise ApiError(404, f"deployment {_deployment_id(request)} does not exist")
    return await sse.follow(
        request, engine, d.id, _secrets(request), resume=request.query.get("after")
    )
