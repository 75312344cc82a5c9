"""Errors a user can act on.

A ServeNestError is deterministic unless it is also ``Retryable``: tasks retry only
transient failures (see ``tasks.retry.transient_only``).
"""

from __future__ import annotations


class ServeNestError(Exception):
    """Base class: a message written for the person running the pipeline."""


class Retryable:
    """Mixin for failures that another attempt can fix (network, a busy mirror)."""


class SpecError(ServeNestError):
    """The deployment spec is malformed or inconsistent."""


class UnknownModelError(SpecError):
    """The spec names a model that is not in the catalog."""


class DoesNotFitError(SpecError):
    """The hardware cannot hold the model's weights plus KV-cache headroom."""


class MissingSecretError(ServeNestError):
    """A Prefect Secret block the spec refers to does not exist."""


class AlreadyServingError(ServeNestError):
    """The deployment is already up; provision will not replace it."""


class PortInUseError(ServeNestError):
    """The engine's port is already taken on this machine."""


class EngineEnvironmentError(ServeNestError):
    """The engine's virtual environment could not be created or is broken."""


class WeightsError(ServeNestError):
    """Weights could not be staged or failed verification."""


class DownloadFailedError(WeightsError, Retryable):
    """A hub or mirror download failed; the clients resume, so retrying is cheap."""


class EngineExitedError(ServeNestError):
    """The engine process exited; the message carries its last log lines."""


class GateFailedError(ServeNestError):
    """The endpoint did not pass the health gate."""

    def __init__(self, message: str, stages: list | None = None):
        super().__init__(message)
        self.stages = stages or []


class NotRegisteredError(ServeNestError):
    """No endpoint is registered under that deployment name."""


class TopologyNotAvailableError(ServeNestError):
    """The spec's topology has no implementation in this version."""


class BenchmarkGateError(ServeNestError):
    """A benchmark missed the deployment's SLOs, was invalid, or regressed."""


class BenchmarkInputError(ServeNestError):
    """Bad benchmark input, found before the run."""


class CloudError(ServeNestError):
    """An Alibaba Cloud API refused a call; carries the API's code and request id."""

    def __init__(self, message: str, code: str = "", status: int | None = None, request_id: str = ""):
        super().__init__(message)
        self.code = code
        self.status = status
        self.request_id = request_id


class CloudTransientError(CloudError, Retryable):
    """Throttling, a 5xx or a broken connection outlasted the in-call retries."""


class CloudPermissionError(CloudError):
    """The access key is valid but not allowed to make this call (RAM policy)."""


class CloudCredentialsError(CloudError):
    """No usable credentials: a missing block, or a key the cloud does not know."""


class CloudInputError(CloudError):
    """Region, zone, instance type or network settings the cloud cannot honour."""


class CapacityError(CloudError):
    """No candidate zone and instance type had capacity; every attempt is recorded."""


class StackFailedError(CloudError):
    """A ROS stack ended in a failed state; the message carries the failed resources."""


class HostCommandError(CloudError):
    """A Cloud Assistant command failed on a host; the message carries its output."""


class BudgetExceededError(ServeNestError):
    """The estimated hourly price is above the spec's budget."""


class ApprovalDeniedError(ServeNestError):
    """A person declined (or did not answer) the spend approval."""


class HealFailedError(ServeNestError):
    """Every rung of the heal ladder failed or was not allowed: a person must look."""
