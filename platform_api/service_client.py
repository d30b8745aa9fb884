"""A pooled HTTP client of one Ray Serve route, shared by the API's vision and risk clients."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx

from platform_api.errors import Unavailable

__all__ = ["ServiceClient"]


class ServiceClient:
    """Posts to one Serve route through a pooled ``httpx.AsyncClient`` per event loop (a client
    belongs to the loop that first used it).

    Args:
        url: The route, e.g. ``http://127.0.0.1:8000/vision``.
        timeout: Seconds to wait for an answer.
        connections: Most connections open to the proxy at once (None: httpx's default).
    """

    #: The service's name in error messages ("the vision service").
    service = "Serve"

    def __init__(self, url: str, timeout: float, connections: int | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.connections = connections
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            limits = (httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
                      if self.connections else httpx.Limits())
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout, limits=limits)
        return client

    async def _send(self, **request: Any) -> tuple[httpx.Response, Any, str]:
        """POST ``request`` (httpx's ``content``/``json``/``files``/``headers``) to the route:
        the response, its JSON body (``{}`` when it is not JSON) and the body's ``detail``.

        Raises:
            Unavailable: the route does not answer, or not within the timeout.
        """
        try:
            response = await self._client().post(self.url, **request)
        except httpx.TimeoutException as err:
            raise Unavailable(f"the {self.service} at {self.url} did not answer within {self.timeout:g} s") from err
        except httpx.HTTPError as err:
            raise Unavailable(f"the {self.service} at {self.url} does not answer ({type(err).__name__}); "
                              "start it with `bioverse serve up`") from err
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = str(body.get("detail", "")) if isinstance(body, dict) else ""
        return response, body, detail
