#!/bin/sh
# apt-install.sh PACKAGE...: install Debian packages for the tests and benches (redis-server,
# prometheus for promtool, nginx, wrk), the way a fresh machine gets them: apt-get, with sudo when not root. The
# packages' postinst scripts are kept from starting system services (policy-rc.d exit 101):
# the tests and benches start their own servers on loopback with private configs.
set -eu

[ "$#" -gt 0 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }

SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$POLICY" ] && [ -w /usr/sbin ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod +x "$POLICY"
    created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "==> apt-get install $*"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@"
