"""Prefect blocks ServeNest registers: `prefect block register -m blocks`."""

from blocks.alibaba import AlibabaCloudCredentials
from blocks.endpoint import ServeNestEndpoint

__all__ = ["AlibabaCloudCredentials", "ServeNestEndpoint"]
