"""Read the API key from its Prefect Secret block."""

from __future__ import annotations

from prefect import task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from servenest.errors import MissingSecretError


def secret_exists(secret_name: str) -> bool:
    try:
        Secret.load(secret_name)
        return True
    except ValueError as exc:
        if "Unable to find block document" in str(exc):
            return False
        raise


def read_api_key(secret_name: str) -> SecretStr:
    try:
        value = Secret.load(secret_name).get()
    except ValueError as exc:
        if "Unable to find block document" in str(exc) or "not found" in str(exc).lower():
            raise MissingSecretError(
                f"the API-key Secret block {secret_name!r} does not exist; create it with "
                f"`servenest key create {secret_name}` (random key) or "
                f"`prefect block create secret`"
            ) from None
        raise
    if not isinstance(value, str) or len(value) < 8:
        raise MissingSecretError(f"Secret block {secret_name!r} must hold a string of 8+ characters")
    return SecretStr(value)


# Never persisted: with result persistence on, Prefect would pickle the key's value.
@task(name="load-api-key", cache_policy=NO_CACHE, persist_result=False)
def load_api_key(secret_name: str) -> SecretStr:
    return read_api_key(secret_name)
