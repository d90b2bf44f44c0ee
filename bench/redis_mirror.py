"""Cost of keeping the Redis revocation mirror whole (``RedisMirror.mirror``). PRINTS figures.

    .venv/bin/python bench/redis_mirror.py [--runs 7] [--counts 10000 100000] [--baseline DIR]

Every mirror checks every entry (EXISTS of the jti keys, packed once per entry set), so that an
entry evicted or deleted behind its back is written again (issue 16, finding 3); before, a
mirror read the digest key alone. For N jti entries (UUIDs, as issuers use) in a throwaway
redis-server on 127.0.0.1 (tests/redis_server.py, Debian's redis-server), this prints per call,
median and max of ``--runs``, with the CPU time of the operator's process and of Redis (INFO
cpu) and the longest the event loop went without running a 1 ms ticker (how long the
operator's other work waits). On a shared machine wall times swing with other load; the CPU
figures much less:

- ``before, nothing to do``: with ``--baseline DIR`` (a source tree holding the package, e.g.
  ``git archive e9eef65 operator | tar -x -C /tmp/base`` -> /tmp/base/operator), that tree's
  ``RedisMirror.mirror`` with nothing to write: the digest and one GET;
- ``digest alone``: ``entries_digest`` (both before and now render the set to JSON and hash it);
- ``MGET via redis-py``: MGET of every key, 1,000 per command, one pipeline: the plain way,
  for reference (redis-py packs and parses every key and value in Python);
- ``check, nothing lost``: a mirror with nothing to write, what every resync costs now;
- ``one entry deleted``: a mirror that finds one lost entry and writes it;
- ``entry set changed``: a mirror of a set with one more entry (the EXISTS commands are packed
  again), what a new revocation costs.

Everything listens on 127.0.0.1 only, and every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

import redis.asyncio as aioredis  # noqa: E402

from signing_key_operator.core.revocations import RedisLayout, RevocationDocument  # noqa: E402
from signing_key_operator.controller.redis_mirror import RedisMirror, entries_digest  # noqa: E402
from tests.redis_server import RedisServer, redis_server_binary  # noqa: E402

LAYOUT = RedisLayout.for_policy("bench", "api")


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


async def timed(call, client: aioredis.Redis, tick: float = 0.001) -> tuple[float, float, float, float, object]:
    """(seconds the call took, this process's CPU seconds meanwhile, Redis's CPU seconds
    meanwhile, longest gap between ticks of a concurrent ticker, the call's result)."""
    gaps = [0.0]
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    server_cpu = await redis_cpu(client)
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start, cpu = time.perf_counter(), time.process_time()
    result = await call()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = True
    await task
    return elapsed, cpu, await redis_cpu(client) - server_cpu, max(gaps), result


def line(label: str, count: int, figures: list[tuple[float, float, float, float, object]], note: str = "") -> str:
    ms, cpu, server, stall = ([f[i] * 1000 for f in figures] for i in range(4))
    return (f"{label:22} {count:>7,} entries: median {statistics.median(ms):7.1f} ms  max {max(ms):7.1f} ms;  CPU median: "
            f"operator {statistics.median(cpu):6.1f} ms  Redis {statistics.median(server):6.1f} ms;  "
            f"loop stalled up to {max(stall):7.1f} ms{note}")


async def mget_all(client: aioredis.Redis, keys: list[str]) -> list:
    async with client.pipeline(transaction=False) as pipe:
        for start in range(0, len(keys), 1000):
            pipe.mget(keys[start:start + 1000])
        return await pipe.execute()


def baseline_mirror(directory: Path) -> type:
    """``RedisMirror`` of another source tree (its core/ must be this one's: it is imported from
    here)."""
    moved = directory / "signing_key_operator" / "controller" / "redis_mirror.py"  # the layout since the move
    package = "signing_key_operator.controller" if moved.exists() else "signing_key_operator"
    spec = importlib.util.spec_from_file_location(
        f"{package}.redis_mirror_baseline", moved if moved.exists() else directory / "signing_key_operator" / "redis_mirror.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.RedisMirror


async def measure(server: RedisServer, count: int, runs: int, before: type | None) -> None:
    until = int(time.time()) + 3600
    entries = RevocationDocument(jti={str(uuid.uuid4()): until + i for i in range(count)}, sub={})
    mirror = RedisMirror(timeout=30)
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        await client.flushall()
        t = time.perf_counter()
        await mirror.mirror("uid", server.url, None, LAYOUT, entries)
        print(f"# {count:,} entries written in {time.perf_counter() - t:.2f}s; "
              f"Redis used_memory {(await client.info('memory'))['used_memory'] / 2**20:.1f} MiB", flush=True)
        keys = [LAYOUT.jti_key(jti) for jti in entries.jti]
        if before is not None:
            old = before(timeout=30)
            try:
                baseline = [await timed(lambda: old.mirror("uid", server.url, None, LAYOUT, entries), client) for _ in range(runs)]
            finally:
                await old.close()
            print(line("before, nothing to do", count, baseline))

        async def digest() -> str:
            return entries_digest(entries)

        print(line("digest alone", count, [await timed(digest, client) for _ in range(runs)]))
        print(line("MGET via redis-py", count, [await timed(lambda: mget_all(client, keys), client) for _ in range(runs)]), flush=True)
        check = [await timed(lambda: mirror.mirror("uid", server.url, None, LAYOUT, entries), client) for _ in range(runs)]
        lost = []
        for i in range(runs):
            await client.delete(keys[i * 997 % count])
            lost.append(await timed(lambda: mirror.mirror("uid", server.url, None, LAYOUT, entries), client))
        changed = []
        for i in range(runs):
            entries = RevocationDocument(jti={**entries.jti, str(uuid.uuid4()): until}, sub={})
            changed.append(await timed(lambda: mirror.mirror("uid", server.url, None, LAYOUT, entries), client))
        writes = sorted({f[4] for f in check + lost + changed})
        print(line("check, nothing lost", count, check))
        print(line("one entry deleted", count, lost))
        print(line("entry set changed", count, changed, f"   (commands written per call: {writes})"), flush=True)
    finally:
        await mirror.close()
        await client.aclose()


async def main_async(args: argparse.Namespace) -> None:
    with RedisServer() as server:
        version = (await aioredis.Redis.from_url(server.url).info("server"))["redis_version"]
        print(f"# RedisMirror.mirror per call, {args.runs} runs each; redis-server {version} on 127.0.0.1, "
              f"no persistence; redis-py without hiredis")
        before = baseline_mirror(args.baseline.resolve()) if args.baseline else None
        for count in args.counts:
            await measure(server, count, args.runs, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="calls per case (default: %(default)s)")
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000],
                        help="entry counts (default: %(default)s)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also measure RedisMirror.mirror from another source tree, as 'before'")
    args = parser.parse_args()
    if redis_server_binary() is None:
        sys.exit("redis-server is needed (Debian package redis-server; `make redis` installs it)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
