#!/bin/sh
# Install the tools the sidecar benches need, from Debian: nginx (nginx-light if the release
# still ships it, else nginx) and wrk. Idempotent: does nothing when both are on PATH.
# Used by bench/sidecar.py only; the tests need neither. The benches run nginx as a foreground
# process with a private config and prefix on 127.0.0.1, so the system service is not started.
set -eu

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if have nginx && have wrk; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq

packages="wrk"
if ! have nginx; then
    if apt-cache show nginx-light >/dev/null 2>&1; then
        packages="$packages nginx-light"
    else
        packages="$packages nginx"
    fi
fi

# policy-rc.d 101: keep the package's postinst from starting the nginx system service
# (only when we are allowed to write it, and only for the duration of this install).
POLICY=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$POLICY" ] && [ -w /usr/sbin ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod +x "$POLICY"
    created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $packages

have nginx && have wrk
