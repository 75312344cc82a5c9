"""Alibaba Cloud credentials, kept encrypted by Prefect and handed to the SDK clients."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class AlibabaCloudCredentials(Block):
    """Access key (or STS token) for the ROS, CS and ECS APIs.

    Example:
        ```python
        from blocks import AlibabaCloudCredentials
        creds = AlibabaCloudCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Alibaba Cloud Credentials"
    _block_type_slug = "alibaba-cloud-credentials"
    _documentation_url = "https://www.alibabacloud.com/help/en/ram/user-guide/create-an-accesskey-pair"
    _description = "Access key (or STS token) ServeNest uses for Alibaba Cloud ROS, CS and ECS."

    access_key_id: str = Field(..., description="AccessKey ID.")
    access_key_secret: SecretStr = Field(..., description="AccessKey secret.")
    security_token: SecretStr | None = Field(
        None, description="STS security token, when the key is temporary."
    )
    region_id: str = Field("cn-hangzhou", description="Default region for API calls.")
    endpoint_override: str | None = Field(
        None,
        description="host:port that replaces every product endpoint (the local emulator).",
    )
