"""A framegate client over WebSocket (the `websockets` package), from docs/protocol.md.

    python fg_ws_client.py ws://HOST:PORT/v1/stream KEY a.jpg [b.jpg ...]

Prints one JSON line per answer.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect

import fg_proto


class WsTransport:
    def __init__(self, ws):
        self.ws = ws

    async def send(self, data):
        await self.ws.send(data)

    async def recv(self):
        msg = await self.ws.recv()
        if isinstance(msg, str):
            raise SystemExit("text message from the gateway")
        return msg


async def main(url, key, paths):
    jpegs = [open(p, "rb").read() for p in paths]
    async with connect(url, max_size=16 * 1024 * 1024) as ws:
        out = []
        await fg_proto.Session(WsTransport(ws)).run(key, jpegs, out)
        for kind, msg in out:
            print(json.dumps({"kind": kind, **msg}))
        # The gateway closes normally after Bye.
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except Exception:
            pass
        print(json.dumps({"kind": "closed", "code": ws.close_code}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
