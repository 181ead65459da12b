"""`python -m bench.investigations.http_stack`: the HTTP server stack for the REST front end, by
measurement.

aiohttp's server (what cnnserve uses) against uvicorn + starlette with httptools (what
MLServer and KServe use), each serving a trivial v2-shaped JSON infer handler from its own
process on uvloop, loaded by one aiohttp client (keep-alive, c=32) from this process;
server CPU per request from /proc/<pid>/stat, the stacks interleaved per round, medians.
Needs `pip install uvicorn starlette httptools` (not dependencies of cnnserve).
Criterion for keeping aiohttp: its CPU per request <= 1.25x uvicorn + starlette's (it is
chosen for embedding in the server's loop without taking SIGTERM, not for speed); exits 1
otherwise.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import aiohttp
import uvloop

from bench.reliability import cpu_seconds

ANSWER = json.dumps(
    {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [0.5]}]}
).encode()
BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
).encode()
STACKS = ("aiohttp", "starlette")
RATIO = 1.25


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v2/models/{m}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        json.loads(await request.body())
        return Response(ANSWER, media_type="application/json")

    app = Starlette(routes=[Route("/v2/models/{m}/infer", infer, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                            access_log=False, log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await task

    uvloop.run(main())


async def measure(pid: int, port: int, seconds: float) -> tuple[float, float]:
    """(server CPU us per request, requests/s) at c=32."""
    count, counting, stop = 0, False, False
    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def worker() -> None:
            nonlocal count
            while not stop:
                async with session.post(url, data=BODY) as answer:
                    await answer.read()
                count += counting

        tasks = [asyncio.create_task(worker()) for _ in range(32)]
        await asyncio.sleep(1.0)  # warm-up (pacing, not synchronisation)
        counting, cpu, began = True, cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        used, elapsed, done = cpu_seconds(pid) - cpu, time.perf_counter() - began, count
        stop = True
        await asyncio.gather(*tasks)
    return used / max(done, 1) * 1e6, done / elapsed


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] in STACKS:  # a server child
        (serve_aiohttp if sys.argv[1] == "aiohttp" else serve_starlette)(int(sys.argv[2]))
        return 0
    servers = {}
    for stack in STACKS:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-m", "bench.investigations.http_stack", stack,
                                  str(port)],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert child.stdout is not None
        child.stdout.readline()  # "ready"
        servers[stack] = (child, port)
    results: dict[str, list[tuple[float, float]]] = {stack: [] for stack in STACKS}
    try:
        for _ in range(3):
            for stack, (child, port) in servers.items():
                results[stack].append(asyncio.run(measure(child.pid, port, 4.0)))
    finally:
        for child, _ in servers.values():
            child.terminate()
            child.wait(timeout=30)
    cpu = {stack: statistics.median(r[0] for r in runs) for stack, runs in results.items()}
    for stack, runs in results.items():
        rate = statistics.median(r[1] for r in runs)
        print(f"{stack}: {cpu[stack]:.0f} us/req server CPU, {rate:,.0f} req/s")
    ok = cpu["aiohttp"] <= RATIO * cpu["starlette"]
    print(f"criterion: aiohttp <= {RATIO}x uvicorn + starlette: {'pass' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
