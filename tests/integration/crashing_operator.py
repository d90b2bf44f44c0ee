"""`signing-key-operator run`, except that the process kills itself with SIGKILL right after
its Nth write to the API (SKO_CRASH_AFTER_WRITES). Used by the crash-safety test to stop the
operator between every pair of writes; the operator's own code carries no fault hook."""

import os
import signal
import sys

from signing_key_operator.__main__ import main
from signing_key_operator.k8s.api import KubeApi

limit = int(os.environ["SKO_CRASH_AFTER_WRITES"])
writes = 0
original_request = KubeApi.request


async def request_then_maybe_die(self, method, path, **kwargs):
    global writes
    result = await original_request(self, method, path, **kwargs)
    if method != "GET":
        writes += 1
        print(f"crash-harness: write {writes}: {method} {path}", file=sys.stderr, flush=True)
        if writes >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return result


KubeApi.request = request_then_maybe_die
sys.exit(main(sys.argv[1:]))
