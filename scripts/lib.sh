# Shared by scripts/test, scripts/demo and scripts/bench/run: install what is missing and start
# the private services gatebot needs. Source it; do not run it.

GATEBOT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GATEBOT_VENV:-$GATEBOT_ROOT/.venv}"

log() { printf '==> %s\n' "$*" >&2; }

# ensure_packages PKG... : apt-get install the Debian packages that are not installed yet.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        if [ "$(id -u)" != 0 ]; then
            echo "scripts need root to install ${missing[*]} (apt-get)" >&2
            return 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ensure_python: a python3 (3.11+) that can make virtualenvs.
ensure_python() {
    if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        ensure_packages python3 python3-venv python3-pip
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "gatebot needs Python 3.11 or newer; found $(python3 --version)" >&2
        return 1
    }
}

# ensure_venv EXTRAS : a virtualenv with the project installed (editable) and its extras;
# reinstalled when pyproject.toml changes.
ensure_venv() {
    local extras="${1:-test}" stamp
    ensure_python
    stamp="$(sha256sum "$GATEBOT_ROOT/pyproject.toml" | cut -c1-16)-$extras"
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.gatebot-stamp" 2>/dev/null)" != "$stamp" ]; then
        log "preparing the virtualenv in $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip >/dev/null
        "$VENV/bin/pip" install -q -e "$GATEBOT_ROOT[$extras]"
        echo "$stamp" > "$VENV/.gatebot-stamp"
    fi
}

# docker_answers : true when the engine at $DOCKER_HOST (or the default socket) answers.
docker_answers() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import docker, os
docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").ping()
PY
}

# start_private_dockerd : a dockerd of our own (own socket, data root, exec root; no bridge,
# no iptables), stopped by its PID when the calling script exits. Exports DOCKER_HOST.
start_private_dockerd() {
    GATEBOT_DOCKER_DIR="$(mktemp -d /tmp/gatebot-docker.XXXXXX)"
    export DOCKER_HOST="unix://$GATEBOT_DOCKER_DIR/docker.sock"
    log "starting a private dockerd ($GATEBOT_DOCKER_DIR)"
    dockerd \
        --host "$DOCKER_HOST" \
        --data-root "$GATEBOT_DOCKER_DIR/data" \
        --exec-root "$GATEBOT_DOCKER_DIR/exec" \
        --pidfile "$GATEBOT_DOCKER_DIR/docker.pid" \
        --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
        >"$GATEBOT_DOCKER_DIR/dockerd.log" 2>&1 &
    GATEBOT_DOCKERD_PID=$!
    local i
    for i in $(seq 1 120); do
        if docker_answers; then return 0; fi
        if ! kill -0 "$GATEBOT_DOCKERD_PID" 2>/dev/null; then break; fi
        sleep 0.5
    done
    echo "dockerd did not start; its log:" >&2
    tail -n 30 "$GATEBOT_DOCKER_DIR/dockerd.log" >&2
    return 1
}

stop_private_dockerd() {
    [ -n "${GATEBOT_DOCKERD_PID:-}" ] || return 0
    kill -TERM "$GATEBOT_DOCKERD_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 60); do
        kill -0 "$GATEBOT_DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$GATEBOT_DOCKERD_PID" 2>/dev/null || true
    # dockerd leaves mounts behind (its netns, overlays of killed containers): unmount them,
    # deepest first, before removing the folder.
    awk -v dir="$GATEBOT_DOCKER_DIR/" 'index($2, dir) == 1 { print $2 }' /proc/mounts \
        | sort -r | while read -r mountpoint; do umount -l "$mountpoint" 2>/dev/null || true; done
    rm -rf "$GATEBOT_DOCKER_DIR" 2>/dev/null || true
    GATEBOT_DOCKERD_PID=
}

# name_test_swarm : the folder where the tests build their 2-node swarm (tests/support/swarm.py)
# if a test asks for one; exported as GATEBOT_SWARM_DIR. remove_test_swarm tears down whatever
# is there, so nothing outlives the script even when pytest was killed mid-run.
name_test_swarm() {
    GATEBOT_SWARM_DIR="$(mktemp -u -d /tmp/gatebot-swarm.XXXXXX)"
    export GATEBOT_SWARM_DIR
}

remove_test_swarm() {
    [ -n "${GATEBOT_SWARM_DIR:-}" ] && [ -e "$GATEBOT_SWARM_DIR" ] || return 0
    log "tearing down the test swarm ($GATEBOT_SWARM_DIR)"
    (cd "$GATEBOT_ROOT" && "$VENV/bin/python" -m tests.support.swarm down "$GATEBOT_SWARM_DIR") || true
}
