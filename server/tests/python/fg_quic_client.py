"""A framegate client over QUIC (the `aioquic` package), from docs/protocol.md.

    python fg_quic_client.py HOST PORT SHA256_FINGERPRINT KEY a.jpg [b.jpg ...]

The gateway's development certificate is self-signed: the client pins its
SHA-256 fingerprint (printed by `framegate serve`). Prints one JSON line per
answer.
"""
import asyncio
import hashlib
import json
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

import fg_proto


class QuicTransport:
    """One bidirectional stream, u32 big-endian length-prefixed messages."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def send(self, data):
        self.writer.write(fg_proto.length_prefixed(data))

    async def recv(self):
        (n,) = struct.unpack(">I", await self.reader.readexactly(4))
        return await self.reader.readexactly(n)


async def main(host, port, fingerprint, key, paths):
    jpegs = [open(p, "rb").read() for p in paths]
    config = QuicConfiguration(is_client=True, alpn_protocols=["framegate/1"])
    config.verify_mode = ssl.CERT_NONE  # self-signed: checked by fingerprint below
    async with connect(host, int(port), configuration=config) as client:
        cert = client._quic.tls._peer_certificate
        got = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        if got != fingerprint.replace(":", "").lower():
            raise SystemExit(f"certificate fingerprint {got} does not match the pin")
        reader, writer = await client.create_stream()
        out = []
        await fg_proto.Session(QuicTransport(reader, writer)).run(key, jpegs, out)
        for kind, msg in out:
            print(json.dumps({"kind": kind, **msg}))
        writer.write_eof()
    print(json.dumps({"kind": "closed"}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5], sys.argv[5:]))
