"""The internal HTTP endpoint of each process: /metrics, /healthz (readiness), /livez."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator, Mapping

import uvicorn
from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from billing_worker.metrics import Metrics

log = logging.getLogger(__name__)
Check = Callable[[], Awaitable[bool]]
CHECK_TIMEOUT = 3.0


def internal_app(metrics: Metrics, checks: Mapping[str, Check]) -> Starlette:
    async def ready(request: Request) -> Response:
        results = {}
        for name, check in checks.items():
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    results[name] = await check()
            except Exception:
                results[name] = False
        healthy = all(results.values())
        body = {name: "up" if up else "down" for name, up in results.items()}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def alive(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    exposition = _Exposition(metrics)

    return Starlette(
        routes=[
            Route("/healthz", ready),
            Route("/readyz", ready),
            Route("/livez", alive),
            # Both spellings answer 200 (a Mount answered /metrics with a redirect that
            # `curl -s` and promtool's stdin check took for an empty page).
            Route("/metrics", exposition, methods=["GET"]),
            Route("/metrics/", exposition, methods=["GET"]),
        ]
    )


class _Exposition:
    """prometheus_client's ASGI app (content negotiation, gzip, `name[]` filters) as
    the endpoint of a Route: Starlette serves a class instance as ASGI, a function as
    request -> response."""

    def __init__(self, metrics: Metrics) -> None:
        self._app = make_asgi_app(registry=metrics.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside a process that owns its signals (FastStream's CLI does)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class InternalServer:
    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                access_log=False)  # fmt: skip
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> None:
        """Bind, then serve. A taken port is a one-line StartupError naming the setting
        (uvicorn binding itself would log it and sys.exit from inside its task)."""
        from billing_worker.startup import listen_socket

        listener = listen_socket(self._server.config.host, self.port, "BILLING_METRICS_PORT")
        serving = self._server.serve(sockets=[listener])
        self._task = asyncio.create_task(serving, name="internal-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # surfaces whatever stopped uvicorn starting
            await asyncio.sleep(0.01)
        log.info("metrics and health on :%d (/metrics, /healthz, /livez)", self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
        self._task = None
