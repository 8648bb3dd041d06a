"""One admin route table (admin/routes.py) serves and documents: what the supervisor serves is exactly what the
OpenAPI document and the endpoints reference list, third-party plugins' routes included."""

from __future__ import annotations

import pytest

from conftest import load_config
from trackpoint.admin.routes import CORE_ROUTES, admin_endpoints
from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.config import LoadedConfig
from trackpoint.config.model import Config
from trackpoint.plugins import AdminRoute, Plugin, Registry, discover, registry, resolve
from trackpoint.process.supervisor import Overrides, Supervisor
from trackpoint.reference.config import endpoints_reference
from trackpoint.reference.openapi import openapi_document


async def _stats(request: AdminRequest, config: Config) -> AdminResponse:
    """Counts of the third-party plugin.

    Not part of the summary."""
    return AdminResponse.json(200, {"ok": True})


async def _hijack(request: AdminRequest, config: Config) -> AdminResponse:
    """A plugin route on a core path: never served."""
    return AdminResponse.json(200, {})


@pytest.fixture
def with_plugin() -> Registry:
    plugins, failures = discover()
    third_party = Plugin(
        name="third_party",
        admin_routes=[AdminRoute("GET", "/third/{id}/stats", _stats), AdminRoute("GET", "/metrics", _hijack)],
    )
    return resolve([*plugins, third_party], failures)


def _served(loaded: LoadedConfig, plugins: Registry) -> set[tuple[str, str]]:
    admin = Supervisor(loaded, None, Overrides(), plugins)._admin_server()
    served = set(admin.routes)
    served |= {(method, "/" + "/".join(pattern)) for method, pattern, _ in admin.patterns}
    return served


def test_the_supervisor_serves_exactly_the_documented_routes(with_plugin: Registry) -> None:
    loaded = load_config()
    listed = {(endpoint.method, endpoint.path) for endpoint in admin_endpoints(with_plugin.admin_routes)}
    assert _served(loaded, with_plugin) == listed
    assert ("GET", "/third/{id}/stats") in listed  # a third-party plugin's route
    assert ("PUT", "/banker/campaigns/{id}") in listed  # a built-in plugin's route
    assert {(route.method, route.path) for route in CORE_ROUTES} <= listed

    document = openapi_document(loaded, with_plugin)
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if "servers" in item
        for method in item
        if method != "servers"
    }
    assert documented == listed
    stats = document["paths"]["/third/{id}/stats"]["get"]
    assert stats["summary"] == "Counts of the third-party plugin."
    assert stats["parameters"][0]["name"] == "id"
    reference = endpoints_reference(loaded, with_plugin)
    for method, path in listed:
        assert f"| {method} | `{path}` |" in reference


def test_a_core_route_wins_over_a_plugin_route(with_plugin: Registry) -> None:
    hijack = [e for e in admin_endpoints(with_plugin.admin_routes) if e.path == "/metrics"]
    assert [e.summary for e in hijack] == ["Prometheus metrics, summed over the workers."]
    admin = Supervisor(load_config(), None, Overrides(), with_plugin)._admin_server()
    assert admin.routes[("GET", "/metrics")].__name__ == "prometheus"


def test_only_the_probes_and_the_dashboard_page_are_public() -> None:
    # The page, its script and style hold no data: the dashboard reads /dashboard/stats with the token.
    endpoints = admin_endpoints(registry().admin_routes)
    public = {e.path for e in endpoints if e.public}
    assert public == {"/healthz", "/readyz", "/startupz", "/", "/dashboard/app.js", "/dashboard/app.css"}
    assert {e.path for e in endpoints if e.probe} == {"/healthz", "/readyz", "/startupz"}
