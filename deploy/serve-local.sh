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
# Both ports must be free: otherwise the readiness probe below could reach another server and
# report success while ours failed to bind. (SO_REUSEADDR as the servers set it: a port left in
# TIME_WAIT by an earlier run is free, one that something listens on is not.)
for p in "$port" "$upstream"; do
  if ! "$python" -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.close()" \
       "$p" 2>/dev/null; then
    echo "serve-local: port $p on 127.0.0.1 is taken (by another server?): choose another, e.g. $0 $((port + 10))" >&2
    exit 2
  fi
done

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
declare -A names=()
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
# deploy/gunicorn.conf.py: the model loaded once before the workers fork, metrics across workers,
# gthread workers, and request limits above nginx's (so nginx refuses first, with its problem+json).
KB_WORKERS=${KB_WORKERS:-2} "$python" -m gunicorn -c deploy/gunicorn.conf.py -b "127.0.0.1:$upstream" \
  "service:create_app()" &
pids+=($!)
names[$!]=gunicorn
"$nginx" -p "$prefix/" -e "$prefix/logs/error.log" -c "$prefix/nginx.conf" -g "daemon off;" &
pids+=($!)
names[$!]=nginx

# Up once a request through nginx reaches the service (start-up runs answers without evidence).
until "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
      "http://127.0.0.1:$port/healthz" 2>/dev/null; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "serve-local: ${names[$pid]} exited during start-up (its messages are above)" >&2; exit 1; }
  done
  sleep 0.2
done
echo "serving http://127.0.0.1:$port/ (nginx, prefix $prefix) -> http://127.0.0.1:$upstream/ (gunicorn)"
status=0
wait -n -p exited "${pids[@]}" || status=$?  # not under set -e: say which one stopped, and how
echo "serve-local: ${names[$exited]:-a server} exited (status $status); stopping the other" >&2
exit 1
