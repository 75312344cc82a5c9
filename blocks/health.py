"""The watch's memory of one deployment: last check, incidents, heal's reprovisions."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field


class ServeNestHealth(Block):
    """Check history of a deployment (``servenest.watch.History``), saved as health-<name>.

    A block rather than a Prefect Variable: variables hold 5,000 characters, and seven days
    of incidents can be more. Every worker reads the same record.

    Example:
        ```python
        from blocks import ServeNestHealth
        history = ServeNestHealth.load("BLOCK_NAME").history
        ```
    """

    _block_type_name = "ServeNest Health"
    _block_type_slug = "servenest-health"
    _documentation_url = "https://docs.prefect.io/v3/automate/events/events"
    _description = "What the watch found about a deployment and what heal did about it."

    history: dict = Field(default_factory=dict, description="servenest.watch.History as a dict.")
