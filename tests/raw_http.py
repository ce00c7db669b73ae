"""Requests no HTTP client library would send: header bytes that are not UTF-8, for one."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient


async def raw_request(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, no final CRLF) and ``body``; the answer's status and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]
