"""Sends hand-packed commands (resp.py) to a Redis server or to a Redis Cluster, given the URL of one node.

A command is sent with its key. On a plain server (`CLUSTER SLOTS` answers that cluster support is disabled) all go
to that server in one round trip, as before. On a cluster, the slot map is read with `CLUSTER SLOTS` from the node
of the URL (or any node met since), each key's slot is computed as Redis does (CRC16 of the key or of its hash tag,
`redis.crc.key_slot`), and each primary gets its commands in one round trip of its own, all primaries at once. A
reply `MOVED <slot> <node>` (the slot has moved: resharding, failover) sends that command to the named node and has
the whole map read again before the next send; `ASK <slot> <node>` (the slot is being moved) sends it there once,
after `ASKING`. Neither ran the command, so following them appends nothing twice. `NOSCRIPT` (a node restarted or
promoted with an empty script cache) loads the script on that node and sends the command again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, ResponseError

from trackpoint.collectors.resp import round_trip

SLOTS = 16384
MAX_REDIRECTS = 5  # per command and send: a slot bouncing longer than this is a cluster in trouble; the batch retries
ASKING = b"*1\r\n$6\r\nASKING\r\n"

Address = tuple[str, int]


class ClusterRedirectError(RedisError):
    """A command still redirected after MAX_REDIRECTS hops."""


class Router:
    """Routes each command by its key. `url` names the server or any node of a cluster; `options` are the client's
    (password, timeouts, retry), the same for every node. `script` is loaded on a node that answers NOSCRIPT."""

    def __init__(self, url: str, options: dict[str, Any], script: str) -> None:
        self.url = url
        self.options = options
        self.seed = Redis.from_url(url, **options)
        self.script = script
        self.cluster: bool | None = None  # None: not asked yet (the server may be down at start)
        self._slots: list[Address] = []
        self._stale = True
        self._clients: dict[Address, Redis] = {}
        self.moved = self.asked = 0  # redirects followed, for tests and debugging

    async def send(self, commands: Sequence[tuple[str, Sequence[bytes]]]) -> list[Any]:
        """The replies of `commands` ((key, packed chunks) each), in order. An error reply raises."""
        if self.cluster is None or (self.cluster and self._stale):
            await self.refresh()
        if not self.cluster:
            chunks = [chunk for _, packed in commands for chunk in packed]
            try:
                return await round_trip(self.seed, [chunks], len(commands))
            except NoScriptError:  # a restarted or failed-over server has an empty script cache
                await self.seed.script_load(self.script)
                return await round_trip(self.seed, [chunks], len(commands))
        replies: list[Any] = [None] * len(commands)
        todo = {i: (self._slots[key_slot(key.encode())], False) for i, (key, _) in enumerate(commands)}
        for _ in range(MAX_REDIRECTS + 1):
            by_node: dict[tuple[Address, bool], list[int]] = {}
            for i, target in todo.items():
                by_node.setdefault(target, []).append(i)
            results = await asyncio.gather(*(
                self._node_round_trip(address, asking, [commands[i][1] for i in indexes])
                for (address, asking), indexes in by_node.items()
            ), return_exceptions=True)  # fmt: skip
            answered: list[list[Any]] = []
            for result in results:
                if isinstance(result, BaseException):  # every node answered or failed; the batch is retried
                    self._stale = True  # a node down may be a failover: read the map again before the next send
                    raise result
                answered.append(result)
            todo = {}
            for ((address, asking), indexes), node_replies in zip(by_node.items(), answered, strict=True):
                for i, reply in zip(indexes, node_replies, strict=True):
                    if isinstance(reply, MovedError):
                        self.moved += 1
                        self._stale = True  # the rest of the map may have changed too: read it before the next send
                        moved_to = (reply.host or address[0], int(reply.port))
                        self._slots[reply.slot_id] = moved_to
                        todo[i] = (moved_to, False)
                    elif isinstance(reply, AskError):
                        self.asked += 1
                        todo[i] = ((reply.host or address[0], int(reply.port)), True)
                    elif isinstance(reply, NoScriptError):
                        await self._client(address).script_load(self.script)
                        todo[i] = (address, asking)  # after ASKING again, if it was asked for
                    elif isinstance(reply, ResponseError):  # CLUSTERDOWN, TRYAGAIN, OOM...: the batch is retried
                        self._stale = True
                        raise reply
                    else:
                        replies[i] = reply
            if not todo:
                return replies
        raise ClusterRedirectError(f"still redirected after {MAX_REDIRECTS} hops: {sorted(todo.values())[0]}")

    async def client_for(self, key: str) -> Redis:
        """The client of the node that holds `key`: the server itself when it is not a cluster."""
        if self.cluster is None or (self.cluster and self._stale):
            await self.refresh()
        return self._client(self._slots[key_slot(key.encode())]) if self.cluster else self.seed

    async def primaries(self) -> list[Redis]:
        """The client of every primary: the server itself when it is not a cluster."""
        if self.cluster is None or (self.cluster and self._stale):
            await self.refresh()
        if not self.cluster:
            return [self.seed]
        return [self._client(address) for address in dict.fromkeys(self._slots) if address[1]]

    async def refresh(self) -> None:
        """Reads the slot map (or learns that the server is not a cluster) from the seed or any node known."""
        error: Exception | None = None
        for client in [self.seed, *(c for c in self._clients.values() if c is not self.seed)]:
            try:
                reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except ResponseError as exc:
                if "cluster support disabled" in str(exc):
                    self.cluster, self._stale = False, False
                    return
                error = exc
                continue
            except (RedisError, OSError, TimeoutError) as exc:
                error = exc
                continue
            slots = list(self._slots) or [("", 0)] * SLOTS
            seed_host = urlsplit(self.url).hostname or "127.0.0.1"
            for start, end, primary, *_ in reply:
                host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
                # An empty or unknown ("?") endpoint means the address the client already used.
                address = (host if host not in {"", "?"} else seed_host, int(primary[1]))
                slots[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
            self._slots, self.cluster, self._stale = slots, True, False
            return
        assert error is not None
        raise error

    def _client(self, address: Address) -> Redis:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = Redis.from_url(node_url(self.url, *address), **self.options)
        return client

    async def _node_round_trip(self, address: Address, asking: bool, commands: list[Sequence[bytes]]) -> list[Any]:
        """Every command's reply, an error reply as its exception (the connection stays in step)."""
        pool = self._client(address).connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            chunks: list[bytes] = []
            for packed in commands:
                if asking:  # ASKING holds for the next command only
                    chunks.append(ASKING)
                chunks += packed
            await connection.send_packed_command(chunks, check_health=False)
            replies: list[Any] = []
            for _ in commands:
                if asking:
                    await connection.read_response(timeout=math.inf)
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)

    async def aclose(self) -> None:
        for client in [self.seed, *self._clients.values()]:
            await client.aclose()


def node_url(url: str, host: str, port: int) -> str:
    """`url` with another node's address: the same scheme (TLS or not), user and options; a unix socket's URL
    becomes redis:// (the other nodes are reached over TCP)."""
    parts = urlsplit(url)
    scheme = parts.scheme if parts.scheme in {"redis", "rediss"} else "redis"
    user = parts.netloc.rpartition("@")[0] if parts.scheme != "unix" else ""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("db="))  # a cluster has db 0 only
    return urlunsplit((scheme, f"{user}@{address}" if user else address, "/0", query, ""))
