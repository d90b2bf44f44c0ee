"""`signing-key-operator run` with faults injected from outside the operator's code, which
carries no fault hook:

- SKO_CRASH_AFTER_WRITES=N: the process kills itself with SIGKILL right after its Nth write to
  the API. Used by the crash-safety test to stop the operator between every pair of writes.
- SKO_PAUSE_GATE=DIR with SKO_PAUSE_AFTER=REGEX: once DIR/armed exists, the next request that
  REGEX matches (searched in "METHOD path?labelSelector") removes it, creates DIR/paused and
  holds the reconcile that made it (the rest of the process runs on) until DIR/resume exists.
  Used to stop a replica at a chosen point of its reconcile, deterministically.
"""

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from signing_key_operator.cli.main import main
from signing_key_operator.k8s.api import KubeApi

crash_limit = int(os.environ.get("SKO_CRASH_AFTER_WRITES", "0"))
pause_gate = Path(os.environ["SKO_PAUSE_GATE"]) if "SKO_PAUSE_GATE" in os.environ else None
pause_after = re.compile(os.environ.get("SKO_PAUSE_AFTER", "^$"))
writes = 0
original_request = KubeApi.request


async def hold_if_armed(gate: Path, request: str) -> None:
    armed = gate / "armed"
    if not armed.exists():
        return
    armed.unlink()
    (gate / "paused").touch()
    print(f"fault-harness: paused after {request}", file=sys.stderr, flush=True)
    while not (gate / "resume").exists():
        await asyncio.sleep(0.05)
    print("fault-harness: resumed", file=sys.stderr, flush=True)


async def request_with_faults(self, method, path, **kwargs):
    global writes
    result = await original_request(self, method, path, **kwargs)
    if pause_gate is not None:
        request = f"{method} {path}?{(kwargs.get('params') or {}).get('labelSelector') or ''}"
        if pause_after.search(request):
            await hold_if_armed(pause_gate, request)
    if method != "GET" and crash_limit:
        writes += 1
        print(f"crash-harness: write {writes}: {method} {path}", file=sys.stderr, flush=True)
        if writes >= crash_limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return result


KubeApi.request = request_with_faults
sys.exit(main(sys.argv[1:]))
