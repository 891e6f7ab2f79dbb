"""The dashboard's HTML, as pure functions from what the handlers read to text.

The overview (`/`), a project's page (`/projects/{name}`), a job's page while it waits for its
deployment, and the sign-in form. Nothing here does I/O, so each page is tested by rendering
it: every value from outside (commit messages, branch names, triggers, errors) goes through
`e()`, free text is redacted first, and the only script is the nonce'd one of the overview.
The buttons (forms carrying the session's CSRF token) are rendered only for a signed-in
session whose token has scope `deploy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from gatebot.api.layout import clock, document, e
from gatebot.api.layout import tasks as tasks_html
from gatebot.model import LIVE_ONCE, JobState, Status
from gatebot.redact import redact, redact_url
from gatebot.runtime.base import SlotTask
from gatebot.settings import ProjectSettings, Settings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job

HISTORY_PAGE = 20  # deployments per page of a project's history
MAX_PAGE = 100_000
PLAIN_BAR = '<nav class="bar"><a class="home" href="/">gatebot</a></nav>'  # nobody signed in


# --- what the pages show ----------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """Who looks: a token's name and scope (None: public pages, nobody signed in) and, for a
    browser session, its CSRF token (None: a Bearer header, which cannot post forms)."""

    name: str | None = None
    scope: str | None = None
    csrf: str | None = None

    @property
    def can_deploy(self) -> bool:
        return self.csrf is not None and self.scope == "deploy"


@dataclass(frozen=True)
class Bar:
    """The top bar: gatebot's version, the queue's state as /readyz says it, who looks."""

    version: str
    queue: str
    queue_class: str
    viewer: Viewer


@dataclass(frozen=True)
class ProjectState:
    """A project at a glance."""

    project: ProjectSettings
    active: Deployment | None
    deploying: Deployment | None  # the deployment in progress, when known
    busy_by: str | None  # who holds the project now ("deploy by token:ci"), None when idle
    stage: str | None  # the in-progress deployment's latest stage
    queued: int
    failure: Deployment | None  # the newest deployment, when it failed
    commit_base: str | None  # the forge's URL of a commit, without the SHA
    tasks: Sequence[SlotTask] = ()  # where a live swarm release's tasks run


def queue_state(checks: dict[str, str]) -> tuple[str, str]:
    """(label, css class) of the queue from /readyz's checks."""
    queue = checks.get("queue", "")
    if checks.get("docker", "ok") != "ok" or "waiting for the Docker engine" in queue:
        return "waiting for Docker", "q-waiting"
    if queue == "ok":
        return "running", "q-ok"
    if queue == "paused":
        return "paused", "q-paused"
    if queue.startswith("not started: starting"):
        return "starting", "q-waiting"
    if checks.get("database", "ok") != "ok":
        return "database unavailable", "q-bad"
    return queue or "unknown", "q-bad"


def commit_base(settings: Settings, project: ProjectSettings) -> str | None:
    """Where the forge shows a commit of the project, without the SHA; None when unknown.

    The web address comes from the forge's API address: ``https://api.github.com`` is
    github.com, GitHub Enterprise's ``https://HOST/api/v3`` is HOST, GitLab's
    ``https://HOST/api/v4`` is HOST.
    """
    if not project.forge_repo:
        return None
    repo = "/".join(quote(part, safe="") for part in project.forge_repo.split("/"))
    if project.forge == "gitlab":
        web = settings.gitlab.api_url.rstrip("/").removesuffix("/api/v4")
        return f"{web}/{repo}/-/commit/"
    api = settings.github.api_url.rstrip("/")
    web = "https://github.com" if api == "https://api.github.com" else api.removesuffix("/api/v3")
    return f"{web}/{repo}/commit/"


def first_line(text: str | None, limit: int = 100) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def took(d: Deployment) -> str:
    """How long a deployment took, from its creation to its end (or activation)."""
    end = d.finished_at or d.activated_at
    if end is None:
        return "running" if d.status in (Status.PENDING, Status.DEPLOYING) else "—"
    try:
        started = datetime.fromisoformat(d.created_at)
        seconds = (datetime.fromisoformat(end) - started).total_seconds()
    except ValueError:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def page_number(raw: str | None) -> int:
    """?page=N: a whole number from 1 to MAX_PAGE; anything else is page 1."""
    if raw is None or not raw.isdigit() or len(raw) > 6:
        return 1
    return min(max(int(raw), 1), MAX_PAGE)


# --- pieces -----------------------------------------------------------------------------------


def _commit(d: Deployment, base: str | None, secrets: tuple[str, ...]) -> str:
    sha = d.commit_sha or ""
    if not sha:
        return "—"
    short = f'<code title="{e(sha)}">{e(sha[:7])}</code>'
    if base:
        short = f'<a href="{e(base + sha)}" rel="noreferrer">{short}</a>'
    message = first_line(redact(d.commit_message or "", secrets))
    return f"{short} {e(message)}" if message else short


def _status(d: Deployment) -> str:
    return f'<span class="status s-{e(d.status)}">{e(d.status)}</span>'


def _error(d: Deployment, secrets: tuple[str, ...]) -> str:
    if not d.error:
        return ""
    stage = f"{d.failed_stage}: " if d.failed_stage else ""
    return f'<span class="error">{e(stage)}{e(redact(d.error, secrets))}</span>'


def _csrf(viewer: Viewer) -> str:
    return f'<input type="hidden" name="csrf" value="{e(viewer.csrf or "")}">'


def top_bar(bar: Bar) -> str:
    viewer = bar.viewer
    if viewer.name is None:
        who = '<a class="who" href="/sign-in">Sign in</a>'
    else:
        out = (
            f'<form class="inline" method="post" action="/sign-out">{_csrf(viewer)}'
            "<button>Sign out</button></form>"
            if viewer.csrf
            else ""
        )
        who = f'<span class="who">{e(viewer.name)} ({e(viewer.scope)}) {out}</span>'
    return (
        '<nav class="bar" aria-label="gatebot">'
        f'<a class="home" href="/">gatebot</a><span class="dim">{e(bar.version)}</span>'
        f'<span>queue: <span id="queue" class="{e(bar.queue_class)}">{e(bar.queue)}</span></span>'
        '<a href="/metrics">metrics</a><a href="/api/v1/openapi.json">API</a>'
        f"{who}</nav>"
    )


def _notice(message: str | None, problem: bool) -> str:
    if not message:
        return ""
    cls = "notice problem" if problem else "notice"
    role = "alert" if problem else "status"
    return f'<p class="{cls}" role="{role}" id="notice">{e(message)}</p>'


# --- the overview -----------------------------------------------------------------------------


def project_card(state: ProjectState, secrets: tuple[str, ...]) -> str:
    p, active = state.project, state.active
    name = e(p.name)
    facts = []
    if active is None:
        facts.append(("Live", '<span class="dim">nothing live yet</span>'))
    else:
        facts += [
            ("Live", f'<a href="/deployments/{active.id}">v{active.version}</a> {_status(active)}'),
            ("Commit", _commit(active, state.commit_base, secrets)),
            ("Color", e(active.color or "—")),
            ("Since", e(clock(active.activated_at))),
            ("Trigger", e(active.trigger)),
        ]
        if state.tasks:
            facts.append(("Tasks", tasks_html(state.tasks, secrets)))
    if state.busy_by is not None:
        d = state.deploying
        what = f'<a href="/deployments/{d.id}">v{d.version}</a> ' if d else ""
        stage = f"at <strong>{e(state.stage)}</strong>, " if state.stage else ""
        facts.append(("Now", f'<span class="live">{what}{stage}{e(state.busy_by)}</span>'))
    facts.append(("Waiting", f"{state.queued} job{'s' if state.queued != 1 else ''}"))
    if state.failure is not None:
        f = state.failure
        facts.append(
            ("Failed", f'<a href="/deployments/{f.id}">v{f.version}</a> {_error(f, secrets)}')
        )
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<li class="card" data-project="{name}"><h2><a href="/projects/{name}">{name}</a></h2>'
        f'<span class="dim">{e(p.branch)} · {e(redact_url(p.repo))}</span><dl>{rows}</dl></li>'
    )


def overview_projects(states: list[ProjectState], secrets: tuple[str, ...]) -> str:
    if not states:
        return "<li>No project is configured.</li>"
    return "".join(project_card(s, secrets) for s in states)


OVERVIEW_SCRIPT = """
(function(){
var box=document.getElementById("projects"),q=document.getElementById("queue"),
live=document.getElementById("live");
var src=new EventSource("/events");
src.addEventListener("overview",function(e){var d=JSON.parse(e.data);
box.innerHTML=d.projects;q.textContent=d.queue;q.className=d.queueClass;
live.textContent="live: this page updates itself";});
src.onerror=function(){live.textContent="reconnecting…";};
})();
"""


def render_overview(
    bar: Bar, states: list[ProjectState], nonce: str, secrets: tuple[str, ...]
) -> str:
    body = f"""{top_bar(bar)}
<header><h1>Projects</h1><span id="live" class="live dim" role="status"></span></header>
<ul id="projects" class="projects">{overview_projects(states, secrets)}</ul>"""
    script = f'<script nonce="{nonce}">{OVERVIEW_SCRIPT}</script>\n'
    return document("gatebot", body, nonce, script)


# --- a project's page -------------------------------------------------------------------------


def _job_row(job: Job, viewer: Viewer, secrets: tuple[str, ...]) -> str:
    what = f"{job.kind}"
    if job.sha:
        what += f" {job.sha[:7]}"
    if job.target:
        what += f" to v{job.target}" if job.target.isdigit() else f" to {job.target}"
    link = f'<a href="/jobs/{job.id}">{job.id}</a>'
    if job.deployment_id:
        link += f' · <a href="/deployments/{job.deployment_id}">deployment</a>'
    cancel = ""
    if job.state in (JobState.QUEUED, JobState.WAITING) and viewer.can_deploy:
        cancel = (
            f'<form class="inline" method="post" action="/jobs/{job.id}/cancel">{_csrf(viewer)}'
            f'<button aria-label="Cancel job {job.id}">Cancel</button></form>'
        )
    error = f'<span class="error">{e(redact(job.error, secrets))}</span>' if job.error else ""
    if job.state is JobState.WAITING:
        error = f'<span class="dim">{e(gate_text(job.gate))}</span>' + error
    return (
        f'<tr data-job="{job.id}"><td class="num">{link}</td><td>{e(what)}</td>'
        f'<td class="j-{e(job.state)}">{e(job.state)}</td><td>{e(job.trigger)}</td>'
        f'<td class="num">{e(clock(job.created_at))}</td><td>{error}{cancel}</td></tr>'
    )


def _history_row(d: Deployment, base: str | None, secrets: tuple[str, ...]) -> str:
    return (
        f'<tr data-deployment="{d.id}"><td class="num"><a href="/deployments/{d.id}">'
        f"v{d.version}</a></td><td>{_status(d)}</td><td>{_commit(d, base, secrets)}</td>"
        f'<td>{e(d.trigger)}</td><td class="num">{e(clock(d.created_at))}</td>'
        f'<td class="num">{e(took(d))}</td><td>{_error(d, secrets)}</td></tr>'
    )


def _actions(
    state: ProjectState, choices: list[Deployment], viewer: Viewer, secrets: tuple[str, ...]
) -> str:
    p = state.project
    name = e(p.name)
    options = "".join(
        f'<option value="{d.version}">v{d.version} · {e((d.commit_sha or "")[:7])} '
        f"{e(first_line(redact(d.commit_message or '', secrets), 60))}</option>"
        for d in choices
    )
    return f"""<h2>Actions</h2><div class="actions">
<form method="post" action="/projects/{name}/deploy">{_csrf(viewer)}
<input name="sha" aria-label="commit SHA to deploy" autocomplete="off" spellcheck="false"
placeholder="SHA (empty: head of {e(p.branch)})" pattern="[0-9a-fA-F]{{7,64}}">
<button>Deploy</button></form>
<form method="post" action="/projects/{name}/rollback">{_csrf(viewer)}
<select name="to" aria-label="release to roll back to">
<option value="">the previous release</option>{options}</select>
<button>Roll back</button></form></div>"""


def render_project(
    bar: Bar,
    state: ProjectState,
    *,
    history: list[Deployment],
    page: int,
    more: bool,
    jobs: list[Job],
    choices: list[Deployment],
    nonce: str,
    secrets: tuple[str, ...],
    notice: str | None = None,
    problem: bool = False,
) -> str:
    """A project's page: its state, its jobs (Cancel on queued ones), Deploy and Roll back
    for a deploy session, and one page of its history."""
    p = state.project
    viewer = bar.viewer
    actions = _actions(state, choices, viewer, secrets) if viewer.can_deploy else ""
    job_rows = "".join(_job_row(j, viewer, secrets) for j in jobs)
    jobs_table = (
        '<div class="scroll"><table><thead><tr><th>Job</th><th>What</th><th>State</th>'
        f'<th>Trigger</th><th>Queued</th><th></th></tr></thead><tbody id="jobs">{job_rows}'
        "</tbody></table></div>"
        if jobs
        else '<p class="dim">No jobs yet.</p>'
    )
    rows = "".join(_history_row(d, state.commit_base, secrets) for d in history)
    pages = []
    if page > 1:
        pages.append(f'<a href="?{urlencode({"page": page - 1})}" rel="prev">newer</a>')
    if more:
        pages.append(f'<a href="?{urlencode({"page": page + 1})}" rel="next">older</a>')
    history_table = (
        '<div class="scroll"><table><thead><tr><th>Version</th><th>Status</th><th>Commit</th>'
        "<th>Trigger</th><th>Started</th><th>Took</th><th>Error</th></tr></thead>"
        f'<tbody id="history">{rows}</tbody></table></div>'
        if history
        else '<p class="dim">No deployments yet.</p>'
    )
    body = f"""{top_bar(bar)}
{_notice(notice, problem)}
<header><h1>{e(p.name)}</h1></header>
<ul class="projects">{project_card(state, secrets)}</ul>
{actions}
<h2 id="jobs-title">Recent jobs</h2>{jobs_table}
<h2>Deployments{f" (page {page})" if page > 1 else ""}</h2>{history_table}
<p>{" · ".join(pages)}</p>"""
    return document(f"{p.name} · gatebot", body, nonce)


def rollback_choices(history: list[Deployment], active: Deployment | None) -> list[Deployment]:
    """Releases a rollback may bring back: once live, and not the live one."""
    return [
        d
        for d in history
        if d.status in LIVE_ONCE and (active is None or d.id != active.id) and d.image
    ]


# --- a job's page, sign-in, messages ----------------------------------------------------------


def gate_text(gate: dict[str, Any] | None) -> str:
    """What a gated job waits (or waited) for, in words: "waits for checks: test, lint"."""
    if not gate:
        return "waits for its commit's checks"
    pending = [str(n) for n in gate.get("pending") or []]
    failed = [str(n) for n in gate.get("failed") or []]
    if failed:
        return f"checks failed: {', '.join(failed)}"
    if pending:
        return f"waits for checks: {', '.join(pending)}"
    return str(gate.get("reason") or "waits for its commit's checks")


def render_job(bar: Bar, job: Job, nonce: str, secrets: tuple[str, ...]) -> str:
    """A job that has no deployment yet: it reloads itself until it has one (the handler then
    sends the browser on to the deployment's page), or says how it ended."""
    waiting = job.state in (JobState.QUEUED, JobState.WAITING, JobState.RUNNING)
    head = '<meta http-equiv="refresh" content="1">' if waiting else ""
    note = (
        '<p class="live" role="status">waiting for the job to start its deployment; this page '
        "goes there by itself</p>"
        if waiting
        else ""
    )
    error = f'<p class="error">{e(redact(job.error, secrets))}</p>' if job.error else ""
    if job.gate is not None:
        error = f'<p id="gate">{e(gate_text(job.gate))}</p>' + error
    what = f"{job.kind} of {job.project}"
    body = f"""{top_bar(bar)}
<header><h1>Job {job.id}: {e(what)}</h1>
<span id="state" class="status j-{e(job.state)}">{e(job.state)}</span></header>
{note}{error}
<dl><dt>Project</dt><dd><a href="/projects/{e(job.project)}">{e(job.project)}</a></dd>
<dt>Trigger</dt><dd>{e(job.trigger)}</dd><dt>Queued</dt><dd>{e(clock(job.created_at))}</dd></dl>"""
    return document(f"job {job.id} {job.state} · gatebot", body, nonce, head=head)


def render_sign_in(
    message: str, nonce: str, *, next_path: str = "/", bar: Bar | None = None
) -> str:
    """The sign-in form: an API token opens a session; it posts to /sign-in."""
    body = f"""{top_bar(bar) if bar else PLAIN_BAR}
<header><h1>Sign in</h1></header>
<p id="notice">{e(message)}</p>
<p>Paste an API token (made with <code>gatebot token create NAME</code>): scope
<code>read</code> shows everything, scope <code>deploy</code> also gives the buttons. The
browser keeps only a session cookie, not the token.</p>
<form method="post" action="/sign-in"><input type="hidden" name="next" value="{e(next_path)}">
<input type="password" name="token" autocomplete="off" placeholder="gb_…" required
aria-label="API token" autofocus><button>Sign in</button></form>"""
    return document("Sign in · gatebot", body, nonce)


def render_message(bar: Bar | None, title: str, message: str, nonce: str) -> str:
    nav = top_bar(bar) if bar else PLAIN_BAR
    body = f'{nav}\n<header><h1>{e(title)}</h1></header>\n<p id="notice">{e(message)}</p>'
    return document(f"{title} · gatebot", body, nonce)
