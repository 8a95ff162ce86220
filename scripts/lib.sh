# shellcheck shell=bash
# Shared by scripts/demo and scripts/test (source it):
#   ensure_venv          .venv in the repository root with zamqp[test,plone-test,browser-test] installed
#   ensure_core_venv V   .venv-pyV with zamqp[core-test] on pyenv's Python V
#                        (V: 3.9, 3.13; pyenv installs it if missing)
#   ensure_broker VAR..  a RabbitMQ that accepts connections at the URL in
#                        the first variable VAR set (default: local 5672)
# Settings: ZAMQP_BROKER_WAIT, seconds a started RabbitMQ may take (60).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
DEFAULT_URL='amqp://guest:guest@127.0.0.1:5672/'
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '==> %s\n' "$*"; }
fail() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# apt-get install "$@" without starting services (no init system here).
apt_install() {
    command -v apt-get >/dev/null || { say "apt-get not found"; return 1; }
    [ "$(id -u)" = 0 ] || { say "installing $* with apt-get needs root"; return 1; }
    local policy=/usr/sbin/policy-rc.d made='' status=0
    if [ ! -e "$policy" ] && [ ! -d /run/systemd/system ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
    fi
    say "Running: apt-get update && apt-get install -y $*"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } </dev/null || status=$?
    if [ -n "$made" ]; then rm -f "$policy"; fi
    return "$status"
}

ensure_venv() {
    local stamp="$VENV/.zamqp-installed" want
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "The virtualenv $VENV is broken: recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -e "$VENV" ]; then
        say "Creating the virtualenv $VENV with $(python3 --version 2>&1)"
        if ! python3 -m venv "$VENV"; then
            rm -rf "$VENV"
            say "'python3 -m venv' failed: installing the Debian package python3-venv"
            if ! { apt_install python3-venv && python3 -m venv "$VENV"; }; then
                rm -rf "$VENV"
                fail "could not create $VENV: install python3-venv and try again"
            fi
        fi
    fi
    want=$(sha256sum <"$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$VENV/bin/python" -c '
import sys, zamqp, pytest
sys.exit(not zamqp.__file__.startswith(sys.argv[1]))' "$ROOT/src/" 2>/dev/null; then
        say "Using the virtualenv $VENV (zamqp and its test requirements are installed)"
        return
    fi
    say "Installing zamqp and its test requirements into $VENV: pip install -e '.[test,plone-test,browser-test]'"
    (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,plone-test,browser-test]') \
        || fail "pip install -e '.[test,plone-test,browser-test]' failed: see the errors above"
    echo "$want" >"$stamp"
}

# The python of pyenv's newest Python $1.x (or $1 itself); nothing if
# pyenv has none.
pyenv_python() {
    local root version
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    version=$(cd "$root/versions" 2>/dev/null && ls -d "$1" "$1".* 2>/dev/null \
        | grep -E "^$(printf '%s' "$1" | sed 's/[.]/[.]/g')([.][0-9]+)?\$" | sort -V | tail -n 1)
    if [ -n "$version" ] && [ -x "$root/versions/$version/bin/python" ]; then
        echo "$root/versions/$version/bin/python"
    fi
}

# .venv-py$1 in the repository root: pyenv's Python $1 with zamqp and the
# core-test extra (no Zope), installed with pip install -e '.[core-test]'.
ensure_core_venv() {
    local version=$1 venv="$ROOT/.venv-py$1" python want
    local stamp="$venv/.zamqp-installed"
    if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        say "The virtualenv $venv is broken: recreating it"
        rm -rf "$venv"
    fi
    if [ ! -e "$venv" ]; then
        python=$(pyenv_python "$version")
        if [ -z "$python" ]; then
            command -v pyenv >/dev/null || fail "no Python $version: pyenv is not installed (skip it with ZAMQP_PYTHONS, see README.rst)"
            say "Installing Python $version with pyenv: pyenv install $version"
            pyenv install --skip-existing "$version" </dev/null || fail "pyenv install $version failed: see the errors above"
            python=$(pyenv_python "$version")
            [ -n "$python" ] || fail "pyenv installed no Python $version"
        fi
        say "Creating the virtualenv $venv with $("$python" --version 2>&1)"
        "$python" -m venv "$venv" || { rm -rf "$venv"; fail "could not create $venv with $python"; }
    fi
    want=$(sha256sum <"$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$venv/bin/python" -c '
import sys, zamqp, pytest
sys.exit(not zamqp.__file__.startswith(sys.argv[1]))' "$ROOT/src/" 2>/dev/null; then
        say "Using the virtualenv $venv ($("$venv/bin/python" --version 2>&1), zamqp[core-test] installed)"
        return
    fi
    say "Installing zamqp and the core suite's requirements into $venv: pip install -e '.[core-test]'"
    (cd "$ROOT" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[core-test]') \
        || fail "pip install -e '.[core-test]' with Python $version failed: see the errors above"
    echo "$want" >"$stamp"
}

# shellcheck disable=SC2016  # $1 and $2 expand in the inner bash
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

# Wait until $1:$2 accepts TCP connections, at most $3 seconds.
wait_for_port() {
    local end=$((SECONDS + $3))
    until port_open "$1" "$2"; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 1
    done
}

# Make sure a broker accepts connections at the URL in the first of the
# variables named as arguments that is set (default: DEFAULT_URL).
ensure_broker() {
    local url='' origin address host port var
    for var in "$@"; do
        if [ -n "${!var:-}" ]; then url=${!var} origin=$var; break; fi
    done
    [ -n "$url" ] || { url=$DEFAULT_URL origin="the default; set ${1:-ZAMQP_TEST_URL} to use another"; }
    address=$("$VENV/bin/python" -c '
import sys
from zamqp import AMQPProps, ConfigurationError
try:
    props = AMQPProps(url=sys.argv[1])
except ConfigurationError as exc:
    sys.exit(f"the broker URL is wrong: {exc}")
print(props.host, props.port)' "$url") || fail "fix the broker URL in $origin"  # never the default
    read -r host port <<<"$address"
    if port_open "$host" "$port"; then
        say "Using the RabbitMQ that accepts connections on $host:$port (broker URL: $origin)"
        return
    fi
    case "$host:$port" in
        localhost:5672 | 127.*:5672 | ::1:5672) ;;
        *) fail "nothing accepts connections on $host:$port (broker URL from $origin).
Start that broker, or unset $origin to use a local RabbitMQ on 127.0.0.1:5672." ;;
    esac
    say "No broker accepts connections on $host:$port: setting up a local RabbitMQ"
    if ! command -v rabbitmq-server >/dev/null; then
        say "RabbitMQ is not installed: installing the Debian package rabbitmq-server"
        apt_install rabbitmq-server || say "apt-get reported an error (see above)"
        command -v rabbitmq-server >/dev/null || fail "could not install rabbitmq-server.
Install and start RabbitMQ yourself, or set ZAMQP_TEST_URL to a broker's URL."
    fi
    if ! port_open "$host" "$port"; then
        say "Starting RabbitMQ: rabbitmq-server -detached"
        rabbitmq-server -detached </dev/null || say "rabbitmq-server -detached failed (see above)"
    fi
    local wait=${ZAMQP_BROKER_WAIT:-60}
    say "Waiting up to $wait s for RabbitMQ to accept connections on $host:$port"
    if ! wait_for_port "$host" "$port" "$wait"; then
        tail -n 15 /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log 2>/dev/null >&2 || true
        fail "RabbitMQ did not accept connections on $host:$port within $wait s.
See the logs in /var/log/rabbitmq/. If they mention the host name: the node is
rabbit@$(hostname -s), so that name must resolve (check: getent hosts $(hostname -s))."
    fi
    say "RabbitMQ is running on $host:$port; it keeps running (stop it with: rabbitmqctl stop)"
}
