"""Options of the geo preprocessor (the `type: geo` entries of `preprocessors:`) and the dims it adds."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from trackpoint.config.model import PreprocessorBase

# The dims the geo preprocessor adds: the names rollups, rate limits and collector filters use.
COUNTRY_DIM = "geo.country"
REGION_DIM = "geo.region"
CITY_DIM = "geo.city"
ASN_DIM = "geo.asn"
AS_ORG_DIM = "geo.as_org"
GEO_DIMS = (COUNTRY_DIM, REGION_DIM, CITY_DIM, ASN_DIM, AS_ORG_DIM)

# Where `scripts/geo-fetch` puts the DB-IP Lite country database (relative to data_dir): the default `database`.
DEFAULT_DATABASE = "geo/dbip-country.mmdb"

# Autonomous systems of the big cloud and hosting providers: requests from them are servers, not people looking at an
# ad (IAB/MRC general invalid traffic: known data-centre traffic). Residential proxies, VPN exits on consumer ISPs and
# relay networks that carry people's traffic (Apple Private Relay, Cloudflare WARP) are deliberately not listed.
HOSTING_ASNS: tuple[int, ...] = (
    16509,  # Amazon Web Services
    14618,  # Amazon Web Services (us-east-1)
    15169,  # Google
    396982,  # Google Cloud
    8075,  # Microsoft (Azure)
    31898,  # Oracle Cloud
    36351,  # IBM Cloud (SoftLayer)
    14061,  # DigitalOcean
    63949,  # Akamai Connected Cloud (Linode)
    20473,  # Vultr (Choopa)
    16276,  # OVHcloud
    24940,  # Hetzner Online
    213230,  # Hetzner Cloud
    12876,  # Scaleway
    51167,  # Contabo
    60781,  # Leaseweb Netherlands
    28753,  # Leaseweb Germany
    30633,  # Leaseweb USA
    8560,  # IONOS
    197540,  # netcup
    45102,  # Alibaba Cloud
    37963,  # Alibaba (Aliyun)
    132203,  # Tencent Cloud
    45090,  # Tencent
    36352,  # ColoCrossing
    53667,  # FranTech (BuyVM)
    9009,  # M247
    46606,  # Unified Layer
    26496,  # GoDaddy
    21859,  # Zenlayer
)


class GeoConfig(PreprocessorBase, tag="geo"):
    """Adds where a request comes from, looked up offline in MaxMind-format (`.mmdb`) databases: `geo.country`
    (ISO 3166-1 alpha-2), with a city database `geo.region` and `geo.city`, with an ASN database `geo.asn` and
    `geo.as_org`, and `ivt: datacenter` for hosting networks. Reads the full client IP, so it must come before
    anonymize_ip in an event type's preprocessors (checked at start-up); it stores nothing of the IP. An address the
    databases do not know adds nothing. Lookups read the workers' own copy of each file (under
    data_dir/geo/in-use, so a file rewritten in place cannot crash them), copied again when the file changes
    (checked every `reload_check_s`, off the request path); a worker that restarts while the file is missing or
    broken serves the last good copy. Country and region are not personal data; the city can be, and goes to untrusted
    collectors only when they name `geo.city` in `send_private`."""

    # Dims this preprocessor adds (rate limits may key on them, rollups group by them) and those of them that go
    # only to trusted collectors (or ones naming them in send_private).
    output_dims: ClassVar[tuple[str, ...]] = GEO_DIMS
    private_dims: ClassVar[tuple[str, ...]] = (CITY_DIM,)

    database: Annotated[
        str | None,
        Meta(
            description="The country or city database (.mmdb: DB-IP Lite, GeoLite2/GeoIP2 Country or City, "
            "ip-location-db), relative to data_dir unless absolute. The default is where `scripts/geo-fetch` puts "
            "DB-IP Lite country. Unset: no location, only the network (needs asn_database)."
        ),
    ] = DEFAULT_DATABASE
    asn_database: Annotated[
        str | None,
        Meta(
            description="The ASN database (.mmdb with autonomous_system_number and autonomous_system_organization: "
            "GeoLite2-ASN, DB-IP ASN Lite, ip-location-db asn), relative to data_dir unless absolute. Unset: no "
            "network and no datacenter flag."
        ),
    ] = None
    city: Annotated[
        bool, Meta(description="Add geo.region and geo.city when the database has them (false: country only).")
    ] = True
    flag_hosting: Annotated[
        bool,
        Meta(
            description="Flag events from a network in hosting_asns as invalid traffic (`dims.ivt: datacenter`, "
            "unless another preprocessor flagged them first); the event type's `invalid_traffic` decides what "
            "happens to them. Needs asn_database."
        ),
    ] = True
    hosting_asns: Annotated[
        list[Annotated[int, Meta(ge=1, le=4_294_967_295)]],
        Meta(
            description="Autonomous system numbers of cloud and hosting networks. The default lists the big "
            "clouds and hosters (AWS, Google Cloud, Azure, Oracle, IBM, DigitalOcean, Linode, Vultr, OVHcloud, "
            "Hetzner, Scaleway, Contabo, Leaseweb, IONOS, Alibaba, Tencent, ...); set your own list to replace it."
        ),
    ] = msgspec.field(default_factory=lambda: list(HOSTING_ASNS))
    reload_check_s: Annotated[
        float,
        Meta(
            ge=1,
            le=3600,
            description="Seconds between checks of the database files for a change (a stat by the worker's "
            "timer, never per request); a changed file is copied under data_dir/geo/in-use and reopened, a broken "
            "one keeps the previous data.",
        ),
    ] = 5.0
    attribution: Annotated[
        str | None,
        Meta(
            description="The attribution the database's licence requires, shown by the admin API "
            "(`GET /geo/databases`) and in the dashboard's footer. Unset: DB-IP's (CC BY 4.0) for a DB-IP database, "
            "MaxMind's for GeoLite2."
        ),
    ] = None
