"""A registered, gated endpoint: everything a client or a later flow needs to find it."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field


class ServeNestEndpoint(Block):
    """A model endpoint ServeNest brought up, saved under its deployment name.

    Example:
        ```python
        from blocks import ServeNestEndpoint
        endpoint = ServeNestEndpoint.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "ServeNest Endpoint"
    _block_type_slug = "servenest-endpoint"
    _documentation_url = "https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html"
    _description = "A gated model endpoint and what teardown needs to remove it."

    deployment: str = Field(..., description="Deployment name (also this block's name).")
    topology: str = Field(..., description="Topology the endpoint runs on.")
    base_url: str = Field(..., description="Base URL of the OpenAI-compatible API.")
    served_model_name: str = Field(..., description="Model name clients send.")
    api_key_secret: str = Field(..., description="Name of the Secret block holding the API key.")
    spec: dict = Field(..., description="The deployment spec in force.")
    state: dict = Field(..., description="Resources the deployment created, for teardown.")
    registered_at: float = Field(..., description="Unix time of registration.")
    last_gate: dict = Field(default_factory=dict, description="Result of the last health gate.")
    instance: str | None = Field(
        None, description="Name the serving resources carry: the deployment name, or its "
        "second slot (<deployment>-b) after a side-by-side redeploy; unset means the deployment name.")
    registered_by: str | None = Field(
        None, description="Id of the flow run that registered this endpoint.")
    hourly_cost: float | None = Field(
        None, description="Estimated price per hour while it runs, before it was created.")
    currency: str | None = Field(None, description="Currency of hourly_cost.")
    last_benchmark: dict = Field(
        default_factory=dict, description="Headline figures of the last benchmark run.")

    @property
    def instance_name(self) -> str:
        return self.instance or self.deployment
