"""The built-in plugin: trackpoint's own collectors and preprocessors, registered exactly like a third party's."""

from __future__ import annotations

from typing import Any

import msgspec
import yaml

from trackpoint.banker import admin as banker_admin
from trackpoint.banker.config import BankerCollectorConfig
from trackpoint.collectors.base import Collector, CollectorContext
from trackpoint.collectors.kafka.config import KafkaCollectorConfig
from trackpoint.collectors.nats.config import NatsCollectorConfig
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig
from trackpoint.config.load import default_text
from trackpoint.config.model import (
    AnonymizeIpConfig,
    AttributeConversionConfig,
    CheckConsentConfig,
    DecryptPriceConfig,
    EventTypeSpec,
    FlagInvalidTrafficConfig,
    IssueClickIdConfig,
    LogCollectorConfig,
    ParseUserAgentConfig,
    PseudonymizeConfig,
    StdoutCollectorConfig,
    VastConfig,
)
from trackpoint.plugins import AdminRoute, CollectorKind, Plugin, PreprocessorKind
from trackpoint.preprocessors import Preprocessor

# Factories import their module on first use: a worker loads only the client libraries its config needs.


def _log(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint.collectors.log.collector import LogCollector

    return LogCollector(name, config, context)


def _stdout(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint.collectors.stdout import StdoutCollector

    return StdoutCollector(name, config, context)


def _kafka(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint.collectors.kafka.collector import KafkaCollector

    return KafkaCollector(name, config, context)


def _nats(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint.collectors.nats.collector import NatsCollector

    return NatsCollector(name, config, context)


def _redis_streams(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint.collectors.redis_streams.collector import RedisStreamsCollector

    return RedisStreamsCollector(name, config, context)


def _banker(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint.banker.collector import BankerCollector

    return BankerCollector(name, config, context)


def _anonymize_ip(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.anonymize_ip import AnonymizeIp

    return AnonymizeIp(name, config)


def _parse_user_agent(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.parse_user_agent import ParseUserAgent

    return ParseUserAgent(name, config)


def _pseudonymize(name: str, config: Any, data_dir: str) -> Preprocessor:
    from trackpoint.preprocessors.pseudonymize import Pseudonymize

    return Pseudonymize(name, config, data_dir)


def _check_consent(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.check_consent import CheckConsent

    return CheckConsent(name, config)


def _decrypt_price(name: str, config: Any, data_dir: str) -> Preprocessor:
    from trackpoint.preprocessors.decrypt_price import DecryptPrice

    return DecryptPrice(name, config, data_dir)


def _vast(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.vast import Vast

    return Vast(name, config)


def _issue_click_id(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.issue_click_id import IssueClickId

    return IssueClickId(name, config)


def _attribute_conversion(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.attribute_conversion import AttributeConversion

    return AttributeConversion(name, config)


def _flag_invalid_traffic(name: str, config: Any) -> Preprocessor:
    from trackpoint.preprocessors.flag_invalid_traffic import FlagInvalidTraffic

    return FlagInvalidTraffic(name, config)


def default_event_types() -> dict[str, EventTypeSpec]:
    """The embedded default's event types, offered as presets (`preset: impression`) to every config file."""
    document = yaml.safe_load(default_text())
    return msgspec.convert(document["event_types"], dict[str, EventTypeSpec])


plugin = Plugin(
    name="builtin",
    collectors=[
        CollectorKind(LogCollectorConfig, _log, implicit=True),
        CollectorKind(StdoutCollectorConfig, _stdout, implicit=True),
        CollectorKind(KafkaCollectorConfig, _kafka),
        CollectorKind(NatsCollectorConfig, _nats),
        CollectorKind(RedisStreamsCollectorConfig, _redis_streams),
        CollectorKind(BankerCollectorConfig, _banker, implicit=True),
    ],
    preprocessors=[
        PreprocessorKind(AnonymizeIpConfig, _anonymize_ip),
        PreprocessorKind(ParseUserAgentConfig, _parse_user_agent),
        PreprocessorKind(PseudonymizeConfig, _pseudonymize, uses_data_dir=True),
        PreprocessorKind(CheckConsentConfig, _check_consent),
        PreprocessorKind(DecryptPriceConfig, _decrypt_price, uses_data_dir=True),
        PreprocessorKind(IssueClickIdConfig, _issue_click_id),
        PreprocessorKind(AttributeConversionConfig, _attribute_conversion),
        PreprocessorKind(FlagInvalidTrafficConfig, _flag_invalid_traffic),
        PreprocessorKind(VastConfig, _vast),
    ],
    event_types=default_event_types(),
    admin_routes=[
        AdminRoute("GET", "/banker/campaigns", banker_admin.list_campaigns),
        AdminRoute("GET", "/banker/campaigns/{id}", banker_admin.get_campaign),
        AdminRoute("PUT", "/banker/campaigns/{id}", banker_admin.put_campaign),
        AdminRoute("GET", "/banker/campaigns/{id}/ledger", banker_admin.get_ledger),
        AdminRoute("GET", "/banker/notifications", banker_admin.get_notifications),
    ],
)
