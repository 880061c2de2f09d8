#!/usr/bin/env bash
# The one test command:  bash tests/run.sh [pytest args]
#
# 1. installs missing Debian packages (postgresql, openssh-server, rsync, chromium) when
#    run as root; otherwise prints what to install and exits 2;
# 2. creates .venv (python3 -m venv) if absent and installs -e '.[test]' into it;
# 3. runs `ruff check .`, `ruff format --check .` and `mypy oeleo/`: any of them failing
#    fails the run, before pytest;
# 4. runs .venv/bin/python -m pytest "$@" and exits with its status
#    ("no tests collected", pytest status 5, counts as a failure).
#
# chromium is the browser the monitor page's tests drive with Playwright (about 125 MB of
# packages, some 10 s to install).
#
# The fast part alone (no sshd, PostgreSQL or benchmark harness):
#    bash tests/run.sh -m "not ssh and not postgres and not bench"
#
# The tests start their own PostgreSQL / SSH servers on 127.0.0.1 and random
# ports; no system service is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ---------------------------------------------------------------- Debian packages

have_pkg() {
    # installed per dpkg, or its programs are present anyway
    if dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; then
        return 0
    fi
    case "$1" in
        postgresql) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ;;
        openssh-server) [ -x /usr/sbin/sshd ] ;;
        rsync) command -v rsync >/dev/null 2>&1 ;;
        chromium) [ -x /usr/bin/chromium ] ;;
        *) return 1 ;;
    esac
}

missing=()
for pkg in postgresql openssh-server rsync chromium; do
    have_pkg "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/run.sh: missing system packages: ${missing[*]}" >&2
        echo "Install them (as root), e.g.:" >&2
        echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
        echo "then run 'bash tests/run.sh' again." >&2
        exit 2
    fi
    echo "tests/run.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting services (sshd, a system PostgreSQL)
    # during the install; removed again afterwards if we created it.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
        trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        # No system "main" cluster: the tests run their own server.
        apt-get install -y --no-install-recommends postgresql-common
        sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*$/create_main_cluster = false/' \
            /etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y --no-install-recommends "${missing[@]}"
    if [ "$created_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        created_policy=0
    fi
fi

# ---------------------------------------------------------------- virtualenv

if [ ! -x .venv/bin/python ]; then
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' || {
        echo "tests/run.sh: python3 must be 3.9 or newer (found $(python3 --version 2>&1))" >&2
        exit 2
    }
    python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]'

# ---------------------------------------------------------------- lint, format, types

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy oeleo/

# ---------------------------------------------------------------- tests

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests; that is a failure." >&2
    exit 1
fi
exit "$status"
