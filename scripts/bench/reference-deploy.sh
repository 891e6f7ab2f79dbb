#!/usr/bin/env bash
# The baseline of the deploy benchmark: a blue-green deploy done by hand with the docker, nginx,
# git and curl command lines, the same steps gatebot takes (source, build, run, poll health,
# write the upstream, test, reload, stop the old slot), and nothing more: no database, no lock,
# no log. Prints each step's duration as "  STEP  SECONDSs" like `gatebot deploy`.
#
#   reference-deploy.sh STATE_DIR REPO_URL SHA BASE_PORT SITE_PORT NGINX_PREFIX NGINX_CONF
set -euo pipefail
STATE="$1" REPO="$2" SHA="$3" BASE_PORT="$4" SITE_PORT="$5" PREFIX="$6" CONF="$7"
NAME="$(basename "$STATE")"
NGINX=(nginx -p "$PREFIX" -c "$CONF")
export DOCKER_BUILDKIT=0  # the classic builder, as gatebot's Docker SDK build uses

export LC_ALL=C
t=${EPOCHREALTIME/./}
step() {  # microseconds since the last step, printed as seconds
    local now=${EPOCHREALTIME/./} d
    d=$((now - t))
    printf '  %-8s %d.%03ds\n' "$1" $((d / 1000000)) $(((d % 1000000) / 1000))
    t=$now
}

# source: clone once, then fetch and check out the exact commit
if [ ! -d "$STATE/checkout/.git" ]; then git clone -q "$REPO" "$STATE/checkout"; fi
git -C "$STATE/checkout" fetch -q origin
git -C "$STATE/checkout" checkout -q --detach "$SHA"
step source

# pick the idle slot
live="$(cat "$STATE/live" 2>/dev/null || true)"
if [ "$live" = blue ]; then color=green port=$((BASE_PORT + 1)); else color=blue port=$BASE_PORT; fi
old="bench-$NAME-$live" new="bench-$NAME-$color"

docker build -q -t "bench/$NAME:${SHA:0:12}" "$STATE/checkout" >/dev/null
step build

docker rm -f "$new" >/dev/null 2>&1 || true
docker run -d --name "$new" --network host --init --restart unless-stopped \
    --log-opt max-size=10m --log-opt max-file=3 -e PORT="$port" "bench/$NAME:${SHA:0:12}" >/dev/null
step run

for _ in $(seq 1 400); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/health" && break
    sleep 0.05
done
step health

cat > "$PREFIX/gatebot.d/.$NAME.conf.tmp" <<CONF
upstream bench_$NAME { server 127.0.0.1:$port max_fails=0; keepalive 16; }
server {
    listen 127.0.0.1:$SITE_PORT;
    location / { proxy_pass http://bench_$NAME; proxy_http_version 1.1; proxy_set_header Connection ""; }
}
CONF
mv "$PREFIX/gatebot.d/.$NAME.conf.tmp" "$PREFIX/gatebot.d/$NAME.conf"
"${NGINX[@]}" -t -q
"${NGINX[@]}" -s reload
step switch

echo "$color" > "$STATE/live"
if [ -n "$live" ]; then docker stop -t 5 "$old" >/dev/null && docker rm "$old" >/dev/null; fi
step drain
