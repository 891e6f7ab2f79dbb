"""The `gatebot` command line: parse arguments, load settings, call into the package.

Exit codes: 0 success; 1 the operation failed (deploy, rollback, engine or nginx trouble);
2 bad configuration, unknown project or bad usage; 3 the project is busy (locked).

Every line the CLI writes goes through one `Console`, which redacts it with the
configuration's secrets the way the API and the pages are redacted; the only exception is the
new token `token create` prints, once, on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from gatebot.errors import (
    ConfigError,
    GatebotError,
    LockHeld,
    StageFailed,
    UnknownProject,
    describe,
)
from gatebot.logs import configure_logging
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent
from gatebot.redact import redact, secrets_of
from gatebot.settings import ProjectSettings, Settings, config_path, load_settings
from gatebot.store.deployments import Deployment

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


class Console:
    """Where the CLI writes: every line redacted with `secrets` (and API tokens and URL
    credentials) before it reaches stdout or stderr."""

    def __init__(
        self, secrets: Sequence[str] = (), out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.secrets = tuple(secrets)
        self._out = out
        self._err = err

    def _stream(self, err: bool) -> TextIO:
        if err:
            return self._err or sys.stderr
        return self._out or sys.stdout

    def say(self, text: str = "", *, err: bool = False) -> None:
        stream = self._stream(err)
        stream.write(redact(text, self.secrets) + "\n")
        stream.flush()

    def json(self, data: Any) -> None:
        self.say(json.dumps(data, indent=2))

    def reveal(self, text: str) -> None:
        """Write `text` unredacted: only for a new API token, shown once on purpose."""
        stream = self._stream(False)
        stream.write(text + "\n")
        stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatebot", description="Zero-downtime blue-green deploys on Docker and nginx."
    )
    parser.add_argument("-c", "--config", help="TOML configuration file (or GATEBOT_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    deploy = commands.add_parser("deploy", help="build and deploy a project's commit")
    deploy.add_argument("project")
    deploy.add_argument("--sha", help="exact commit to deploy (default: the branch head)")
    deploy.add_argument(
        "--skip-gate",
        action="store_true",
        help="a gated project: deploy without checking the commit's checks (audited)",
    )

    rollback = commands.add_parser("rollback", help="bring an earlier release back")
    rollback.add_argument("project")
    rollback.add_argument("--to", help="version (3 or v3) or commit SHA of a once-live release")

    status = commands.add_parser("status", help="what is live, per project")
    status.add_argument("project", nargs="?")
    status.add_argument("--json", action="store_true")

    history = commands.add_parser("history", help="a project's deployments, newest first")
    history.add_argument("project")
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=int, default=20)

    check = commands.add_parser(
        "check-config", help="validate the configuration and print the projects"
    )
    check.add_argument(
        "--write-nginx",
        action="store_true",
        help="also write every project's nginx files into conf_dir (then test and reload nginx)",
    )
    commands.add_parser("serve", help="run the webhook server and the deploy queue")
    commands.add_parser(
        "intake", help="one of serve's webhook intake processes ([server] intake_listen)"
    )
    reconcile = commands.add_parser(
        "reconcile", help="repair Docker and nginx state from the database (also run at start)"
    )
    reconcile.add_argument("project", nargs="?")
    reconcile.add_argument(
        "--prune", action="store_true", help="remove the nginx files of unconfigured projects"
    )
    reconcile.add_argument(
        "--adopt",
        action="store_true",
        help="first record gatebot's running containers as releases of projects the database "
        "has no deployments of (after a lost database)",
    )

    token = commands.add_parser("token", help="API tokens: create, list, revoke")
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token and print it (shown only once)")
    create.add_argument("name", help="who or what uses it, e.g. ci or alice")
    create.add_argument(
        "--scope",
        choices=["read", "deploy"],
        default="read",
        help="read: look only; deploy: also deploy, roll back, cancel (default: read)",
    )
    listing = actions.add_parser("list", help="the tokens (never their secret)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("name", help="the token's name (or its id)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    configure_logging("text", level)
    console = Console()  # until the configuration is read: tokens and URL credentials only
    try:
        settings = load_settings(config_path(args.config))
        console = Console(secrets_of(settings))
        configure_logging(settings.server.log_format, level, secrets=console.secrets)
        if args.command == "check-config":
            if args.write_nginx:
                asyncio.run(write_nginx(settings, console))
            return check_config(settings, console)
        if args.command == "serve":
            return serve(settings, verbose=args.verbose)
        if args.command == "intake":
            from gatebot.intake_process import run_intake

            return run_intake(settings)
        if args.command == "token":
            return asyncio.run(cmd_token(settings, args, console))
        return asyncio.run(run_command(settings, args, console))
    except (ConfigError, UnknownProject) as exc:
        console.say(f"gatebot: {exc}", err=True)
        return EXIT_USAGE
    except LockHeld as exc:
        console.say(f"gatebot: {exc}", err=True)
        return EXIT_BUSY
    except GatebotError as exc:  # StageFailed among them
        console.say(f"gatebot: {exc}", err=True)
        if isinstance(exc, StageFailed) and exc.logs:
            console.say("the container's last log lines:", err=True)
            console.say("\n".join(f"  | {line}" for line in exc.logs.splitlines()), err=True)
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as exc:  # a read-only or full folder, a broken database
        console.say(f"gatebot: {describe(exc)}", err=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.say("gatebot: interrupted; the next start repairs any half-done deploy", err=True)
        return 130


def serve(settings: Settings, *, verbose: bool) -> int:
    """Run until SIGTERM or SIGINT; running deploys finish first, queued jobs stay queued.
    A second signal cuts running deploys off at once: exit code 128 + its number."""
    import uvloop
    from aiohttp import web

    from gatebot.api.keys import QUEUE
    from gatebot.app import create_app

    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    log = logging.getLogger("gatebot")
    log.info("gatebot serving on http://%s", settings.server.listen)
    app = create_app(settings)
    loop = uvloop.new_event_loop()  # libuv's loop: 1.14x the deliveries per second
    exit_code = EXIT_OK

    def stop(signum: signal.Signals) -> None:
        nonlocal exit_code
        if exit_code == EXIT_OK and not stopping:
            stopping.append(signum)
            log.info(
                "%s: stopping; running deploys get up to %gs to finish (a second %s cuts them "
                "off)",
                signum.name,
                settings.queue.shutdown_timeout,
                signum.name,
            )
            raise web.GracefulExit()
        if exit_code != EXIT_OK:
            log.warning("%s again: already stopping now", signum.name)
            return
        exit_code = 128 + signum.value
        queue = app.get(QUEUE)
        running = queue.cut_short() if queue is not None else 0
        log.warning(
            "%s again: stopping now; %d running job(s) cut off (the next start repairs their "
            "deployments and queues them again); exit code %d",
            signum.name,
            running,
            exit_code,
        )

    stopping: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
        handle_signals=False,  # stop() above
        loop=loop,
    )
    log.info("gatebot stopped")
    return exit_code


def check_config(settings: Settings, console: Console) -> int:
    console.say(f"{settings.source}: OK, {len(settings.projects)} project(s)")
    console.say(f"  data_dir: {settings.server.data_dir}")
    console.say(f"  docker:   {settings.docker_host}")
    console.say(f"  nginx:    {settings.nginx.conf_dir}")
    for p in settings.projects:
        site = f", site {p.site.server_name} on {p.site.listen}" if p.site else ""
        console.say(
            f"  {p.name}: {p.repo} @ {p.branch}; blue :{p.ports[0]}, green :{p.ports[1]}"
            f" -> {p.container_port} ({p.network}); health {p.health.path}{site}"
        )
    return EXIT_OK


async def write_nginx(settings: Settings, console: Console) -> None:
    """Every project's nginx files, as `serve` and `reconcile` write them; markers untouched
    (a project with no marker is not live yet: nginx answers 503)."""
    from gatebot.wiring import open_proxy

    proxy = open_proxy(settings)
    changed = await proxy.ensure(settings.projects)
    done = f"wrote the files of {', '.join(changed)}" if changed else "files already up to date"
    console.say(f"nginx: {done} in {settings.nginx.conf_dir}")


async def run_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from gatebot.wiring import open_engine

    if getattr(args, "project", None):
        settings.project(args.project)  # unknown project: exit 2 before touching anything
    async with open_engine(settings) as engine:
        if args.command == "deploy":
            return await cmd_deploy(engine, args, console)
        if args.command == "rollback":
            return await cmd_rollback(engine, args, console)
        if args.command == "status":
            return await cmd_status(engine, args, console)
        if args.command == "history":
            return await cmd_history(engine, args, console)
        if args.command == "reconcile":
            return await cmd_reconcile(engine, args, console)
    raise ConfigError(f"unknown command {args.command}")


def _trigger() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def _preflight(engine: Engine, project: str, console: Console) -> None:
    """Engine reachable, nginx sane, and any half-done work of this project repaired."""
    from gatebot.pipeline.reconcile import reconcile

    await engine.runtime.ping()
    await engine.proxy.check()
    report = await reconcile(engine, [project])
    if report.interrupted or report.restarted or report.lost or report.removed_containers:
        console.say(f"reconciled first: {report.summary()}", err=True)


def progress_printer(console: Console) -> Any:
    def show(event: JournalEvent) -> None:
        if event.kind == "done":
            console.say(f"  {event.stage:<8} {event.duration or 0:6.2f}s  {event.message}")
        elif event.kind == "failed":
            console.say(f"  {event.stage:<8} FAILED after {event.duration or 0:.2f}s")
        elif event.kind == "note" and event.stage in ("queued", "rollback", "cleanup", "live"):
            console.say(f"  {event.message}")
        elif event.kind == "output" and event.stage == "watch":  # the window's progress
            console.say(f"  watch    {event.message}")

    return show


async def cmd_deploy(engine: Engine, args: argparse.Namespace, console: Console) -> int:
    from gatebot.pipeline.deploy import deploy

    await _preflight(engine, args.project, console)
    sha = args.sha
    project = engine.settings.project(args.project)
    if project.gate is not None and args.skip_gate:
        what = f"sha {sha}" if sha else f"head of {project.branch}"
        await engine.store.audit.record(
            _trigger(), "deploy", project=project.name, detail=f"{what}, gate skipped"
        )
    elif project.gate is not None:
        sha = await gate_passed(engine, project, sha)
    console.say(f"{args.project}: deploying {sha or 'branch head'}")
    deployment = await deploy(
        engine,
        args.project,
        sha=sha,
        trigger=_trigger(),
        listeners=[progress_printer(console)],
    )
    console.say(
        f"{args.project}: v{deployment.version} ({(deployment.commit_sha or '')[:12]}) "
        f"live on {deployment.color} (port {deployment.port})"
    )
    return EXIT_OK


async def gate_passed(engine: Engine, project: ProjectSettings, sha: str | None) -> str:
    """The commit to deploy (`sha`, else the branch head by git ls-remote) once its checks are
    asked about, one time: GatebotError unless they have passed. The CLI never waits; a
    deploy that should wait goes through the server (POST /api/v1/deploy)."""
    from gatebot.feedback.statuses import repo_of
    from gatebot.forges.base import CommitRef, ForgeError
    from gatebot.gate import judge
    from gatebot.model import Origin, OriginKind
    from gatebot.wiring import open_forges

    assert project.gate is not None
    if sha is None:
        sha = await engine.source.remote_head(project.repo, project.branch)
        if sha is None:
            raise GatebotError(f"branch {project.branch!r} does not exist in the repository")
    commit = CommitRef(repo=repo_of(project, Origin(kind=OriginKind.CLI, who="")), sha=sha)
    async with open_forges(engine.settings) as clients:
        client = clients.get(project.forge)
        if client is None:
            raise ConfigError(f"{project.name}: a gate needs [{project.forge}] API credentials")
        try:
            checks = await client.commit_checks(commit)
        except ForgeError as exc:
            raise GatebotError(f"{project.name}: cannot read the checks: {exc}") from None
    gate = project.gate
    verdict = judge(gate.checks, checks, waited=gate.settle, settle=gate.settle, timeout=1e18)
    if verdict.outcome != "passed":
        raise GatebotError(
            f"{project.name}: not deploying {sha[:12]}: {verdict.reason} "
            "(deploy through the server to wait for them, or pass --skip-gate)"
        )
    return sha


async def cmd_rollback(engine: Engine, args: argparse.Namespace, console: Console) -> int:
    from gatebot.pipeline.rollback import rollback

    await _preflight(engine, args.project, console)
    deployment = await rollback(
        engine, args.project, to=args.to, trigger=_trigger(), listeners=[progress_printer(console)]
    )
    console.say(
        f"{args.project}: rolled back; v{deployment.version} "
        f"({(deployment.commit_sha or '')[:12]}) live on {deployment.color} "
        f"(port {deployment.port})"
    )
    return EXIT_OK


def active_dict(d: Deployment | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "id": d.id,
        "version": d.version,
        "commit": d.commit_sha,
        "color": d.color,
        "port": d.port,
        "container": d.container,
        "image": d.image,
        "since": d.activated_at,
        "trigger": d.trigger,
    }


async def cmd_status(engine: Engine, args: argparse.Namespace, console: Console) -> int:
    from gatebot.api.views import task_view  # the API's shape of a task; only status needs it

    projects = [engine.settings.project(args.project)] if args.project else engine.settings.projects
    rows: list[dict[str, Any]] = []
    for project in projects:
        active = await engine.store.deployments.active(project.name)
        tasks = await engine.live_tasks(active)
        shown = active_dict(active)
        if shown is not None:
            shown["tasks"] = [task_view(t) for t in tasks]
        rows.append(
            {"name": project.name, "active": shown, "busy": engine.locks.holder(project.name)}
        )
    if args.json:
        console.json({"projects": rows})
        return EXIT_OK
    for row in rows:
        live_now = row["active"]
        live = (
            f"v{live_now['version']} {str(live_now['commit'])[:12]} on {live_now['color']} "
            f"(port {live_now['port']}) since {live_now['since']}"
            if isinstance(live_now, dict)
            else "nothing live"
        )
        busy = f"  [busy: {row['busy']}]" if row["busy"] else ""
        console.say(f"{row['name']}: {live}{busy}")
        for task in live_now["tasks"] if isinstance(live_now, dict) else []:
            error = f": {task['error']}" if task["error"] else ""
            console.say(f"  task on {task['node']} ({task['address']}): {task['state']}{error}")
    return EXIT_OK


async def cmd_history(engine: Engine, args: argparse.Namespace, console: Console) -> int:
    history = await engine.store.deployments.history(args.project, limit=args.limit)
    if args.json:
        console.json({"project": args.project, "deployments": [d.to_dict() for d in history]})
        return EXIT_OK
    if not history:
        console.say(f"{args.project}: no deployments yet")
    for d in history:
        problem = f"  {d.failed_stage}: {d.error}" if d.error else ""
        console.say(
            f"v{d.version:<4} {d.status:<11} {(d.commit_sha or '-')[:12]:<12} "
            f"{d.color or '-':<5} {d.created_at}  {d.trigger}{problem}"
        )
    return EXIT_OK


async def cmd_token(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Tokens live in the database only; no Docker engine or nginx is needed."""
    from gatebot.store import Store
    from gatebot.store.tokens import TokenError

    store = await Store.open(settings.server.data_dir / "gatebot.db")
    try:
        if args.action == "create":
            token, secret = await store.tokens.create(args.name, args.scope)
            await store.audit.record(_trigger(), "token create", detail=token.name)
            console.reveal(secret)
            console.say(
                f"gatebot: token {token.name!r} (scope {token.scope}, id {token.lookup}) created; "
                "this is the only time it is shown: keep it secret",
                err=True,
            )
        elif args.action == "revoke":
            token = await store.tokens.revoke(args.name)
            await store.audit.record(_trigger(), "token revoke", detail=token.name)
            console.say(f"revoked token {token.name!r} (id {token.lookup})")
        else:
            tokens = await store.tokens.list(include_revoked=args.all)
            if args.json:
                console.json({"tokens": [t.to_dict() for t in tokens]})
            elif not tokens:
                console.say("no tokens; create one with `gatebot token create NAME`")
            for t in [] if args.json else tokens:
                revoked = f"  revoked {t.revoked_at}" if t.revoked_at else ""
                console.say(
                    f"{t.name:<20} {t.scope:<6} id {t.lookup}  created {t.created_at}  "
                    f"last used {t.last_used_at or 'never'}{revoked}"
                )
    except TokenError as exc:
        console.say(f"gatebot: {exc}", err=True)
        return EXIT_USAGE
    finally:
        await store.close()
    return EXIT_OK


async def cmd_reconcile(engine: Engine, args: argparse.Namespace, console: Console) -> int:
    from gatebot.pipeline.reconcile import reconcile

    await engine.runtime.ping()
    if args.adopt:
        from gatebot.pipeline.adopt import adopt

        chosen = [engine.settings.project(args.project)] if args.project else None
        for line in await adopt(engine, chosen or engine.settings.projects, trigger=_trigger()):
            console.say(line)
    report = await reconcile(engine, [args.project] if args.project else None, prune=args.prune)
    console.say(report.summary())
    return EXIT_OK
