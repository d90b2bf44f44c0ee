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

packages="wrk"
if ! have nginx; then
    if apt-cache show nginx-light >/dev/null 2>&1; then
        packages="$packages nginx-light"
    else
        packages="$packages nginx"
    fi
fi

# shellcheck disable=SC2086
sh "$(dirname "$0")/../scripts/apt-install.sh" $packages

have nginx && have wrk
