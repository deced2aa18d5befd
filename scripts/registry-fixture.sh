#!/bin/sh
# Start or stop a throwaway OCI registry (Debian's docker-registry, i.e. distribution 2.x) on
# 127.0.0.1 for tests. Everything lives in DIR: config.yml, data/, htpasswd, registry.log,
# registry.pid. Plain HTTP (loopback only), deletes enabled.
#
#   scripts/registry-fixture.sh start DIR PORT [USER:PASSWORD]   prints the registry's PID once
#                                                                /v2/ answers
#   scripts/registry-fixture.sh stop DIR                         stops it (TERM, then KILL)
#
# With USER:PASSWORD the registry asks for HTTP Basic auth checked against an htpasswd file
# (bcrypt, `htpasswd -B` from apache2-utils, installed here with apt-get when missing).
set -eu

usage() { echo "usage: $0 start DIR PORT [USER:PASSWORD] | stop DIR" >&2; exit 2; }

start() {
  dir=$1 port=$2 userpass=${3:-}
  registry_bin=$(command -v docker-registry || true)
  [ -n "$registry_bin" ] || { echo "registry-fixture: docker-registry is not installed (apt-get install docker-registry)" >&2; exit 3; }
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  auth=""
  if [ -n "$userpass" ]; then
    if ! command -v htpasswd >/dev/null 2>&1; then
      echo "registry-fixture: installing apache2-utils for htpasswd" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q --no-install-recommends apache2-utils >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends apache2-utils >/dev/null; }
    fi
    user=${userpass%%:*} password=${userpass#*:}
    htpasswd -B -b -c "$dir/htpasswd" "$user" "$password" 2>/dev/null
    auth="auth:
  htpasswd:
    realm: mlbuild-test-registry
    path: $dir/htpasswd"
  fi
  # A fixed secret only silences the "generated random secret" warning; it guards nothing here.
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: mlbuild-test-fixture
$auth
EOF
  # Detached from our stdout/stderr: a caller capturing our output must not wait on the registry.
  setsid "$registry_bin" serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/registry.pid"
  i=0
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" 2>/dev/null || true)
    case "$code" in 200|401) break ;; esac
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "registry-fixture: docker-registry exited at start; its log ($dir/registry.log):" >&2
      tail -20 "$dir/registry.log" >&2
      exit 1
    fi
    i=$((i + 1))
    if [ "$i" -ge 200 ]; then
      echo "registry-fixture: docker-registry did not answer on 127.0.0.1:$port/v2/ within 20 s" >&2
      tail -20 "$dir/registry.log" >&2
      kill "$pid" 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
  echo "$pid"
}

stop() {
  dir=$1
  [ -f "$dir/registry.pid" ] || { echo "registry-fixture: no registry.pid in $dir" >&2; exit 1; }
  pid=$(cat "$dir/registry.pid")
  kill "$pid" 2>/dev/null || { rm -f "$dir/registry.pid"; exit 0; }
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/registry.pid"
}

[ $# -ge 2 ] || usage
cmd=$1; shift
case "$cmd" in
  start) [ $# -ge 2 ] || usage; start "$@" ;;
  stop) stop "$1" ;;
  *) usage ;;
esac
