"""The generic Kubernetes client (``servenest.k8s.client.Kube``) over the REAL ``kubernetes``
package against the Kubernetes API emulator: apply, get, list, delete, logs, watches, and
what each failure a cluster answers becomes."""

from __future__ import annotations

import time

import pytest

from servenest.errors import (
    CloudCredentialsError,
    CloudError,
    CloudTransientError,
    Retryable,
)
from servenest.k8s.client import Kube, KubeNotFound
from servenest.rehearsal.kubernetes import KubeController, KubeEmulator

NS = "default"
FLUID = "data.fluid.io/v1alpha1"


@pytest.fixture
def emu():
    with KubeEmulator() as e:
        yield e


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def kube(emu, slept):
    k = Kube.from_kubeconfig(emu.kubeconfig(), sleep=slept.append)
    yield k
    k.close()


def secret(name: str = "api-key", labels: dict | None = None, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "data": data or {"key": "c2stdGVzdA=="}}


def pod(name: str = "engine-0") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.8.5"}]}}


def calls(emu: KubeEmulator, method: str, plural: str) -> list:
    return [c for c in emu.calls if c.method == method and f"/{plural}" in c.path]


# -- apply -------------------------------------------------------------------------------------
def test_apply_creates_then_converges(kube, emu):
    created = kube.apply(secret(labels={"servenest/deployment": "qwq", "tier": "serving"}))
    uid, rv = created["metadata"]["uid"], created["metadata"]["resourceVersion"]
    assert created["metadata"]["labels"] == {"servenest/deployment": "qwq", "tier": "serving"}

    again = kube.apply(secret(labels={"servenest/deployment": "qwq", "tier": "serving"}))
    assert again["metadata"]["uid"] == uid
    assert again["metadata"]["resourceVersion"] == rv  # nothing changed: no write at all
    assert [s["metadata"]["name"] for s in emu.list("secrets", NS)] == ["api-key"]

    changed = kube.apply(secret(labels={"servenest/deployment": "qwq", "tier": "canary"}))
    assert changed["metadata"]["uid"] == uid and changed["metadata"]["resourceVersion"] != rv
    assert emu.get("secrets", NS, "api-key")["metadata"]["labels"]["tier"] == "canary"

    patches = calls(emu, "PATCH", "secrets")
    assert [c.status for c in patches] == [201, 200, 200]
    for c in patches:  # server-side apply, forced, as ServeNest's field manager
        assert c.content_type.startswith("application/apply-patch+yaml")
        assert c.query == {"fieldManager": "servenest", "force": "true"}
    assert not calls(emu, "POST", "secrets") and not calls(emu, "PUT", "secrets")


def test_a_field_dropped_from_the_applied_object_stays_in_the_emulator(kube, emu):
    # A real API server's server-side apply removes fields the manager applied before and no
    # longer applies. The emulator's apply is a JSON merge patch (see its docstring), so the
    # dropped label survives here; this pins the emulator's behaviour, not the client's.
    kube.apply(secret(labels={"servenest/deployment": "qwq", "old": "yes"}))
    stored = kube.apply(secret(labels={"servenest/deployment": "qwq"}))
    assert stored["metadata"]["labels"] == {"servenest/deployment": "qwq", "old": "yes"}


def test_apply_retries_a_conflict(kube, emu, slept):
    emu.faults.conflicts = {"secrets": 4}
    stored = kube.apply(secret())
    assert stored["metadata"]["uid"]
    assert [c.status for c in calls(emu, "PATCH", "secrets")] == [409] * 4 + [201]
    assert slept == pytest.approx([0.2, 0.4, 0.6, 0.8])  # 0.2 s more each time


def test_apply_gives_up_after_five_conflicts(kube, emu):
    emu.faults.conflicts = {"secrets": 10}
    with pytest.raises(CloudError) as err:
        kube.apply(secret())
    assert err.value.status == 409 and err.value.code == "Conflict"
    assert "applying Secret api-key" in str(err.value)
    assert len(calls(emu, "PATCH", "secrets")) == 5 and emu.faults.conflicts["secrets"] == 5
    assert emu.get("secrets", NS, "api-key") is None


# -- get, list, delete -------------------------------------------------------------------------
def test_get_returns_the_object_or_none(kube):
    kube.apply(secret())
    assert kube.get("Secret", NS, "api-key")["data"] == {"key": "c2stdGVzdA=="}
    assert kube.get("Secret", NS, "missing") is None
    assert kube.get("Namespace", None, "default")["status"]["phase"] == "Active"


def test_list_filters_by_labels(kube, emu):
    kube.apply(secret("a", {"servenest/deployment": "qwq", "role": "key"}))
    kube.apply(secret("b", {"servenest/deployment": "qwq", "role": "tls"}))
    kube.apply(secret("c", {"servenest/deployment": "other", "role": "key"}))
    emu.add_namespace("elsewhere")
    emu.put({**secret("d", {"servenest/deployment": "qwq"}),
             "metadata": {"name": "d", "namespace": "elsewhere",
                          "labels": {"servenest/deployment": "qwq"}}})

    def names(**kw) -> list[str]:
        return sorted(o["metadata"]["name"] for o in kube.list("Secret", **kw))

    assert names(namespace=NS, labels={"servenest/deployment": "qwq"}) == ["a", "b"]
    assert names(namespace=NS, labels={"servenest/deployment": "qwq", "role": "key"}) == ["a"]
    assert names(namespace=NS) == ["a", "b", "c"]
    assert names(labels={"servenest/deployment": "qwq"}) == ["a", "b", "d"]  # all namespaces
    assert names(namespace=NS, labels={"servenest/deployment": "none"}) == []
    selectors = [c.query.get("labelSelector") for c in calls(emu, "GET", "secrets")]
    assert "servenest/deployment=qwq,role=key" in selectors


def test_delete_is_false_when_already_gone(kube, emu):
    kube.apply(secret())
    assert kube.delete("Secret", NS, "api-key") is True
    assert emu.get("secrets", NS, "api-key") is None
    assert kube.delete("Secret", NS, "api-key") is False
    assert [c.status for c in calls(emu, "DELETE", "secrets")] == [200, 404]


def test_wait_gone_times_out_while_a_pod_terminates(emu, slept):
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    kube = Kube.from_kubeconfig(emu.kubeconfig(), sleep=sleep)
    kube.apply(pod())
    assert kube.delete("Pod", NS, "engine-0")
    # Deleting a pod only marks it; its kubelet (the controller here) removes it later.
    assert emu.get("pods", NS, "engine-0")["metadata"]["deletionTimestamp"]
    still_there = f"Pod {NS}/engine-0 still exists after 30 s"
    with pytest.raises(CloudTransientError, match=still_there) as err:
        kube.wait_gone("Pod", NS, "engine-0", timeout_s=30, poll_s=5, clock=lambda: now[0])
    assert isinstance(err.value, Retryable) and slept == [5] * 6

    KubeController(emu).step()  # the kubelet finishes terminating it
    slept.clear()
    kube.wait_gone("Pod", NS, "engine-0", timeout_s=30, poll_s=5, clock=lambda: now[0])
    assert slept == []
    kube.close()


# -- failures ----------------------------------------------------------------------------------
def test_an_expired_token_is_a_credentials_error(kube, emu):
    kube.apply(secret())
    emu.expire_token("emulator-token")
    with pytest.raises(CloudCredentialsError, match="expired or was revoked") as err:
        kube.get("Secret", NS, "api-key")
    assert err.value.status == 401 and not isinstance(err.value, Retryable)
    assert "kubeconfig" in str(err.value)
    assert emu.calls[-1].status == 401 and len([c for c in emu.calls if c.status == 401]) == 1


def test_server_errors_are_retried_until_they_pass(kube, emu, slept):
    kube.apply(secret())
    emu.faults.server_errors = {"secrets": 2}
    assert kube.get("Secret", NS, "api-key")["metadata"]["name"] == "api-key"
    assert [c.status for c in calls(emu, "GET", "secrets")] == [500, 500, 200]
    assert len(slept) == 2 and all(0 <= s <= 8 for s in slept)


def test_a_persistent_503_ends_in_a_transient_error(kube, emu, slept):
    emu.faults.unavailable = 100
    with pytest.raises(CloudTransientError, match="503") as err:
        kube.get("Secret", NS, "api-key")
    assert isinstance(err.value, Retryable) and err.value.status == 503
    assert len(emu.calls) == 6 and {c.status for c in emu.calls} == {503}
    assert len(slept) == 5
    for attempt, delay in enumerate(slept, start=1):  # full jitter under a doubling cap
        assert 0 <= delay <= min(8.0, 0.5 * 2 ** attempt)


def test_a_validation_error_is_not_retried(kube, emu, slept):
    bad = secret(labels={"tier": "not a valid label value"})
    with pytest.raises(CloudError, match="Invalid") as err:
        kube.apply(bad)
    assert err.value.status == 422 and not isinstance(err.value, Retryable)
    assert len(calls(emu, "PATCH", "secrets")) == 1 and slept == []


# -- logs and version --------------------------------------------------------------------------
def test_pod_log(kube, emu):
    kube.apply(pod())
    emu.set_pod_log(NS, "engine-0", "".join(f"line {i}\n" for i in range(100)))
    text = kube.pod_log(NS, "engine-0", tail=3)
    assert text == "line 97\nline 98\nline 99\n"
    assert kube.pod_log(NS, "engine-0", previous=True) == ""  # it never restarted
    assert kube.pod_log(NS, "no-such-pod") == ""  # it just went
    emu.set_pod_log(NS, "engine-0", "Error: CUDA out of memory\n", previous=True)
    assert kube.pod_log(NS, "engine-0", previous=True) == "Error: CUDA out of memory\n"
    assert calls(emu, "GET", "pods/engine-0/log")[0].query["tailLines"] == "3"


def test_version(kube):
    version = kube.version()
    assert version["gitVersion"].startswith("v1.31") and version["minor"] == "31"


# -- watch -------------------------------------------------------------------------------------
def fluid_objects(kube: Kube) -> None:
    meta = {"name": "qwq", "namespace": NS}
    mount = {"mountPoint": "oss://servenest-models/qwq-32b", "name": "qwq"}
    kube.apply({"apiVersion": FLUID, "kind": "JindoRuntime", "metadata": meta,
                "spec": {"replicas": 1}})
    kube.apply({"apiVersion": FLUID, "kind": "Dataset", "metadata": meta,
                "spec": {"mounts": [mount]}})
    kube.apply({"apiVersion": FLUID, "kind": "DataLoad",
                "metadata": {"name": "qwq-load", "namespace": NS},
                "spec": {"dataset": {"name": "qwq", "namespace": NS}}})


def phase(obj: dict | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def advance(ctl: KubeController, emu: KubeEmulator, seen: str | None) -> None:
    """Step the controller until the stored DataLoad's phase moves past ``seen``."""
    for _ in range(10):
        if phase(emu.get("dataloads", NS, "qwq-load")) != seen:
            return
        ctl.step()
    raise AssertionError(f"the DataLoad never left phase {seen!r}")


def watch_calls(emu: KubeEmulator) -> list:
    return [c for c in calls(emu, "GET", "dataloads") if c.query.get("watch") == "true"]


@pytest.mark.parametrize("gone", [0, 1], ids=["plain", "after-410"])
def test_watch_object_yields_the_object_then_each_change(kube, emu, gone):
    fluid_objects(kube)
    ctl = KubeController(emu, dataload_steps=2)
    watch = kube.watch_object("DataLoad", NS, "qwq-load", timeout_s=10)
    phases = [phase(next(watch))]
    assert phases == [None]  # as created: the controller has not seen it yet
    emu.faults.gone_watches = gone  # the first watch is answered 410 Expired
    while phases[-1] not in ("Complete", "Failed"):
        advance(ctl, emu, phases[-1])
        phases.append(phase(next(watch)))
    assert phases == [None, "Pending", "Executing", "Complete"]
    assert emu.faults.gone_watches == 0
    watches = watch_calls(emu)
    assert len(watches) == 1 + gone
    assert all(c.query["fieldSelector"] == "metadata.name=qwq-load" for c in watches)
    # After a 410 the object is read again (and watched again from the version read).
    assert len(calls(emu, "GET", "dataloads/qwq-load")) == 1 + gone
    # Deleting the object ends the watch at once, not when its 10 s run out.
    kube.delete("DataLoad", NS, "qwq-load")
    started = time.monotonic()
    assert next(watch, "ended") == "ended"
    assert time.monotonic() - started < 5


def test_a_watch_the_server_ends_is_resumed_from_the_version_seen(kube, emu):
    fluid_objects(kube)
    changed: list[dict] = []

    def clock() -> float:
        # Called again only once the first watch has ended (after its 1 s server timeout):
        # the change lands between two watches, where only resuming from the version seen
        # (not from "now") can deliver it.
        if watch_calls(emu) and not changed:
            load = emu.get("dataloads", NS, "qwq-load")
            changed.append(emu.put({**load, "status": {"phase": "Executing"}}))
        return 0.0  # never past the deadline

    watch = kube.watch_object("DataLoad", NS, "qwq-load", timeout_s=1, clock=clock)
    first = next(watch)
    second = next(watch)
    watch.close()
    assert phase(first) is None and phase(second) == "Executing"
    assert second["metadata"]["resourceVersion"] == changed[0]["metadata"]["resourceVersion"]
    watches = watch_calls(emu)
    assert len(watches) == 2
    seen = first["metadata"]["resourceVersion"]
    assert [c.query["resourceVersion"] for c in watches] == [seen, seen]
    assert len(calls(emu, "GET", "dataloads/qwq-load")) == 1  # resumed, not read again


def test_a_410_whose_reread_finds_nothing_ends_the_watch(kube, emu):
    fluid_objects(kube)
    watch = kube.watch_object("DataLoad", NS, "qwq-load", timeout_s=10)
    assert next(watch)["metadata"]["name"] == "qwq-load"
    emu.faults.gone_watches = 1
    emu.remove("dataloads", NS, "qwq-load")
    # The 410 forces a re-read, which finds nothing: the watch ends rather than failing.
    assert next(watch, "ended") == "ended"
    assert len(watch_calls(emu)) == 1 and len(calls(emu, "GET", "dataloads/qwq-load")) == 2


def test_watch_object_on_a_missing_object_raises_not_found(kube, emu):
    with pytest.raises(KubeNotFound, match=f"DataLoad {NS}/nothing does not exist"):
        next(kube.watch_object("DataLoad", NS, "nothing", timeout_s=5))
    assert watch_calls(emu) == []
