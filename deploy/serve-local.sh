#!/usr/bin/env bash
# Serve the knowledge base as it is deployed, on loopback: gunicorn (docs/service.md's command) behind
# nginx with deploy/nginx.conf, nginx running as the current user from a temporary prefix (no
# root, nothing under /etc). Ctrl-C or SIGTERM stops both and removes the prefix.
#
#   deploy/serve-local.sh [PORT]      nginx on 127.0.0.1:PORT (default 8080), gunicorn on PORT+1
#
# The service's settings come from the environment as usual (KB_ANSWERS, KB_DB, KB_RUNS, ...);
# also KB_UPSTREAM_PORT (gunicorn's port), KB_WORKERS (2), PYTHON (.venv/bin/python), NGINX.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
port=${1:-${KB_PORT:-8080}}
upstream=${KB_UPSTREAM_PORT:-$((port + 1))}
python=${PYTHON:-$root/.venv/bin/python}
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
if [ ! -x "$nginx" ]; then
  echo "serve-local: nginx not found (apt-get install nginx)" >&2
  exit 2
fi

prefix=$(mktemp -d "${TMPDIR:-/tmp}/kb-nginx-XXXXXX")
mkdir -p "$prefix/logs" "$prefix/tmp"
# As root, nginx would run its workers as nobody, who cannot read this private prefix.
user=""
if [ "$(id -u)" -eq 0 ]; then user="user root;"; fi
sed -e "s|@USER@|$user|" -e "s|@LISTEN@|127.0.0.1:$port|" -e "s|@UPSTREAM@|127.0.0.1:$upstream|" \
    -e "s|@STATIC@|$root/service/static|" -e "s|@SERVER_NAMES@|${KB_SERVER_NAMES:-127.0.0.1 localhost}|" \
    deploy/nginx.conf > "$prefix/nginx.conf"
cp deploy/kb-error-headers.conf "$prefix/kb-error-headers.conf"

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$prefix"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$nginx" -t -q -p "$prefix/" -e "$prefix/logs/error.log" -c "$prefix/nginx.conf"
# gunicorn's limits above nginx's (8 KiB lines and fields): nginx refuses first, with its
# problem+json, so gunicorn's own bare HTML errors are never seen.
"$python" -m gunicorn -w "${KB_WORKERS:-2}" -k gthread --threads 8 -b "127.0.0.1:$upstream" \
  --limit-request-line 16384 --limit-request-field_size 16384 \
  --no-control-socket "service:create_app()" &
pids+=($!)
"$nginx" -p "$prefix/" -e "$prefix/logs/error.log" -c "$prefix/nginx.conf" -g "daemon off;" &
pids+=($!)

# Up once a request through nginx reaches the service (start-up runs answers without evidence).
until "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
      "http://127.0.0.1:$port/healthz" 2>/dev/null; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "serve-local: a server exited during start-up" >&2; exit 1; }
  done
  sleep 0.2
done
echo "serving http://127.0.0.1:$port/ (nginx, prefix $prefix) -> http://127.0.0.1:$upstream/ (gunicorn)"
wait -n "${pids[@]}"
echo "serve-local: a server exited" >&2
exit 1
