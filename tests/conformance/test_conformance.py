"""The conformance battery (trackpoint.testing.conformance, the one a plugin runs too) against the real server of
every built-in collector; each target module (target_<name>.py) gives a server and a way to read back what reached it.

The example plugin's sqlite collector runs it from the plugin's own tests, as an integrator would
(tests/test_plugin_example.py).
"""

from __future__ import annotations

import pytest

from trackpoint.testing.conformance import CollectorConformance, Target

from . import target_kafka, target_nats, target_redis_streams, target_rollup

pytestmark = pytest.mark.e2e  # every collector against its real server


class TestKafka(CollectorConformance):
    async def make_target(self) -> Target:
        return await target_kafka.make_target()


class TestNats(CollectorConformance):
    async def make_target(self) -> Target:
        return await target_nats.make_target()


class TestRedisStreams(CollectorConformance):
    async def make_target(self) -> Target:
        return await target_redis_streams.make_target()


class TestRollup(CollectorConformance):
    async def make_target(self) -> Target:
        return await target_rollup.make_target()
