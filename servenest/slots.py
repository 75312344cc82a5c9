"""The two slots a deployment's resources can live in, so a redeploy can run beside them.

A deployment ``N`` serves from resources named ``N`` (the slot provision uses) or ``N-b``
(the other slot, used by a side-by-side redeploy). Each slot is a full copy with its own
state record, stack, Kubernetes objects or local port; the registered endpoint block says
which slot is live (``ServeNestEndpoint.instance``). The next side-by-side redeploy goes
to the other slot, and the old one is torn down once the new one has taken over.
"""

from __future__ import annotations

SECOND_SLOT_SUFFIX = "-b"


def check_deployment_name(name: str) -> str:
    """A deployment's own name may not look like another deployment's second slot."""
    from servenest.errors import SpecError

    if name.endswith(SECOND_SLOT_SUFFIX):
        raise SpecError(
            f"deployment name {name!r} ends in {SECOND_SLOT_SUFFIX!r}, which names the second slot of "
            f"deployment {name.removesuffix(SECOND_SLOT_SUFFIX)!r} (a side-by-side redeploy); choose another name")
    return name


def slot_names(deployment: str) -> tuple[str, str]:
    return deployment, deployment + SECOND_SLOT_SUFFIX


def other_slot(deployment: str, live_instance: str) -> str:
    first, second = slot_names(deployment)
    return first if live_instance == second else second


def deployment_of(instance: str, deployments: set[str] | None = None) -> str:
    """The deployment an instance belongs to (``N-b`` -> ``N`` when ``N`` is known or no
    set of deployments is given)."""
    base = instance.removesuffix(SECOND_SLOT_SUFFIX)
    if base != instance and (deployments is None or base in deployments):
        return base
    return instance
