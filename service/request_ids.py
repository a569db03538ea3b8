"""Every request gets an id: the client's ``X-Request-ID`` (1 to 128 letters, digits, '.', '_', '-')
or a new one; it is echoed in the response, set for the request's log lines (worker/logs.py) and
stored with a job it submits, so the worker's log lines for that job carry it too."""

from __future__ import annotations

import re
import uuid

from worker import logs

HEADER = b"x-request-id"
VALID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", ()) if k == HEADER), None)
        rid = given.decode() if given is not None and VALID.fullmatch(given) else uuid.uuid4().hex
        token = logs.request_id.set(rid)

        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (HEADER, rid.encode())]}
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            logs.request_id.reset(token)
