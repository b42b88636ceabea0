"""A c10d store server without torch: torch.distributed.TCPStore's wire protocol, served by
asyncio, so the operator and its image need no torch (torchrun's c10d rendezvous and any
TCPStore client talk to it unchanged).

The protocol, as torch's libuv server speaks it (torch/csrc/distributed/c10d/
TCPStoreLibUvBackend.cpp; tests/operator_tests/test_c10d_store.py runs torch's own client
against this server for every command):
- a connection opens with VALIDATE and the magic number; anything else closes it;
- a command is one byte, then its arguments: integers little-endian and fixed width, keys and
  values a uint64 length and the bytes;
- WAIT answers once every key exists (or at once); CANCEL_WAIT drops the wait and answers;
  SET, ADD, APPEND and COMPARE_SET wake the waiters of their key.

One ``StoreServer`` is one store on one port. Keys, values and key counts are bounded as
torch bounds them, so a stray client cannot make the store allocate without limit.
"""
from __future__ import annotations

import asyncio
import struct
from collections import deque

MAGIC = 0x3C85F7CE
(VALIDATE, SET, COMPARE_SET, GET, ADD, CHECK, WAIT, GETNUMKEYS, DELETE_KEY, APPEND, MULTI_GET,
 MULTI_SET, CANCEL_WAIT, PING, QUEUE_PUSH, QUEUE_POP, QUEUE_LEN) = range(17)
READY, NOT_READY = b"\x00", b"\x01"
STOP_WAITING, WAIT_CANCELED = b"\x00", b"\x01"
MAX_KEY_LEN = 8 * 1024
MAX_VALUE_LEN = 8 * 1024 * 1024
MAX_KEY_COUNT = 128 * 1024

U32, I64, U64 = struct.Struct("<I"), struct.Struct("<q"), struct.Struct("<Q")


class ProtocolError(Exception):
    """The client broke the protocol; its connection is closed."""


def vector(value: bytes) -> bytes:
    return U64.pack(len(value)) + value


class Reader:
    """The arguments of one command, read from the connection."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream

    async def fixed(self, fmt: struct.Struct) -> int:
        return fmt.unpack(await self.stream.readexactly(fmt.size))[0]

    async def sized(self, limit: int) -> bytes:
        size = await self.fixed(U64)
        if size > limit:
            raise ProtocolError(f"a field of {size} bytes (the limit is {limit})")
        return await self.stream.readexactly(size)

    async def key(self) -> bytes:
        return await self.sized(MAX_KEY_LEN)

    async def value(self) -> bytes:
        return await self.sized(MAX_VALUE_LEN)

    async def keys(self) -> list[bytes]:
        count = await self.fixed(U64)
        if count > MAX_KEY_COUNT:
            raise ProtocolError(f"{count} keys in one command (the limit is {MAX_KEY_COUNT})")
        return [await self.key() for _ in range(count)]


class Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class Store:
    """The keys, queues and waiters of one store (the libuv server's semantics)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.queues: dict[bytes, deque[bytes]] = {}
        self.waiting: dict[bytes, list[Client]] = {}
        self.awaited: dict[Client, int] = {}

    def set(self, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.wake(key)

    def compare_set(self, key: bytes, expected: bytes, new: bytes) -> bytes:
        if key not in self.data:
            if expected:
                self.wake(key)
                return expected             # torch answers the expected value for a missing key
            self.data[key] = new
        elif self.data[key] == expected:
            self.data[key] = new
        self.wake(key)
        return self.data[key]

    def add(self, key: bytes, amount: int) -> int:
        try:
            total = amount + int(self.data.get(key, b"0"))
        except ValueError:
            raise ProtocolError("ADD to a key whose value is not an integer") from None
        self.data[key] = str(total).encode()
        self.wake(key)
        return total

    def append(self, key: bytes, value: bytes) -> None:
        self.data[key] = self.data.get(key, b"") + value
        self.wake(key)

    def check(self, keys: list[bytes]) -> bool:
        return all(k in self.data or self.queues.get(k) for k in keys)

    def wait(self, keys: list[bytes], client: Client) -> bool:
        """True when ``keys`` all exist; otherwise ``client`` is answered when they do."""
        if self.check(keys):
            return True
        missing = [k for k in keys if k not in self.data]
        for k in missing:
            self.waiting.setdefault(k, []).append(client)
        self.awaited[client] = len(missing)
        return False

    def wake(self, key: bytes, only_one: bool = False) -> None:
        waiters = self.waiting.get(key, [])
        for client in list(waiters):
            waiters.remove(client)
            self.awaited[client] = self.awaited.get(client, 1) - 1
            if self.awaited[client] <= 0:
                del self.awaited[client]
                client.send(STOP_WAITING)
                if only_one:
                    break
        if not waiters:
            self.waiting.pop(key, None)

    def forget(self, client: Client) -> None:
        """Drop every wait of ``client`` (CANCEL_WAIT, or its connection closed)."""
        self.awaited.pop(client, None)
        for key in list(self.waiting):
            self.waiting[key] = [c for c in self.waiting[key] if c is not client]
            if not self.waiting[key]:
                del self.waiting[key]

    def queue_push(self, key: bytes, value: bytes) -> None:
        self.queues.setdefault(key, deque()).append(value)
        self.wake(key, only_one=True)

    def queue_pop(self, key: bytes) -> bytes:
        queue = self.queues.setdefault(key, deque())
        answer = I64.pack(len(queue))
        return answer + vector(queue.popleft()) if queue else answer


async def command(code: int, store: Store, read: Reader, client: Client) -> None:
    """Read the arguments of one command, apply it and answer."""
    if code == SET:
        store.set(await read.key(), await read.value())
    elif code == COMPARE_SET:
        key, expected, new = await read.key(), await read.value(), await read.value()
        client.send(vector(store.compare_set(key, expected, new)))
    elif code == GET:
        client.send(vector(store.data.get(await read.key(), b"")))
    elif code == ADD:
        key = await read.key()
        client.send(I64.pack(store.add(key, await read.fixed(I64))))
    elif code == CHECK:
        client.send(READY if store.check(await read.keys()) else NOT_READY)
    elif code == WAIT:
        if store.wait(await read.keys(), client):
            client.send(STOP_WAITING)
    elif code == GETNUMKEYS:
        client.send(I64.pack(len(store.data)))
    elif code == DELETE_KEY:
        client.send(I64.pack(int(store.data.pop(await read.key(), None) is not None)))
    elif code == APPEND:
        store.append(await read.key(), await read.value())
    elif code == MULTI_GET:
        client.send(b"".join(vector(store.data.get(k, b"")) for k in await read.keys()))
    elif code == MULTI_SET:
        for _ in range(await read.fixed(U64)):
            store.set(await read.key(), await read.value())
    elif code == CANCEL_WAIT:
        store.forget(client)
        client.send(WAIT_CANCELED)
    elif code == PING:
        client.send(U32.pack(await read.fixed(U32)))
    elif code == QUEUE_PUSH:
        store.queue_push(await read.key(), await read.value())
    elif code == QUEUE_POP:
        client.send(store.queue_pop(await read.key()))
    elif code == QUEUE_LEN:
        client.send(I64.pack(len(store.queues.get(await read.key(), ()))))
    else:
        raise ProtocolError(f"unknown command {code}")


class StoreServer:
    """One store listening on ``host:port`` in the running loop (host None: every address of
    both families; port 0: a free port, with one host only)."""

    def __init__(self) -> None:
        self.store = Store()
        self.clients: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, host: str | None, port: int) -> StoreServer:
        self = cls()
        self.server = await asyncio.start_server(self.session, host, port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client, read = Client(writer), Reader(reader)
        self.clients.add(writer)
        try:
            first = await reader.readexactly(1)
            if first[0] != VALIDATE or await read.fixed(U32) != MAGIC:
                return
            while True:
                await command((await reader.readexactly(1))[0], self.store, read, client)
                if writer.transport.get_write_buffer_size() > MAX_VALUE_LEN:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, asyncio.CancelledError):
            pass        # cancelled: the store is closing (asyncio.run cancels the sessions left)
        finally:
            self.store.forget(client)
            self.clients.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop listening and close every client's connection, as torch's server does."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.clients):
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()
