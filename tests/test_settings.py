"""Loading and validating the TOML configuration: defaults, errors that name file and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gatebot.errors import ConfigError
from gatebot.settings import (
    HealthSettings,
    NginxSettings,
    ProjectSettings,
    ServerSettings,
    load_settings,
    parse_settings,
)
from tests.support.real import ROOT

EXAMPLE = ROOT / "config" / "gatebot.example.toml"
MINIMAL_PROJECT = 'name = "shop"\nrepo = "https://example.com/acme/shop.git"\nbase_port = 3100\n'


def project(**overrides: Any) -> dict[str, Any]:
    return {"name": "shop", "repo": "https://example.com/acme/shop.git", "base_port": 3100,
            **overrides}


def parse(raw: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> Any:
    return parse_settings(raw, source=tmp_path / "gatebot.toml", environ=environ or {})


def config_error(raw: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(raw, tmp_path, environ)
    return str(caught.value)


def write(tmp_path: Path, text: str, name: str = "gatebot.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -----------------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[[projects]]\n" + MINIMAL_PROJECT)
    settings = load_settings(path, environ={})
    assert settings.source == path
    assert settings.server.listen == "127.0.0.1:8088"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8088)
    assert settings.server.data_dir == Path("/var/lib/gatebot")
    assert settings.nginx.conf_dir == Path("/etc/nginx/gatebot.d")
    assert settings.nginx.test_cmd == ["nginx", "-t"]
    assert settings.nginx.reload_cmd == ["nginx", "-s", "reload"]
    assert settings.docker.host is None
    assert settings.docker_host == "unix:///var/run/docker.sock"
    shop = settings.project("shop")
    assert (shop.branch, shop.container_port, shop.network) == ("main", 3000, "bridge")
    assert (shop.dockerfile, shop.context, shop.init) == ("Dockerfile", ".", True)
    assert (shop.drain_seconds, shop.stop_timeout, shop.keep_releases) == (5.0, 10, 5)
    assert shop.ports == (3100, 3101)
    assert shop.site is None
    assert shop.health.path == "/health"
    assert (shop.health.retries, shop.health.max_latency_ms) == (30, 1000)
    assert settings.container_env(shop) == {}


def test_example_file_loads() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    environ = {name: f"value-of-{name}" for name in re.findall(r'"env:([A-Za-z_]\w*)"', text)}
    settings = load_settings(EXAMPLE, environ=environ)
    assert settings.projects, "the example should show at least one project"


def test_example_file_values_are_the_model_defaults() -> None:
    """The example says it lists every key with its default: check that it does not lie."""
    settings = load_settings(EXAMPLE, environ={})
    assert settings.server == ServerSettings()
    assert settings.nginx == NginxSettings()
    shop = settings.projects[0]
    defaults = ProjectSettings(name=shop.name, repo=shop.repo, base_port=shop.base_port)
    assert shop.model_dump(exclude={"site"}) == defaults.model_dump(exclude={"site"})
    assert shop.health == HealthSettings()


# --- unknown keys, types, values ----------------------------------------------------------


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "colour = 'blue'\n[[projects]]\n" + MINIMAL_PROJECT)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value) == f"{path}: colour: unknown key"


def test_unknown_nested_key_names_project_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[[projects]]\n" + MINIMAL_PROJECT + 'color = "blue"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value) == f"{path}: projects[0] (shop).color: unknown key"


def test_unknown_key_in_a_nested_table(tmp_path: Path) -> None:
    message = config_error({"projects": [project(health={"pth": "/x"})]}, tmp_path)
    assert "projects[0] (shop).health.pth: unknown key" in message


def test_healthy_threshold_defaults_to_two_and_below_one_names_the_field(tmp_path: Path) -> None:
    settings = parse({"projects": [project(health={"healthy_threshold": 3})]}, tmp_path)
    assert settings.project("shop").health.healthy_threshold == 3
    assert HealthSettings().healthy_threshold == 2
    message = config_error({"projects": [project(health={"healthy_threshold": 0})]}, tmp_path)
    assert "projects[0] (shop).health.healthy_threshold: Input should be greater than" in message


def test_bad_type_names_the_key(tmp_path: Path) -> None:
    message = config_error({"projects": [project(base_port="many")]}, tmp_path)
    assert message.startswith(f"{tmp_path / 'gatebot.toml'}: projects[0] (shop).base_port: ")
    assert "integer" in message


def test_missing_required_key(tmp_path: Path) -> None:
    raw = {"projects": [{"name": "shop", "base_port": 3100}]}
    assert "projects[0] (shop).repo: required key is missing" in config_error(raw, tmp_path)


@pytest.mark.parametrize("name", ["Shop", "-shop", "shop_1", "a" * 41, "", "shop.x", "../x"])
def test_invalid_project_name(tmp_path: Path, name: str) -> None:
    message = config_error({"projects": [project(name=name)]}, tmp_path)
    assert ".name: must match" in message


@pytest.mark.parametrize("name", ["shop", "a", "0-api", "a" * 40])
def test_valid_project_names(tmp_path: Path, name: str) -> None:
    assert parse({"projects": [project(name=name)]}, tmp_path).projects[0].name == name


@pytest.mark.parametrize(
    "repo",
    ["example.com/shop.git", "ftp://example.com/shop.git", "/srv/git/shop", "--upload-pack=x"],
)
def test_bad_repo_url(tmp_path: Path, repo: str) -> None:
    message = config_error({"projects": [project(repo=repo)]}, tmp_path)
    assert "projects[0] (shop).repo: must be an https://" in message


@pytest.mark.parametrize(
    "repo",
    [
        "https://github.com/acme/shop.git",
        "ssh://git@example.com/acme/shop.git",
        "git@github.com:acme/shop.git",
        "file:///srv/git/shop.git",
    ],
)
def test_good_repo_urls(tmp_path: Path, repo: str) -> None:
    assert parse({"projects": [project(repo=repo)]}, tmp_path).projects[0].repo == repo


def test_duplicate_project_names(tmp_path: Path) -> None:
    raw = {"projects": [project(), project(base_port=4000)]}
    message = config_error(raw, tmp_path)
    assert "projects[1] (shop).name: duplicate project name, also projects[0]" in message


def test_overlapping_slot_ports_are_rejected(tmp_path: Path) -> None:
    raw = {"projects": [project(), project(name="blog", base_port=3101)]}
    message = config_error(raw, tmp_path)
    assert "projects[1] (blog).base_port" in message
    assert "overlap project 'shop'" in message


def test_same_base_port_is_rejected(tmp_path: Path) -> None:
    raw = {"projects": [project(), project(name="blog", base_port=3100)]}
    assert "overlap" in config_error(raw, tmp_path)


def test_adjacent_slot_ports_are_fine(tmp_path: Path) -> None:
    settings = parse({"projects": [project(), project(name="blog", base_port=3102)]}, tmp_path)
    assert [p.ports for p in settings.projects] == [(3100, 3101), (3102, 3103)]


# --- env: values and env_file -------------------------------------------------------------


def test_env_values_are_resolved_from_the_given_environ(tmp_path: Path) -> None:
    raw = {"projects": [project(env={"DATABASE_URL": "env:SHOP_DB", "MODE": "production"})]}
    settings = parse(raw, tmp_path, {"SHOP_DB": "postgres://db/shop"})
    assert settings.container_env(settings.projects[0]) == {
        "DATABASE_URL": "postgres://db/shop",
        "MODE": "production",
    }


def test_missing_env_variable_names_key_and_variable_but_no_secret(tmp_path: Path) -> None:
    secret = "hunter2-Zq9-very-secret"
    raw = {
        "projects": [
            project(env={"DB_PASSWORD": "env:SHOP_DB_PASSWORD", "API_KEY": "env:SHOP_API_KEY"})
        ]
    }
    message = config_error(raw, tmp_path, {"SHOP_DB_PASSWORD": secret})
    assert "projects[0] (shop).env.API_KEY" in message
    assert "SHOP_API_KEY" in message
    assert "is not set" in message
    assert secret not in message


def test_secret_value_never_appears_in_other_errors(tmp_path: Path) -> None:
    """A resolved secret must not leak through an error about something else."""
    secret = "s3cret-token-value-42"
    raw = {"projects": [project(env={"TOKEN": "env:SHOP_TOKEN"}, base_port="x")]}
    message = config_error(raw, tmp_path, {"SHOP_TOKEN": secret})
    assert "base_port" in message
    assert secret not in message


def test_secret_fields_read_env_and_stay_hidden(tmp_path: Path) -> None:
    secret = "whsec-Xy7-not-for-logs"
    settings = parse({"github": {"webhook_secret": "env:GH_HOOK"}}, tmp_path, {"GH_HOOK": secret})
    assert settings.github.webhook_secret is not None
    assert settings.github.webhook_secret.get_secret_value() == secret
    assert secret not in repr(settings)
    assert secret not in str(settings.model_dump())
    message = config_error({"github": {"webhook_secret": "env:GH_HOOK"}}, tmp_path, {})
    assert "github.webhook_secret: environment variable GH_HOOK is not set" in message


def test_env_file_is_parsed_and_env_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "shop.env").write_text(
        "# a comment\n"
        "\n"
        "PLAIN=one\n"
        'DOUBLE="two words"\n'
        "SINGLE='three'\n"
        "export EXPORTED=four\n"
        "  SPACED = five  \n"
        "WITH_EQUALS=a=b=c\n"
        "SHARED=from-file\n",
        encoding="utf-8",
    )
    raw = {"projects": [project(env_file="shop.env", env={"SHARED": "from-env"})]}
    settings = parse(raw, tmp_path)
    assert settings.container_env(settings.projects[0]) == {
        "PLAIN": "one",
        "DOUBLE": "two words",
        "SINGLE": "three",
        "EXPORTED": "four",
        "SPACED": "five",
        "WITH_EQUALS": "a=b=c",
        "SHARED": "from-env",
    }


def test_env_file_bad_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "shop.env").write_text("GOOD=1\nthis is not an assignment\n", encoding="utf-8")
    message = config_error({"projects": [project(env_file="shop.env")]}, tmp_path)
    assert "projects[0] (shop).env_file" in message
    assert "shop.env line 2: expected KEY=VALUE" in message


def test_missing_env_file(tmp_path: Path) -> None:
    message = config_error({"projects": [project(env_file="nope.env")]}, tmp_path)
    assert "projects[0] (shop).env_file: cannot read" in message
    assert "nope.env" in message


# --- paths, files ------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_folder = tmp_path / "etc" / "gatebot"
    conf_folder.mkdir(parents=True)
    path = write(conf_folder, '[server]\ndata_dir = "state"\n[nginx]\nconf_dir = "../nginx.d"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path, environ={})
    assert settings.server.data_dir == conf_folder / "state"
    assert settings.nginx.conf_dir == tmp_path / "etc" / "nginx.d"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    settings = parse({"server": {"data_dir": "/srv/gatebot"}}, tmp_path)
    assert settings.server.data_dir == Path("/srv/gatebot")


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value).startswith(f"{path}: invalid TOML:")
    assert "line 1" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value) == f"{path}: file not found"


@pytest.mark.parametrize("listen", ["127.0.0.1", "8088", ":8088", "host:port", "127.0.0.1:0",
                                    "127.0.0.1:70000"])
def test_server_listen_must_be_host_port(tmp_path: Path, listen: str) -> None:
    assert "server.listen: must be HOST:PORT" in config_error(
        {"server": {"listen": listen}}, tmp_path
    )


def test_intake_listen_is_host_port_apart_from_listen_and_processes_bounded(
    tmp_path: Path,
) -> None:
    assert "server.intake_listen: must be HOST:PORT" in config_error(
        {"server": {"intake_listen": "8089"}}, tmp_path
    )
    same = {"server": {"listen": "127.0.0.1:8088", "intake_listen": "127.0.0.1:8088"}}
    assert "intake_listen must be another address than listen" in config_error(same, tmp_path)
    wildcard = {"server": {"listen": "0.0.0.0:8088", "intake_listen": "127.0.0.1:8088"}}
    assert "intake_listen must be another address than listen" in config_error(wildcard, tmp_path)
    apart = {"server": {"listen": "127.0.0.1:8088", "intake_listen": "127.0.0.2:8088"}}
    assert parse(apart, tmp_path).server.intake_address == ("127.0.0.2", 8088)
    assert "server.intake_processes" in config_error(
        {"server": {"intake_listen": "127.0.0.1:8089", "intake_processes": 0}}, tmp_path
    )
    settings = parse({"server": {"intake_listen": "[::1]:8089"}}, tmp_path)
    assert settings.server.intake_address == ("::1", 8089)
    assert settings.server.intake_processes == 2
    assert parse({}, tmp_path).server.intake_address is None


# --- nginx site -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("listen", "80; include /etc/passwd"),
        ("listen", "80 }"),
        ("listen", "80 { "),
        ("listen", '"80"'),
        ("listen", ""),
        ("server_name", "shop.example.com; include /etc/passwd"),
        ("server_name", "x #comment"),
        ("server_name", "a}b"),
        ("server_name", "'x'"),
    ],
)
def test_site_rejects_nginx_injection(tmp_path: Path, key: str, value: str) -> None:
    message = config_error({"projects": [project(site={key: value})]}, tmp_path)
    assert f"projects[0] (shop).site.{key}:" in message


@pytest.mark.parametrize(
    ("listen", "server_name"),
    [
        ("80", "_"),
        ("127.0.0.1:8080 default_server", "shop.example.com www.shop.example.com"),
        ("[::1]:80", "~^shop\\.example\\.com$"),
        ("unix:/run/shop.sock", "*.example.com"),
    ],
)
def test_site_accepts_ordinary_values(tmp_path: Path, listen: str, server_name: str) -> None:
    site = {"listen": listen, "server_name": server_name}
    settings = parse({"projects": [project(site=site)]}, tmp_path)
    assert settings.projects[0].site is not None
    assert (settings.projects[0].site.listen, settings.projects[0].site.server_name) == (
        listen,
        server_name,
    )


def test_site_listen_rejects_a_trailing_backslash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        parse({"projects": [project(site={"listen": "80\\"})]}, tmp_path)


# --- docker host ----------------------------------------------------------------------------


def test_docker_host_comes_from_docker_host_when_absent(tmp_path: Path) -> None:
    settings = parse({}, tmp_path, {"DOCKER_HOST": "unix:///run/private/docker.sock"})
    assert settings.docker.host == "unix:///run/private/docker.sock"
    assert settings.docker_host == "unix:///run/private/docker.sock"


def test_configured_docker_host_wins_over_docker_host(tmp_path: Path) -> None:
    raw = {"docker": {"host": "tcp://127.0.0.1:2375"}}
    settings = parse(raw, tmp_path, {"DOCKER_HOST": "unix:///run/private/docker.sock"})
    assert settings.docker_host == "tcp://127.0.0.1:2375"


def test_docker_host_default_without_either(tmp_path: Path) -> None:
    assert parse({}, tmp_path, {}).docker_host == "unix:///var/run/docker.sock"


# --- names and paths that must not slip through -------------------------------------------


@pytest.mark.parametrize("name", ["esc\n", "shop\n", "a\n"])
def test_a_trailing_newline_is_not_part_of_a_valid_name(tmp_path: Path, name: str) -> None:
    message = config_error({"projects": [project(name=name)]}, tmp_path)
    assert ".name: must match" in message


@pytest.mark.parametrize("field", ["env", "build_args"])
def test_a_variable_name_with_a_trailing_newline_is_refused(tmp_path: Path, field: str) -> None:
    message = config_error({"projects": [project(**{field: {"KEY\n": "v"}})]}, tmp_path)
    assert f"projects[0] (shop).{field}:" in message and "not a valid variable name" in message


@pytest.mark.parametrize("context", ["..", "../..", "/", "/etc", "app/../..", "./../x"])
def test_a_build_context_outside_the_checkout_is_refused(tmp_path: Path, context: str) -> None:
    message = config_error({"projects": [project(context=context)]}, tmp_path)
    assert "projects[0] (shop).context:" in message and "outside the checkout" in message


@pytest.mark.parametrize(
    ("context", "dockerfile"),
    [(".", "../../etc/passwd"), (".", "/etc/passwd"), ("app", "../../Dockerfile")],
)
def test_a_dockerfile_outside_the_checkout_is_refused(
    tmp_path: Path, context: str, dockerfile: str
) -> None:
    raw = {"projects": [project(context=context, dockerfile=dockerfile)]}
    message = config_error(raw, tmp_path)
    assert "projects[0] (shop)" in message and "dockerfile:" in message
    assert "outside the checkout" in message


@pytest.mark.parametrize(
    ("context", "dockerfile"),
    [(".", "Dockerfile"), ("app", "Dockerfile"), ("app", "../docker/Dockerfile"), ("a/..", "x")],
)
def test_paths_inside_the_checkout_are_fine(tmp_path: Path, context: str, dockerfile: str) -> None:
    settings = parse({"projects": [project(context=context, dockerfile=dockerfile)]}, tmp_path)
    assert settings.projects[0].context == context and not settings.projects[0].build_include_git
# --- Docker Swarm ---------------------------------------------------------------------------


def test_swarm_settings_and_a_swarm_project(tmp_path: Path) -> None:
    settings = parse(
        {
            "swarm": {
                "registry": "registry.example.com:5000/acme",
                "registry_username": "gatebot",
                "registry_password": "env:REGISTRY_PASSWORD",
            },
            "projects": [
                project(runtime="swarm", replicas=3, placement=["node.labels.tier == web"])
            ],
        },
        tmp_path,
        environ={"REGISTRY_PASSWORD": "s3cret-registry"},
    )
    assert settings.swarm.registry == "registry.example.com:5000/acme"
    assert settings.swarm.registry_password.get_secret_value() == "s3cret-registry"
    assert "s3cret-registry" not in repr(settings.swarm)
    assert (settings.swarm.network, settings.swarm.start_timeout) == ("gatebot", 120.0)
    shop = settings.project("shop")
    assert (shop.runtime, shop.replicas, shop.placement) == (
        "swarm",
        3,
        ["node.labels.tier == web"],
    )


def test_no_swarm_table_means_single_host(tmp_path: Path) -> None:
    settings = parse({"projects": [project()]}, tmp_path)
    assert settings.swarm is None
    shop = settings.project("shop")
    assert (shop.runtime, shop.replicas, shop.placement) == ("docker", 1, [])


def test_a_swarm_project_without_a_swarm_table_names_the_field(tmp_path: Path) -> None:
    message = config_error({"projects": [project(runtime="swarm")]}, tmp_path)
    assert 'projects[0] (shop).runtime: "swarm" needs a [swarm] table with registry' in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"replicas": 2}, 'replicas: more than 1 needs runtime = "swarm"'),
        ({"placement": ["node.role == worker"]}, 'placement: needs runtime = "swarm"'),
        ({"runtime": "swarm", "network": "host"}, 'network: "host" is single-host'),
        ({"runtime": "swarm", "placement": ["tier web"]}, "placement: 'tier web' is not a Swarm"),
        ({"runtime": "swarm", "replicas": 0}, "replicas: Input should be greater than"),
        ({"runtime": "kubernetes"}, "runtime: Input should be 'docker' or 'swarm'"),
    ],
)
def test_bad_swarm_project_options_name_the_field(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    raw = {"swarm": {"registry": "registry.example.com/acme"}, "projects": [project(**overrides)]}
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'gatebot.toml'}: projects[0] (shop)")
    assert expected in message


@pytest.mark.parametrize(
    ("swarm", "expected"),
    [
        ({}, "swarm.registry: required key is missing"),
        ({"registry": "https://registry.example.com"}, "swarm.registry: must be"),
        ({"registry": "Registry.example.com"}, "swarm.registry: must be"),
        ({"registry": "r.example.com", "registry_username": "u"}, "go together"),
        ({"registry": "r.example.com", "network": "a b"}, "swarm.network: must be"),
    ],
)
def test_bad_swarm_table_names_the_field(
    tmp_path: Path, swarm: dict[str, Any], expected: str
) -> None:
    assert expected in config_error({"swarm": swarm, "projects": []}, tmp_path)


def test_registry_password_from_a_missing_variable_is_a_clear_error(tmp_path: Path) -> None:
    raw = {"swarm": {"registry": "r.example.com", "registry_username": "u",
                     "registry_password": "env:NOPE"}, "projects": []}  # fmt: skip
    assert "swarm.registry_password: environment variable NOPE is not set" in config_error(
        raw, tmp_path
    )
