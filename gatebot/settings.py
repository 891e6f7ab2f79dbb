"""The TOML configuration as pydantic models, and the one place gatebot reads the environment.

`load_settings` turns a file into a validated `Settings` or raises `ConfigError` with a message
that names the file, the key and the problem. Values written as ``"env:NAME"`` in secret fields
(and in a project's ``env``) are read from the environment here, once.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gatebot.errors import ConfigError, UnknownProject
from gatebot.model import PROJECT_NAME, PROJECT_NAME_PATTERN
from gatebot.numbers import parse_count

CONFIG_ENV = "GATEBOT_CONFIG"
_NGINX_TOKEN = re.compile(r"^[A-Za-z0-9_.:\[\]*~^$\\/-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _from_env(value: Any, info: ValidationInfo) -> Any:
    """Resolve ``"env:NAME"`` from the environment passed in the validation context."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set")
        return environ[name]
    return value


Secret = Annotated[SecretStr, BeforeValidator(_from_env)]
EnvValue = Annotated[str, BeforeValidator(_from_env)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*"})  # every address: overlaps any other


class ServerSettings(_Model):
    listen: str = "127.0.0.1:8088"
    data_dir: Path = Path("/var/lib/gatebot")
    public_url: str = "http://127.0.0.1:8088"
    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1024)  # larger webhook bodies get 413
    public_pages: bool = False  # dashboard and deployment pages readable without a token
    session_hours: float = Field(12.0, gt=0, le=24 * 30)  # a dashboard sign-in lasts this long
    log_format: Literal["text", "json"] = "text"  # json: one object per line
    # How long a webhook waits for its delivery to be committed (a locked or full database)
    # before answering 503 with Retry-After; forges give up on an answer after about 10 s.
    record_timeout: float = Field(5.0, gt=0, le=60)
    body_timeout: float = Field(30.0, gt=0)  # a request body must arrive within this many s
    deliveries_keep_days: float = Field(7.0, gt=0)  # webhook delivery ids kept for de-dup
    # The watchdog (gatebot/watchdog.py) reconciles every project this often while serving,
    # and follows Docker's events; 0 turns it off (only start-up and each job reconcile).
    reconcile_interval: float = Field(30.0, ge=0)
    # Webhooks also on an address of their own, answered by `intake_processes` processes that
    # share it (SO_REUSEPORT) and the database (gatebot/intake_process.py): more deliveries
    # per second than one core answers. Unset: webhooks are answered on `listen` alone.
    intake_listen: str | None = None
    intake_processes: int = Field(2, ge=1, le=32)

    @field_validator("listen", "intake_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        number = parse_count(port, high=65535)
        if not sep or not host or not number:
            raise ValueError("must be HOST:PORT, for example 127.0.0.1:8088")
        return value

    @model_validator(mode="after")
    def _intake_apart(self) -> ServerSettings:
        intake = self.intake_address
        if intake is not None and intake[1] == self.port:
            hosts = {intake[0], self.host}
            if len(hosts) == 1 or hosts & WILDCARD_HOSTS:
                raise ValueError("intake_listen must be another address than listen")
        return self

    @property
    def intake_address(self) -> tuple[str, int] | None:
        """(host, port) of intake_listen, when set."""
        if self.intake_listen is None:
            return None
        host, _, port = self.intake_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class DockerSettings(_Model):
    host: str | None = None  # resolved by load_settings: DOCKER_HOST, then the local socket


_REGISTRY = re.compile(
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._/-][a-z0-9]+)*)?$"
)
_CONSTRAINT = re.compile(r"^\s*[A-Za-z0-9_.-]+\s*(==|!=)\s*\S+\s*$")


class SwarmSettings(_Model):
    """Present: projects with runtime = "swarm" run as Docker Swarm services, driven through
    the engine at [docker] host, which must be a manager."""

    registry: str  # "host[:port][/path]": images are pushed there, every node pulls them
    registry_username: str | None = None
    registry_password: Secret | None = None
    network: str = "gatebot"  # the overlay network services join; created if missing
    start_timeout: float = Field(120.0, gt=0)  # for every task of a new service to run
    # seconds between looks at where each slot's tasks run (serve): nginx's upstreams follow
    # tasks that moved; 0 turns it off
    refresh_interval: float = Field(5.0, ge=0)

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        if not _REGISTRY.match(value):
            raise ValueError(
                'must be "host[:port][/path]" in lower case, without a scheme, '
                'for example "registry.example.com:5000/acme"'
            )
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("must be a Docker network name (letters, digits, _ . -)")
        return value

    @model_validator(mode="after")
    def _credentials_paired(self) -> SwarmSettings:
        if (self.registry_username is None) != (self.registry_password is None):
            raise ValueError("registry_username and registry_password go together")
        return self


class NginxSettings(_Model):
    conf_dir: Path = Path("/etc/nginx/gatebot.d")
    test_cmd: list[str] = Field(default_factory=lambda: ["nginx", "-t"], min_length=1)
    reload_cmd: list[str] = Field(default_factory=lambda: ["nginx", "-s", "reload"], min_length=1)


class QueueSettings(_Model):
    max_concurrent: int = Field(2, ge=1)  # deploys running at once, across projects
    paused: bool = False  # accept and queue jobs, run none (maintenance)
    shutdown_timeout: float = Field(600.0, ge=0)  # on SIGTERM, how long running deploys get
    busy_retry_seconds: float = Field(2.0, gt=0)  # a project locked elsewhere: retry after
    # A job cut short by a stop of gatebot is queued again at the next start this many times
    # (while no newer job for its project exists); then it stays failed, saying so.
    interrupted_retries: int = Field(3, ge=0)


class GitHubSettings(_Model):
    webhook_secret: Secret | None = None
    api_url: str = "https://api.github.com"  # GitHub Enterprise Server: https://HOST/api/v3
    token: Secret | None = None  # a token, or the App below
    app_id: int | None = None
    private_key_file: Path | None = None
    installation_id: int | None = None  # else from the webhook's installation.id
    bot_login: str | None = None  # gatebot's own account; its comments are ignored
    request_timeout: float = Field(10.0, gt=0)
    retry_for_seconds: float = Field(120.0, ge=0)  # give up on a status after this long


class GitLabSettings(_Model):
    webhook_token: Secret | None = None  # compared with X-Gitlab-Token
    webhook_signing_token: Secret | None = None  # whsec_... (signed deliveries)
    api_url: str = "https://gitlab.com/api/v4"
    token: Secret | None = None  # sent as PRIVATE-TOKEN
    min_access_level: int = Field(30, ge=10, le=50)  # 30 Developer, 40 Maintainer
    bot_username: str | None = None  # gatebot's own account; its comments are ignored

    @field_validator("webhook_signing_token")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from gatebot.forges.gitlab.sansio import signing_key

            try:
                signing_key(value.get_secret_value())
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    request_timeout: float = Field(10.0, gt=0)
    retry_for_seconds: float = Field(120.0, ge=0)


class HealthSettings(_Model):
    path: str = "/health"
    interval: float = Field(1.0, gt=0)
    timeout: float = Field(2.0, gt=0)
    retries: int = Field(30, ge=1)
    healthy_threshold: int = Field(2, ge=1)  # passing answers in a row that make it healthy
    start_period: float = Field(0.0, ge=0)
    max_latency_ms: int = Field(1000, gt=0)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("must start with / and contain no spaces")
        return value


class SiteSettings(_Model):
    """An optional nginx server block that proxies to the project's upstream."""

    listen: str = "80"
    server_name: str = "_"

    @field_validator("listen", "server_name")
    @classmethod
    def _nginx_safe(cls, value: str) -> str:
        for word in value.split():
            if not _NGINX_TOKEN.fullmatch(word) or word.endswith("\\"):
                raise ValueError(f"{word!r} is not allowed in an nginx directive")
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class GateSettings(_Model):
    """`[projects.gate]`: deploy a pushed commit only once its checks (CI) have passed."""

    # Names of check runs / commit status contexts (GitLab: job names), or "all": every check
    # run and status on the commit but gatebot's own.
    checks: list[str] | Literal["all"] = Field(min_length=1)
    timeout: float = Field(3600.0, gt=0)  # seconds to wait; then the job fails
    settle: float = Field(30.0, ge=0)  # "all": how long to wait for checks to appear at all
    poll: float = Field(30.0, gt=0)  # ask the forge's API this often while a job waits

    @field_validator("checks")
    @classmethod
    def _names(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and any(not name.strip() for name in value):
            raise ValueError('check names must not be empty (or write checks = "all")')
        return value


# A project's poll_interval when none is set and no webhook secret reaches it.
DEFAULT_POLL_INTERVAL = 60.0


class ProjectSettings(_Model):
    name: str
    repo: str
    branch: str = "main"
    base_port: int = Field(ge=1, le=65534)
    container_port: int = Field(3000, ge=1, le=65535)
    network: Literal["bridge", "host"] = "bridge"
    runtime: Literal["docker", "swarm"] = "docker"  # swarm: needs the [swarm] table
    replicas: int = Field(1, ge=1, le=1000)  # tasks per color (runtime = "swarm")
    placement: list[str] = Field(default_factory=list)  # Swarm constraints, "node.x == y"
    dockerfile: str = "Dockerfile"  # relative to `context`
    context: str = "."  # relative to the repository's root; both must stay inside it
    build_include_git: bool = False  # send the checkout's .git in the build context
    build_args: dict[str, str] = Field(default_factory=dict)
    env: dict[str, EnvValue] = Field(default_factory=dict)
    env_file: Path | None = None
    init: bool = True  # run an init process as PID 1, so the app gets SIGTERM on stop
    drain_seconds: float = Field(5.0, ge=0)
    stop_timeout: int = Field(10, ge=0)
    keep_releases: int = Field(5, ge=1)
    # The watch window after a switch (0 turns it off): the old slot keeps running while the
    # new release is probed and its answers through nginx are counted; a bad verdict reverts.
    watch_seconds: float = Field(30.0, ge=0)
    watch_failures: int = Field(3, ge=1)  # failed probes in a row that revert
    max_error_rate: float = Field(0.05, ge=0, le=1)  # share of 5xx answers that reverts ...
    min_requests: int = Field(20, ge=1)  # ... once at least this many answers were seen
    health: HealthSettings = Field(default_factory=HealthSettings)
    site: SiteSettings | None = None
    forge: Literal["github", "gitlab"] = "github"
    forge_repo: str | None = None  # "acme/shop"; default: from the repo URL
    webhook_secret: Secret | None = None  # overrides [github] webhook_secret / [gitlab] token
    allow: list[str] = Field(default_factory=list)  # may /rollback without forge permission
    gate: GateSettings | None = None  # wait for the commit's checks before deploying a push
    # Seconds between looks at the branch head with `git ls-remote` (0: never). Unset: 0 when
    # a webhook secret reaches the project, else DEFAULT_POLL_INTERVAL (see Settings.poll_interval).
    poll_interval: float | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PROJECT_NAME.fullmatch(value):
            raise ValueError(
                f"must match {PROJECT_NAME_PATTERN} (lower-case letters, digits, dashes)"
            )
        return value

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not re.match(r"^(https?://|ssh://|file://|git@[^:]+:)", value):
            raise ValueError("must be an https://, ssh://, git@host:path or file:// URL")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not value or value.startswith("-") or any(c.isspace() for c in value) or ".." in value:
            raise ValueError("is not a valid branch name")
        return value

    @field_validator("context", "dockerfile")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("context")
    @classmethod
    def _inside_checkout(cls, value: str) -> str:
        if not inside_checkout(value):
            raise ValueError(
                f"{value[:200]!r} is outside the checkout: give a path relative to the "
                "repository's root, without leading / or .. that climbs out of it"
            )
        return value

    @model_validator(mode="after")
    def _dockerfile_inside_checkout(self) -> ProjectSettings:
        # Docker reads the Dockerfile relative to the context.
        if not inside_checkout(str(PurePosixPath(self.context) / self.dockerfile)):
            raise ValueError(
                f"dockerfile: {self.dockerfile[:200]!r} (relative to context "
                f"{self.context[:200]!r}) is outside the checkout"
            )
        return self

    @field_validator("env", "build_args")
    @classmethod
    def _env_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid variable name")
        return value

    @field_validator("placement")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for constraint in value:
            if not _CONSTRAINT.match(constraint):
                raise ValueError(
                    f'{constraint!r} is not a Swarm constraint like "node.labels.tier == web"'
                )
        return value

    @model_validator(mode="after")
    def _runtime_options(self) -> ProjectSettings:
        if self.runtime == "docker":
            if self.replicas != 1:
                raise ValueError('replicas: more than 1 needs runtime = "swarm"')
            if self.placement:
                raise ValueError('placement: needs runtime = "swarm"')
        elif self.network == "host":
            raise ValueError(
                'network: "host" is single-host; a swarm service joins the [swarm] network'
            )
        return self

    @model_validator(mode="after")
    def _default_forge_repo(self) -> ProjectSettings:
        if self.forge_repo is None:
            from gatebot.forges import repo_from_url

            derived = repo_from_url(self.repo)
            if derived is None:
                raise ValueError(
                    "forge_repo: cannot tell the forge's repository name from repo; "
                    'set forge_repo = "owner/name"'
                )
            object.__setattr__(self, "forge_repo", derived)
        return self

    @property
    def ports(self) -> tuple[int, int]:
        """(blue, green) slot ports."""
        return self.base_port, self.base_port + 1


class Settings(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    nginx: NginxSettings = Field(default_factory=NginxSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    gitlab: GitLabSettings = Field(default_factory=GitLabSettings)
    swarm: SwarmSettings | None = None  # absent: every project runs on the one Docker host
    projects: list[ProjectSettings] = Field(default_factory=list)
    _source: Path | None = PrivateAttr(None)
    _project_env: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> Path | None:
        """The file these settings were read from."""
        return self._source

    def projects_for(self, forge: str, repo: str) -> list[ProjectSettings]:
        """The projects that track `repo` on `forge` (names compared case-insensitively)."""
        wanted = repo.lower()
        return [
            p
            for p in self.projects
            if p.forge == forge and p.forge_repo is not None and p.forge_repo.lower() == wanted
        ]

    def project(self, name: str) -> ProjectSettings:
        for project in self.projects:
            if project.name == name:
                return project
        raise UnknownProject(name)

    def poll_interval(self, project: ProjectSettings) -> float:
        """How often `project`'s branch head is polled (0: never): its own poll_interval, else
        off when webhooks can reach it (a secret of its own or its forge's), else every
        DEFAULT_POLL_INTERVAL seconds."""
        if project.poll_interval is not None:
            return project.poll_interval
        forge_secret = (
            self.github.webhook_secret
            if project.forge == "github"
            else self.gitlab.webhook_token or self.gitlab.webhook_signing_token
        )
        if project.webhook_secret is not None or forge_secret is not None:
            return 0.0
        return DEFAULT_POLL_INTERVAL

    @property
    def docker_host(self) -> str:
        return self.docker.host or "unix:///var/run/docker.sock"

    def container_env(self, project: ProjectSettings) -> dict[str, str]:
        """The project's environment: env_file first, then `env` on top."""
        return {**self._project_env.get(project.name, {}), **project.env}


# --- loading --------------------------------------------------------------------------------


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    value = cli_value or environ.get(CONFIG_ENV)
    if not value:
        raise ConfigError(f"no configuration file: pass -c PATH or set {CONFIG_ENV}")
    return Path(value)


def load_settings(path: Path, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read, validate and resolve one configuration file, or raise ConfigError."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_settings(raw, source=path, environ=environ)


def parse_settings(
    raw: dict[str, Any], *, source: Path, environ: Mapping[str, str] = os.environ
) -> Settings:
    try:
        settings = Settings.model_validate(raw, context={"environ": environ})
    except ValidationError as exc:
        lines = [f"{source}: {_where(err['loc'], raw)}: {_what(err)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    _check_projects(settings, source)
    base = source.parent
    project_env = {
        p.name: read_env_file(_relative(base, p.env_file), source, f"projects[{i}] ({p.name})")
        for i, p in enumerate(settings.projects)
        if p.env_file is not None
    }
    docker = DockerSettings(host=settings.docker.host or environ.get("DOCKER_HOST") or None)
    resolved = settings.model_copy(
        update={
            "docker": docker,
            "server": settings.server.model_copy(
                update={"data_dir": _relative(base, settings.server.data_dir)}
            ),
            "nginx": settings.nginx.model_copy(
                update={"conf_dir": _relative(base, settings.nginx.conf_dir)}
            ),
        }
    )
    resolved._source = source
    resolved._project_env = project_env
    return resolved


def inside_checkout(path: str) -> bool:
    """Whether a relative path (``.``, ``app``, ``docker/Dockerfile``) stays inside the folder it
    is relative to, judged by its text alone; symbolic links are checked at build time."""
    if "\x00" in path or PurePosixPath(path).is_absolute():
        return False
    depth = 0
    for part in PurePosixPath(path).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part != ".":
            depth += 1
    return True


def _relative(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _check_projects(settings: Settings, source: Path) -> None:
    seen_names: dict[str, int] = {}
    seen_ports: dict[int, str] = {}
    for i, project in enumerate(settings.projects):
        where = f"{source}: projects[{i}] ({project.name})"
        if project.name in seen_names:
            raise ConfigError(
                f"{where}.name: duplicate project name, also projects[{seen_names[project.name]}]"
            )
        seen_names[project.name] = i
        if project.runtime == "swarm" and settings.swarm is None:
            raise ConfigError(
                f'{where}.runtime: "swarm" needs a [swarm] table with registry = "host[:port]/path"'
            )
        for port in project.ports:
            if port in seen_ports:
                raise ConfigError(
                    f"{where}.base_port: slot ports {project.base_port}-{project.base_port + 1} "
                    f"overlap project {seen_ports[port]!r}"
                )
            seen_ports[port] = project.name
    _check_gates(settings, source)


def _check_gates(settings: Settings, source: Path) -> None:
    """A gate asks the forge's API about the commit's checks: it needs API credentials."""
    for i, project in enumerate(settings.projects):
        if project.gate is None:
            continue
        where = f"{source}: projects[{i}] ({project.name}).gate"
        if project.forge == "github":
            github = settings.github
            if github.token is None and github.app_id is None:
                raise ConfigError(
                    f"{where}: a gate reads the commit's checks from GitHub's API: set "
                    "[github] token (or app_id and private_key_file)"
                )
        elif settings.gitlab.token is None:
            raise ConfigError(
                f"{where}: a gate reads the commit's statuses from GitLab's API: set [gitlab] token"
            )


def read_env_file(path: Path, source: Path, project: str) -> dict[str, str]:
    """Parse KEY=VALUE lines (blank lines and # comments skipped, optional quotes stripped)."""
    where = f"{source}: {project}.env_file"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ConfigError(f"{where}: {path} line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


def _where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    out += f" ({node['name']})"
            except (IndexError, KeyError, TypeError):
                node = None
        else:
            out += ("." if out else "") + part
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _what(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")
