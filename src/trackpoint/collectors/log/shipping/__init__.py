"""Shipping finished log files to object storage (S3, GCS, Azure Blob) through fsspec: `shipper` does one verified,
idempotent pass over a log directory; `service` runs passes off the event loop in the supervisor and `trackpoint ship`.
"""

from trackpoint.collectors.log.files import finished_files
from trackpoint.collectors.log.shipping.shipper import (
    PassReport,
    ShipError,
    Shipped,
    Shipper,
    ShipStats,
    check_shipping,
    object_key,
    open_store,
    shippers,
)

__all__ = [
    "PassReport",
    "ShipError",
    "ShipStats",
    "Shipped",
    "Shipper",
    "check_shipping",
    "finished_files",
    "object_key",
    "open_store",
    "shippers",
]
