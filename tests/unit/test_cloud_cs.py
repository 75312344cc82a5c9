"""ACK/ACS clusters through the REAL CS SDK against the cloud emulator: detail, waiting for
running, the temporary kubeconfig, and deletion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servenest.cloud.credentials import open_session
from servenest.cloud.cs import KUBECONFIG_MINUTES, Clusters, Kubeconfig
from servenest.errors import CloudError, CloudInputError, CloudTransientError, Retryable

CID = "c0123456789abcdef0"


class FakeTime:
    """A clock that moves only when slept on; ``on_sleep`` runs after each sleep."""

    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert len(self.slept) < 100, "still polling after 100 sleeps: the deadline is ignored"
        self.slept.append(seconds)
        self.now += 10.0  # one poll is ten "seconds", whatever the scaled delay
        if self.on_sleep:
            self.on_sleep(len(self.slept))


def clusters(t: FakeTime | None = None) -> Clusters:
    session = open_session("cn-hangzhou", "default")
    if t is None:
        return Clusters(session)
    return Clusters(session, clock=t.clock, sleep=t.sleep)


def set_state(cloud, state: str, cid: str = CID) -> None:
    with cloud.lock:
        cloud.clusters[cid]["detail"]["state"] = state


# -- detail ------------------------------------------------------------------------------------
def test_get_and_require_a_known_cluster(cloud):
    cloud.add_cluster(CID, name="prod-gpu")
    c = clusters()
    detail = c.get(CID)
    assert detail["cluster_id"] == CID and detail["name"] == "prod-gpu"
    assert detail["state"] == "running" and detail["region_id"] == "cn-hangzhou"
    assert c.require(CID) == detail
    paths = [call.path for call in cloud.calls_for("DescribeClusterDetail")]
    assert paths == [f"/clusters/{CID}"] * 2


def test_an_unknown_cluster_is_none_and_require_names_it_and_the_region(cloud):
    c = clusters()
    assert c.get("c99999999999") is None
    with pytest.raises(CloudInputError) as err:
        c.require("c99999999999")
    message = str(err.value)
    assert "c99999999999 does not exist in region cn-hangzhou" in message
    assert "cloud.cluster_id" in message and "cloud.region" in message
    # A 404 is an answer, not a transient failure: asked once per call, never retried.
    refused = cloud.calls_for("DescribeClusterDetail")
    assert len(refused) == 2
    assert {(r.status, r.code) for r in refused} == {(404, "ErrorClusterNotFound")}


def test_a_cluster_in_another_region_is_refused(cloud):
    cloud.add_cluster(CID, region_id="cn-beijing")
    elsewhere = f"{CID} is in region cn-beijing, not cloud.region cn-hangzhou"
    with pytest.raises(CloudInputError, match=elsewhere):
        clusters().require(CID)


# -- waiting for running -----------------------------------------------------------------------
def test_wait_running_returns_at_once_for_a_running_cluster(cloud):
    cloud.add_cluster(CID)
    t = FakeTime()
    assert clusters(t).wait_running(CID, timeout_s=600)["state"] == "running"
    assert t.slept == [] and len(cloud.calls_for("DescribeClusterDetail")) == 1


def test_wait_running_waits_out_a_settling_state(cloud):
    cloud.add_cluster(CID, state="initial")

    def flip(sleeps: int) -> None:
        if sleeps == 3:
            set_state(cloud, "running")

    t = FakeTime(on_sleep=flip)
    detail = clusters(t).wait_running(CID, timeout_s=600)
    assert detail["state"] == "running"
    assert len(t.slept) == 3 and len(cloud.calls_for("DescribeClusterDetail")) == 4
    # The stack poll schedule (10 s, x1.5), shrunk 1000x by the fixture.
    assert t.slept == pytest.approx([0.010, 0.015, 0.0225])


@pytest.mark.parametrize("state", ["failed", "deleting", "stopped"])
def test_wait_running_refuses_a_state_that_will_not_become_running(cloud, state):
    cloud.add_cluster(CID, name="prod-gpu", state=state)
    t = FakeTime()
    with pytest.raises(CloudInputError) as err:
        clusters(t).wait_running(CID, timeout_s=600)
    assert f"{CID} (prod-gpu) is '{state}', not running" in str(err.value)
    assert not isinstance(err.value, Retryable) and t.slept == []


def test_wait_running_times_out_as_a_transient_error(cloud):
    cloud.add_cluster(CID, state="upgrading")
    t = FakeTime()
    with pytest.raises(CloudTransientError, match=f"{CID} still 'upgrading' after 60 s") as err:
        clusters(t).wait_running(CID, timeout_s=60)
    assert isinstance(err.value, Retryable)
    assert len(t.slept) == 6  # ten fake seconds a poll: polled at 0, 10, ... 60, then gave up
    assert len(cloud.calls_for("DescribeClusterDetail")) == 7


def test_wait_running_on_a_cluster_deleted_meanwhile_says_it_is_gone(cloud):
    cloud.add_cluster(CID, state="scaling")

    def drop(_sleeps: int) -> None:
        with cloud.lock:
            cloud.clusters.pop(CID, None)

    with pytest.raises(CloudInputError, match="does not exist"):
        clusters(FakeTime(on_sleep=drop)).wait_running(CID, timeout_s=600)


# -- kubeconfig --------------------------------------------------------------------------------
def test_kubeconfig_is_the_temporary_kind_with_an_expiry_in_the_future(cloud):
    cloud.add_cluster(CID)
    cloud.kubeconfig = "apiVersion: v1\nkind: Config\nusers:\n- user:\n    token: s3cr3t-token\n"
    before = datetime.now(UTC)
    config = clusters().kubeconfig(CID)
    assert config.text == cloud.kubeconfig
    assert config.expires is not None and config.expires.tzinfo is not None
    # The emulator expires it TemporaryDurationMinutes from now, as CS does.
    lifetime = config.expires - before
    minutes = timedelta(minutes=KUBECONFIG_MINUTES)
    assert minutes - timedelta(minutes=1) < lifetime <= minutes
    assert not config.expired()
    (call,) = cloud.calls_for("DescribeClusterUserKubeconfig")
    assert call.path == f"/k8s/{CID}/user_config" and call.method == "GET"
    assert call.params["TemporaryDurationMinutes"] == str(KUBECONFIG_MINUTES)
    assert call.params["PrivateIpAddress"].lower() == "false"


def test_kubeconfig_asks_for_the_minutes_and_address_kind_given(cloud):
    cloud.add_cluster(CID)
    config = clusters().kubeconfig(CID, private=True, minutes=15)
    assert timedelta(minutes=14) < config.expires - datetime.now(UTC) <= timedelta(minutes=15)
    (call,) = cloud.calls_for("DescribeClusterUserKubeconfig")
    assert call.params["TemporaryDurationMinutes"] == "15"
    assert call.params["PrivateIpAddress"].lower() == "true"


def test_an_already_expired_kubeconfig_is_refused(cloud):
    cloud.add_cluster(CID)
    # The emulator dates the expiry TemporaryDurationMinutes from now: a negative duration is
    # a credential that was stale when it arrived (a machine whose clock runs far ahead).
    with pytest.raises(CloudInputError, match="already expired") as err:
        clusters().kubeconfig(CID, minutes=-5)
    assert CID in str(err.value) and "clock" in str(err.value)
    assert "emulator-token" not in str(err.value)


def test_an_empty_kubeconfig_is_an_error(cloud):
    cloud.add_cluster(CID)
    cloud.kubeconfig = ""
    with pytest.raises(CloudError, match=f"no kubeconfig for cluster {CID}"):
        clusters().kubeconfig(CID)


def test_the_kubeconfig_of_an_unknown_cluster_is_an_error(cloud):
    with pytest.raises(CloudError) as err:
        clusters().kubeconfig("c99999999999")
    assert err.value.code == "ErrorClusterNotFound" and err.value.status == 404


def test_kubeconfig_expiry_has_a_safety_margin():
    now = datetime.now(UTC)
    assert not Kubeconfig("cfg", None).expired()  # CS gave no expiry: a long-lived config
    assert not Kubeconfig("cfg", now + timedelta(minutes=5)).expired()
    assert Kubeconfig("cfg", now + timedelta(seconds=30)).expired()  # inside the 60 s margin
    assert not Kubeconfig("cfg", now + timedelta(seconds=30)).expired(margin_s=10)
    assert Kubeconfig("cfg", now - timedelta(minutes=1)).expired()


def test_the_kubeconfig_repr_never_shows_the_credential(cloud):
    cloud.add_cluster(CID)
    cloud.kubeconfig = "apiVersion: v1\nusers:\n- user:\n    token: s3cr3t-token\n"
    config = clusters().kubeconfig(CID)
    for shown in (repr(config), str(config), f"{config!r}", repr([config])):
        assert "s3cr3t-token" not in shown and "apiVersion" not in shown
    assert "expires=" in repr(config)


# -- deletion ----------------------------------------------------------------------------------
def test_delete_then_wait_until_the_cluster_is_gone(cloud):
    cloud.add_cluster(CID)
    t = FakeTime()
    c = clusters(t)
    assert c.delete(CID) is True
    (call,) = cloud.calls_for("DeleteCluster")
    assert (call.method, call.path, call.status) == ("DELETE", f"/clusters/{CID}", 202)
    assert cloud.clusters[CID]["detail"]["state"] == "deleting"
    c.wait_deleted(CID, timeout_s=600)
    assert CID not in cloud.clusters and c.get(CID) is None
    assert len(t.slept) == cloud.delete_polls  # seen "deleting" that often, then 404


def test_deleting_an_unknown_cluster_is_false(cloud):
    assert clusters().delete("c99999999999") is False
    (call,) = cloud.calls_for("DeleteCluster")
    assert (call.status, call.code) == (404, "ErrorClusterNotFound")


def test_wait_deleted_times_out_as_a_transient_error(cloud):
    cloud.add_cluster(CID)
    cloud.delete_polls = 1000  # CS takes its time
    t = FakeTime()
    c = clusters(t)
    assert c.delete(CID)
    with pytest.raises(CloudTransientError, match=f"{CID} still exists after 30 s"):
        c.wait_deleted(CID, timeout_s=30)
    assert len(t.slept) == 3 and CID in cloud.clusters


def test_wait_deleted_stops_on_delete_failed(cloud):
    cloud.add_cluster(CID, state="delete_failed")
    t = FakeTime()
    with pytest.raises(CloudError, match="delete_failed") as err:
        clusters(t).wait_deleted(CID, timeout_s=600)
    assert not isinstance(err.value, Retryable) and t.slept == []
