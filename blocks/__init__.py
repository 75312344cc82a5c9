"""Prefect blocks ServeNest registers: `prefect block register -m blocks`."""

from blocks.alibaba import AlibabaCloudCredentials
from blocks.endpoint import ServeNestEndpoint
from blocks.health import ServeNestHealth

__all__ = ["AlibabaCloudCredentials", "ServeNestEndpoint", "ServeNestHealth"]
