"""GET /deployments/{id}: the page a commit status links to.

Plain server-rendered HTML with its style inline: the status, the facts (project, commit,
version, color, trigger), the timeline of stages with their durations, and the step log with
secrets redacted. While the deployment runs, a few lines of script follow its event stream
(/deployments/{id}/events, the same stream as the API's) and update the page in place.

Unless `[server] public_pages` is on, the page needs a read token: an Authorization header, or
a browser session (the sign-in form it shows instead posts to the dashboard's /sign-in).
"""

from __future__ import annotations

import secrets as random
from collections.abc import Sequence

from aiohttp import web

from gatebot.api import sse
from gatebot.api.auth import authenticate
from gatebot.api.dashboard_render import render_sign_in
from gatebot.api.errors import ApiError
from gatebot.api.keys import ENGINE, SECRETS, SETTINGS
from gatebot.api.layout import clock as _clock
from gatebot.api.layout import document as _document
from gatebot.api.layout import duration as _duration
from gatebot.api.layout import e as _e
from gatebot.api.layout import html_response as _html
from gatebot.api.layout import tasks as _tasks
from gatebot.api.openapi import MAX_ID
from gatebot.numbers import parse_count
from gatebot.pipeline.engine import Engine
from gatebot.redact import redact
from gatebot.runtime.base import SlotTask
from gatebot.store.deployments import Deployment, Step

routes = web.RouteTableDef()
MAX_LOG_BYTES = 2 * 1024 * 1024  # a longer log shows its end; the API has all of it

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


def render_deployment(
    d: Deployment,
    steps: list[Step],
    log_lines: list[str],
    *,
    live: bool,
    resume: str,
    nonce: str,
    secrets: Sequence[str],
    tasks: Sequence[SlotTask] = (),
) -> str:
    """The deployment's page (pure): everything escaped, free text redacted. `tasks`: where a
    live swarm release's tasks run."""

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
    if tasks:
        facts.append(("Tasks", _tasks(tasks, secrets)))
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
    body = f"""<nav class="bar"><a class="home" href="/">gatebot</a>
<a href="/projects/{_e(d.project)}">{_e(d.project)}</a></nav>
<header><h1>{_e(d.project)} v{d.version}</h1>
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


def render_missing(deployment_id: int, nonce: str) -> str:
    body = f"<header><h1>gatebot</h1></header><p>Deployment {deployment_id} does not exist.</p>"
    return _document("Not found · gatebot", body, nonce)


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
        page = render_sign_in(problem.message, nonce, next_path=request.path)
        return _html(page, nonce, problem.status)
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
        tasks=await engine.live_tasks(d),
    )
    return _html(page, nonce)


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
