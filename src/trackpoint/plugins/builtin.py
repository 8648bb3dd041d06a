"""The built-in plugin: trackpoint's own collectors and preprocessors, registered exactly like a third party's."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

import msgspec
import yaml

from trackpoint.collectors.banker import admin as banker_admin
from trackpoint.collectors.banker.config import BankerCollectorConfig, check_banker
from trackpoint.collectors.kafka.config import KafkaCollectorConfig
from trackpoint.collectors.log.checks import check_log_dirs
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.shipping.shipper import check_shipping
from trackpoint.collectors.nats.config import NatsCollectorConfig
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig
from trackpoint.collectors.rollup import admin as rollup_admin
from trackpoint.collectors.rollup.config import RollupCollectorConfig
from trackpoint.collectors.stdout.config import StdoutCollectorConfig
from trackpoint.config.load import default_text
from trackpoint.config.model import EventTypeSpec
from trackpoint.edge.cors import check_cors
from trackpoint.plugins import AdminRoute, CollectorKind, Plugin, PreprocessorKind
from trackpoint.preprocessors.anonymize_ip.config import AnonymizeIpConfig
from trackpoint.preprocessors.attribute_conversion.config import AttributeConversionConfig
from trackpoint.preprocessors.check_consent.checks import check_user_id_cookie
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig
from trackpoint.preprocessors.check_price_bound.config import CheckPriceBoundConfig
from trackpoint.preprocessors.click_checks import check_clicks
from trackpoint.preprocessors.decrypt_price.config import DecryptPriceConfig
from trackpoint.preprocessors.decrypt_price.preprocessor import check_decrypt_price
from trackpoint.preprocessors.flag_invalid_traffic.checks import check_ivt_order
from trackpoint.preprocessors.flag_invalid_traffic.config import FlagInvalidTrafficConfig
from trackpoint.preprocessors.geo import admin as geo_admin
from trackpoint.preprocessors.geo.checks import check_geo
from trackpoint.preprocessors.geo.config import GeoConfig
from trackpoint.preprocessors.issue_click_id.config import IssueClickIdConfig
from trackpoint.preprocessors.parse_user_agent.config import ParseUserAgentConfig
from trackpoint.preprocessors.pseudonymize.checks import check_pseudonymize
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig
from trackpoint.preprocessors.vast.config import VastConfig
from trackpoint.preprocessors.vast.preprocessor import check_vast
from trackpoint.privacy.checks import check_privacy
from trackpoint.security.admin_token import check_admin_token
from trackpoint.tag import check_tag


def _lazy(target: str) -> Callable[..., Any]:
    """A factory for `module:Class` (under `trackpoint.`) that imports its module on first use: a worker loads only
    the client libraries its config needs. The arguments go to the class as they come (name, config, then the
    collector context or the data_dir)."""
    module_name, class_name = target.split(":")
    module_name = "trackpoint." + module_name

    def make(*args: Any) -> Any:
        return getattr(import_module(module_name), class_name)(*args)

    return make


def default_event_types() -> dict[str, EventTypeSpec]:
    """The embedded default's event types, offered as presets (`preset: impression`) to every config file."""
    document = yaml.safe_load(default_text())
    return msgspec.convert(document["event_types"], dict[str, EventTypeSpec])


plugin = Plugin(
    name="builtin",
    collectors=[
        CollectorKind(LogCollectorConfig, _lazy("collectors.log.collector:LogCollector"), implicit=True),
        CollectorKind(StdoutCollectorConfig, _lazy("collectors.stdout.collector:StdoutCollector"), implicit=True),
        CollectorKind(KafkaCollectorConfig, _lazy("collectors.kafka.collector:KafkaCollector")),
        CollectorKind(NatsCollectorConfig, _lazy("collectors.nats.collector:NatsCollector")),
        CollectorKind(RedisStreamsCollectorConfig, _lazy("collectors.redis_streams.collector:RedisStreamsCollector")),
        CollectorKind(BankerCollectorConfig, _lazy("collectors.banker.collector:BankerCollector"), implicit=True),
        CollectorKind(RollupCollectorConfig, _lazy("collectors.rollup.collector:RollupCollector"), implicit=True),
    ],
    preprocessors=[
        PreprocessorKind(AnonymizeIpConfig, _lazy("preprocessors.anonymize_ip.preprocessor:AnonymizeIp")),
        PreprocessorKind(ParseUserAgentConfig, _lazy("preprocessors.parse_user_agent.preprocessor:ParseUserAgent")),
        PreprocessorKind(
            PseudonymizeConfig,
            _lazy("preprocessors.pseudonymize.preprocessor:Pseudonymize"),
            uses_data_dir=True,
        ),
        PreprocessorKind(CheckConsentConfig, _lazy("preprocessors.check_consent.preprocessor:CheckConsent")),
        PreprocessorKind(
            DecryptPriceConfig,
            _lazy("preprocessors.decrypt_price.preprocessor:DecryptPrice"),
            uses_data_dir=True,
        ),
        PreprocessorKind(IssueClickIdConfig, _lazy("preprocessors.issue_click_id.preprocessor:IssueClickId")),
        PreprocessorKind(
            AttributeConversionConfig,
            _lazy("preprocessors.attribute_conversion.preprocessor:AttributeConversion"),
        ),
        PreprocessorKind(
            FlagInvalidTrafficConfig,
            _lazy("preprocessors.flag_invalid_traffic.preprocessor:FlagInvalidTraffic"),
        ),
        PreprocessorKind(VastConfig, _lazy("preprocessors.vast.preprocessor:Vast")),
        PreprocessorKind(GeoConfig, _lazy("preprocessors.geo.preprocessor:Geo"), uses_data_dir=True),
        PreprocessorKind(CheckPriceBoundConfig, _lazy("preprocessors.check_price_bound.preprocessor:CheckPriceBound")),
    ],
    event_types=default_event_types(),
    checks=[
        check_admin_token,
        check_banker,
        check_privacy,
        check_pseudonymize,
        check_user_id_cookie,
        check_ivt_order,
        check_decrypt_price,
        check_clicks,
        check_vast,
        check_cors,
        check_shipping,
        check_log_dirs,
        check_geo,
        check_tag,
    ],
    admin_routes=[
        AdminRoute("GET", "/banker/campaigns", banker_admin.list_campaigns),
        AdminRoute("GET", "/banker/campaigns/{id}", banker_admin.get_campaign),
        AdminRoute("PUT", "/banker/campaigns/{id}", banker_admin.put_campaign),
        AdminRoute("GET", "/banker/campaigns/{id}/ledger", banker_admin.get_ledger),
        AdminRoute("GET", "/banker/notifications", banker_admin.get_notifications),
        AdminRoute("GET", "/reports/hourly", rollup_admin.get_hourly),
        AdminRoute("GET", "/geo/databases", geo_admin.get_databases),
    ],
    attributions=[geo_admin.attributions],
)
