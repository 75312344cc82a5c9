"""Where a cloud session's credentials come from: the emulator, or a Prefect block."""

from __future__ import annotations

from servenest.cloud.api import CloudSession, Credentials, emulator_credentials
from servenest.errors import CloudCredentialsError


def load_credentials(block_name: str) -> Credentials:
    emulated = emulator_credentials()
    if emulated is not None:
        return emulated
    from blocks.alibaba import AlibabaCloudCredentials

    try:
        block = AlibabaCloudCredentials.load(block_name)
    except ValueError:
        raise CloudCredentialsError(
            f"no AlibabaCloudCredentials block named {block_name!r}. Create it in the Prefect UI "
            f"(Blocks → Alibaba Cloud Credentials) or with `servenest credentials {block_name}`; "
            f"or rehearse without an account: `servenest up SPEC --emulate`."
        ) from None
    token = block.security_token.get_secret_value() if block.security_token else None
    return Credentials(
        block.access_key_id, block.access_key_secret.get_secret_value(), token, block.endpoint_override
    )


def open_session(region: str, block_name: str) -> CloudSession:
    return CloudSession(load_credentials(block_name), region)
