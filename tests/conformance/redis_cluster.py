"""A private Redis Cluster: three primaries from the redis-server binary on PATH, each on a free port with a data
directory of its own, joined by `redis-cli --cluster create` and served once every node says `cluster_state:ok`.

Slots can be moved between nodes (`move_slot`) the way `redis-cli --cluster reshard` does it, one slot at a time:
IMPORTING / MIGRATING, MIGRATE of the keys, then SETSLOT NODE on every primary. `begin_move` stops half-way, with
the slot MIGRATING, so a client meets ASK redirects; `finish_move` completes it. `add_replica` and `failover` promote
a replica the way an operator's CLUSTER FAILOVER does.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from conftest import free_port

from .servers import PrivateServer, binary


class PrivateRedisCluster:
    def __init__(self, primaries: int = 3) -> None:
        self.bus_ports: dict[int, int] = {}  # port -> cluster bus port
        self.servers = [self._server(self._pong_of(i)) for i in range(primaries)]
        self.urls = [f"redis://127.0.0.1:{server.port}/0" for server in self.servers]
        self.ports = [server.port for server in self.servers]

    def _server(self, ready: Callable[[], Awaitable[bool]]) -> PrivateServer:
        bus = free_port()  # not port + 10000, which may be out of free_port's range
        server = PrivateServer("redis-cluster", lambda port, workdir: _command(port, workdir, bus), ready)
        self.bus_ports[server.port] = bus
        return server

    def _pong_of(self, index: int):  # type: ignore[no-untyped-def]
        async def pong() -> bool:
            client = Redis(port=self.servers[index].port, socket_connect_timeout=0.5)
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        return pong

    async def start(self, timeout_s: float = 30.0) -> None:
        for server in self.servers:
            await server.start()
        create = [
            binary("redis-cli", "redis-cli"),
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        done = await asyncio.to_thread(subprocess.run, create, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}\n{done.stderr}")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await self._all_ok():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the cluster did not reach cluster_state:ok")
            await asyncio.sleep(0.05)

    async def _all_ok(self) -> bool:
        for port in self.ports:
            client = self.client(port)
            try:
                info = (await command(client, "CLUSTER", "INFO")).decode()
                if "cluster_state:ok" not in info:
                    return False
                # Every node must also know every slot's owner, or a client may be sent round in circles.
                slots = await command(client, "CLUSTER", "SLOTS")
                if sum(end - start + 1 for start, end, *_ in slots) != 16384:
                    return False
            finally:
                await client.aclose()
        return True

    def client(self, port: int) -> Redis:
        return Redis(port=port, socket_connect_timeout=1.0)

    async def node_id(self, port: int) -> str:
        client = self.client(port)
        try:
            return str((await command(client, "CLUSTER", "MYID")).decode())
        finally:
            await client.aclose()

    async def keyslot(self, key: str) -> int:
        client = self.client(self.ports[0])
        try:
            return int(await command(client, "CLUSTER", "KEYSLOT", key))
        finally:
            await client.aclose()

    async def keys_in_slot(self, port: int, slot: int) -> int:
        """How many keys of `slot` the node on `port` holds (any node answers, owner or not)."""
        client = self.client(port)
        try:
            return int(await command(client, "CLUSTER", "COUNTKEYSINSLOT", slot))
        finally:
            await client.aclose()

    async def owner(self, key: str) -> int:
        """The port of the primary that serves `key`'s slot, as the cluster itself says."""
        slot = await self.keyslot(key)
        client = self.client(self.ports[0])
        try:
            for start, end, primary, *_ in await command(client, "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        finally:
            await client.aclose()
        raise LookupError(slot)

    async def begin_move(self, slot: int, source: int, target: int) -> None:
        """The slot MIGRATING on `source`, IMPORTING on `target`, its keys moved: new keys there get ASK."""
        source_id, target_id = await self.node_id(source), await self.node_id(target)
        src, dst = self.client(source), self.client(target)
        try:
            await command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            await command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := await command(src, "CLUSTER", "GETKEYSINSLOT", slot, 100):
                await command(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        finally:
            await src.aclose()
            await dst.aclose()

    async def finish_move(self, slot: int, target: int) -> None:
        """The slot assigned to `target` on every primary (the target first, as redis-cli does)."""
        target_id = await self.node_id(target)
        for port in [target, *(p for p in self.ports if p != target)]:
            client = self.client(port)
            try:
                await command(client, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
            finally:
                await client.aclose()

    async def move_slot(self, slot: int, source: int, target: int) -> None:
        await self.begin_move(slot, source, target)
        await self.finish_move(slot, target)

    async def add_replica(self, primary: int, timeout_s: float = 20.0) -> int:
        """Starts one more node, as a replica of `primary`, and waits until it has synced; returns its port."""
        server = self._server(lambda: self._pong_port(server.port))
        await server.start()
        self.servers.append(server)
        primary_id = await self.node_id(primary)
        client = self.client(server.port)
        try:
            await command(client, "CLUSTER", "MEET", "127.0.0.1", primary, self.bus_ports[primary])
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:  # REPLICATE needs the primary known to the new node first
                try:
                    await command(client, "CLUSTER", "REPLICATE", primary_id)
                    break
                except ResponseError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            while (await client.info("replication")).get("master_link_status") != "up":
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("the replica did not sync")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        return server.port

    async def synced(self, primary: int, replica: int) -> bool:
        """Whether the replica has applied everything the primary has written."""
        offsets = []
        for port, field in ((primary, "master_repl_offset"), (replica, "slave_repl_offset")):
            client = self.client(port)
            try:
                offsets.append(int((await client.info("replication"))[field]))
            finally:
                await client.aclose()
        return offsets[0] == offsets[1]

    async def failover(self, replica: int, timeout_s: float = 20.0) -> None:
        """A manual failover (CLUSTER FAILOVER, no data lost): the replica becomes the primary of its slots, and
        the waits until every primary's slot map says so."""
        client = self.client(replica)
        try:
            await command(client, "CLUSTER", "FAILOVER")
        finally:
            await client.aclose()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            agreed = True
            for port in self.ports:
                client = self.client(port)
                try:
                    slots = await command(client, "CLUSTER", "SLOTS")
                finally:
                    await client.aclose()
                agreed = agreed and any(int(primary[1]) == replica for _, _, primary, *_ in slots)
            if agreed:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the failover did not complete")
            await asyncio.sleep(0.05)

    async def _pong_port(self, port: int) -> bool:
        client = Redis(port=port, socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    async def close(self) -> None:
        for server in self.servers:
            await server.close()


async def command(client: Redis, *args: Any) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def _command(port: int, workdir: Path, bus: int) -> list[str]:
    return [
        *(binary("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
        *("--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf")),
        *("--cluster-port", str(bus)),
        *("--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--daemonize", "no"),
        *("--logfile", str(workdir / "redis.log")),
    ]
