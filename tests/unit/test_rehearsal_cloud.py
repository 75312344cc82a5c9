"""The cloud emulator, driven by the REAL Alibaba Cloud SDK clients (ROS, ECS, CS)."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest
from alibabacloud_cs20151215 import models as cs_models
from alibabacloud_cs20151215.client import Client as CsClient
from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_ros20190910 import models as ros_models
from alibabacloud_ros20190910.client import Client as RosClient
from alibabacloud_tea_openapi.exceptions import (
    ClientException,
    ServerException,
    ThrottlingException,
)
from alibabacloud_tea_openapi.models import Config

from servenest.rehearsal.cloud import CloudEmulator

TEMPLATE = """
ROSTemplateFormatVersion: '2015-09-01'
Description: single GPU
Parameters:
  InstanceType:
    Type: String
    Default: ecs.gn7i-c8g1.2xlarge
  ZoneId:
    Type: String
    Default: cn-hangzhou-h
  ModelName:
    Type: String
Resources:
  Vpc:
    Type: ALIYUN::ECS::VPC
    Properties: {CidrBlock: 192.168.0.0/16}
  Gpu:
    Type: ALIYUN::ECS::Instance
    Properties:
      InstanceType: {Ref: InstanceType}
      ZoneId: {Ref: ZoneId}
      VpcId: {Ref: Vpc}
      ImageId: ubuntu_22
  Launch:
    Type: ALIYUN::ECS::RunCommand
    Properties:
      InstanceIds: [{Ref: Gpu}]
      CommandContent: {"Fn::Sub": "vllm serve ${ModelName}"}
Outputs:
  InstanceId:
    Value: {"Fn::GetAtt": [Gpu, InstanceId]}
  PublicIp:
    Description: public address
    Value: !GetAtt Gpu.PublicIp
  Endpoint:
    Value: {"Fn::Sub": "http://${Gpu.PublicIp}:8000/v1"}
"""


def _config(emu: CloudEmulator, ak: str = "AK") -> Config:
    return Config(
        access_key_id=ak,
        access_key_secret="SK",
        region_id="cn-hangzhou",
        endpoint=emu.endpoint,
        protocol="http",
        connect_timeout=2000,
        read_timeout=5000,
    )


@pytest.fixture
def emu():
    with CloudEmulator(seed=7, instance_prices={"ecs.gn7i-c8g1.2xlarge": 8.5}) as e:
        yield e


@pytest.fixture
def ros(emu):
    return RosClient(_config(emu))


@pytest.fixture
def ecs(emu):
    return EcsClient(_config(emu))


@pytest.fixture
def cs(emu):
    return CsClient(_config(emu))


def _create(ros, name="sn-test", params=None, tags=None, token=None, disable_rollback=None):
    req = ros_models.CreateStackRequest(
        region_id="cn-hangzhou",
        stack_name=name,
        template_body=TEMPLATE,
        parameters=[
            ros_models.CreateStackRequestParameters(parameter_key=k, parameter_value=v)
            for k, v in (params or {"ModelName": "Qwen/Qwen3-8B"}).items()
        ],
        tags=[ros_models.CreateStackRequestTags(key=k, value=v) for k, v in (tags or {}).items()],
        client_token=token,
        disable_rollback=disable_rollback,
        timeout_in_minutes=30,
    )
    return ros.create_stack(req).body.stack_id


def _get(ros, stack_id):
    return ros.get_stack(
        ros_models.GetStackRequest(region_id="cn-hangzhou", stack_id=stack_id)
    ).body


def _poll(ros, stack_id, polls=5):
    body = _get(ros, stack_id)
    for _ in range(polls):
        if not body.status.endswith("IN_PROGRESS"):
            break
        body = _get(ros, stack_id)
    return body


def test_stack_lifecycle(emu, ros):
    sid = _create(ros, tags={"servenest": "dep-1"}, token="tok-1")
    assert _create(ros, tags={"servenest": "dep-1"}, token="tok-1") == sid
    assert len(emu.stacks) == 1
    assert len(emu.calls_for("CreateStack")) == 2

    # the wire: RPC POST / with list params in the query and TemplateBody in the form body
    call = emu.calls_for("CreateStack")[0]
    assert call.method == "POST" and call.path == "/" and call.access_key_id == "AK"
    assert call.params["Parameters.1.ParameterKey"] == "ModelName"
    assert call.params["Tags.1.Key"] == "servenest"
    assert call.params["TemplateBody"].startswith("\nROSTemplateFormatVersion")

    first = _get(ros, sid)
    assert first.status == "CREATE_IN_PROGRESS" and first.outputs is None
    body = _get(ros, sid)
    assert body.status == "CREATE_COMPLETE"
    assert body.stack_name == "sn-test"
    assert {"ParameterKey": "ModelName", "ParameterValue": "Qwen/Qwen3-8B"} in [
        p.to_map() for p in body.parameters
    ]
    assert [t.to_map() for t in body.tags] == [{"Key": "servenest", "Value": "dep-1"}]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in body.outputs}
    assert isinstance(body.outputs[0], dict)
    assert outputs["InstanceId"].startswith("i-")
    assert outputs["PublicIp"] == "127.0.0.1"
    assert outputs["Endpoint"] == "http://127.0.0.1:8000/v1"

    with pytest.raises(ClientException) as exc:
        _create(ros)  # same name, no token
    assert exc.value.code == "StackExists" and exc.value.status_code == 409

    _create(ros, name="other", tags={"servenest": "dep-2"})
    listed = ros.list_stacks(
        ros_models.ListStacksRequest(
            region_id="cn-hangzhou",
            tag=[ros_models.ListStacksRequestTag(key="servenest", value="dep-1")],
        )
    ).body
    assert [s.stack_id for s in listed.stacks] == [sid] and listed.total_count == 1
    by_status = ros.list_stacks(
        ros_models.ListStacksRequest(region_id="cn-hangzhou", status=["CREATE_IN_PROGRESS"])
    ).body
    assert [s.stack_name for s in by_status.stacks] == ["other"]

    resources = ros.list_stack_resources(
        ros_models.ListStackResourcesRequest(region_id="cn-hangzhou", stack_id=sid)
    ).body.resources
    by_id = {r.logical_resource_id: r for r in resources}
    assert by_id["Gpu"].resource_type == "ALIYUN::ECS::Instance"
    assert by_id["Gpu"].physical_resource_id == outputs["InstanceId"]
    assert all(r.status == "CREATE_COMPLETE" for r in resources)
    events = ros.list_stack_events(
        ros_models.ListStackEventsRequest(
            region_id="cn-hangzhou", stack_id=sid, logical_resource_id=["Gpu"], page_size=50
        )
    ).body
    assert [e.status for e in events.events] == ["CREATE_COMPLETE", "CREATE_IN_PROGRESS"]

    ros.delete_stack(ros_models.DeleteStackRequest(region_id="cn-hangzhou", stack_id=sid))
    assert _get(ros, sid).status == "DELETE_IN_PROGRESS"
    assert _get(ros, sid).status == "DELETE_COMPLETE"
    with pytest.raises(ClientException) as exc:
        _get(ros, sid)
    assert exc.value.code == "StackNotFound" and exc.value.status_code == 404
    assert emu.call_count == len(emu.calls) > 10


def test_template_validation_and_cost(emu, ros):
    ok = ros.validate_template(ros_models.ValidateTemplateRequest(template_body=TEMPLATE)).body
    assert [o.output_key for o in ok.outputs] == ["InstanceId", "PublicIp", "Endpoint"]
    with pytest.raises(ClientException) as exc:
        ros.validate_template(ros_models.ValidateTemplateRequest(template_body="a: [b"))
    assert exc.value.code == "StackValidationFailed"
    with pytest.raises(ClientException) as exc:
        _create(ros, params={"Nope": "1"})
    assert exc.value.code == "UnknownUserParameter"

    cost = ros.get_template_estimate_cost(
        ros_models.GetTemplateEstimateCostRequest(
            region_id="cn-hangzhou",
            template_body=TEMPLATE,
            parameters=[
                ros_models.GetTemplateEstimateCostRequestParameters(
                    parameter_key="ModelName", parameter_value="m"
                )
            ],
        )
    ).body.resources
    assert list(cost) == ["Gpu"]
    gpu = cost["Gpu"]
    assert gpu["Type"] == "ALIYUN::ECS::Instance" and gpu["Success"] is True
    assert gpu["Result"]["Order"]["TradeAmount"] == 8.5
    assert gpu["Result"]["Order"]["Currency"] == "CNY"
    assert gpu["Result"]["OrderSupplement"]["PriceUnit"] == "Hour"

    price = (
        EcsClient(_config(emu))
        .describe_price(
            ecs_models.DescribePriceRequest(
                region_id="cn-hangzhou",
                resource_type="instance",
                instance_type="ecs.gn7i-c8g1.2xlarge",
                price_unit="Hour",
            )
        )
        .body.price_info.price
    )
    assert price.trade_price == 8.5 and price.currency == "CNY"


def test_run_command(emu, ecs):
    seen = []

    def handler(command, instance_id):
        seen.append((command, instance_id))
        return (0, "hello\n") if "echo" in command else (3, "boom")

    emu.command_handler = handler
    script = "echo hello"
    rid = ecs.run_command(
        ecs_models.RunCommandRequest(
            region_id="cn-hangzhou",
            type="RunShellScript",
            instance_id=["i-1"],
            command_content=base64.b64encode(script.encode()).decode(),
            content_encoding="Base64",
            timeout=60,
        )
    ).body
    assert rid.invoke_id.startswith("t-") and rid.command_id
    assert emu.calls_for("RunCommand")[0].params["InstanceId.1"] == "i-1"

    running = _results(ecs, rid.invoke_id)
    assert [r.invocation_status for r in running] == ["Running"]
    done = _results(ecs, rid.invoke_id)[0]
    assert done.invocation_status == "Success" and done.exit_code == 0
    assert done.invoke_record_status == "Finished"
    assert base64.b64decode(done.output).decode() == "hello\n"
    assert seen == [("echo hello", "i-1")]

    failing = _run(ecs, "i-2", "exit 3").invoke_id
    _results(ecs, failing)
    bad = _results(ecs, failing)[0]
    assert bad.invocation_status == "Failed" and bad.exit_code == 3
    assert base64.b64decode(bad.output) == b"boom"

    emu.command_handler = None
    plain = _run(ecs, "i-3").invoke_id
    _results(ecs, plain)
    assert _results(ecs, plain)[0].exit_code == 0 and _results(ecs, plain)[0].output == ""


def test_cs(emu, cs):
    emu.add_cluster("c-abc", name="serve")
    detail = cs.describe_cluster_detail("c-abc").body
    assert detail.cluster_id == "c-abc" and detail.state == "running" and detail.name == "serve"
    kube = cs.describe_cluster_user_kubeconfig(
        "c-abc",
        cs_models.DescribeClusterUserKubeconfigRequest(
            private_ip_address=False, temporary_duration_minutes=60
        ),
    ).body
    assert "current-context: emulator" in kube.config and kube.expiration.endswith("Z")
    call = emu.calls_for("DescribeClusterUserKubeconfig")[0]
    assert call.method == "GET" and call.path == "/k8s/c-abc/user_config"
    assert call.params["PrivateIpAddress"] == "False"

    listed = cs.describe_clusters_v1(cs_models.DescribeClustersV1Request(name="serve")).body
    assert [c.cluster_id for c in listed.clusters] == ["c-abc"]
    assert listed.page_info.total_count == 1

    with pytest.raises(ClientException) as exc:
        cs.describe_cluster_detail("c-missing")
    assert exc.value.code == "ErrorClusterNotFound" and exc.value.status_code == 404

    resp = cs.delete_cluster("c-abc", cs_models.DeleteClusterRequest(retain_all_resources=False))
    assert resp.status_code == 202 and resp.body.cluster_id == "c-abc" and resp.body.task_id
    assert cs.describe_cluster_detail("c-abc").body.state == "deleting"
    with pytest.raises(ClientException):
        cs.describe_cluster_detail("c-abc")


def test_throttling_and_5xx(emu, ros, cs):
    emu.faults.update({"throttle_rate": 1.0, "only_actions": ["ListStacks"]})
    with pytest.raises(ThrottlingException) as exc:
        ros.list_stacks(ros_models.ListStacksRequest(region_id="cn-hangzhou"))
    assert exc.value.code.startswith("Throttling") and exc.value.retry_after > 0
    assert emu.calls[-1].code == "Throttling.User"
    emu.faults.update({"throttle_rate": 0.0, "error_rate": 1.0, "only_actions": []})
    for _ in range(3):
        with pytest.raises(ServerException) as exc:
            cs.describe_clusters_v1(cs_models.DescribeClustersV1Request())
        assert exc.value.code in ("ServiceUnavailable", "InternalError")
        assert exc.value.status_code >= 500

    # seeded RNG: a partial rate gives the same pattern on every run
    def pattern(seed):
        with CloudEmulator(seed=seed) as e:
            e.faults.throttle_rate = 0.5
            client = RosClient(_config(e))
            out = []
            for _ in range(8):
                try:
                    client.list_stacks(ros_models.ListStacksRequest(region_id="cn-hangzhou"))
                    out.append(0)
                except ThrottlingException:
                    out.append(1)
            return out

    assert pattern(3) == pattern(3) and 0 < sum(pattern(3)) < 8


def test_out_of_stock_and_failed_resource(emu, ros):
    emu.faults.out_of_stock_instance_types = {"ecs.gn7i-c8g1.2xlarge"}
    sid = _create(ros, disable_rollback=True)
    body = _poll(ros, sid)
    assert body.status == "CREATE_FAILED"
    assert "OperationDenied.NoStock" in body.status_reason and "sold out" in body.status_reason
    assert body.operation_info.logical_resource_id == "Gpu"
    failed = ros.list_stack_events(
        ros_models.ListStackEventsRequest(stack_id=sid, status=["CREATE_FAILED"], page_size=50)
    ).body.events
    gpu = [e for e in failed if e.resource_type == "ALIYUN::ECS::Instance"]
    assert len(gpu) == 1 and "OperationDenied.NoStock" in gpu[0].status_reason

    emu.faults.out_of_stock_instance_types = set()
    emu.faults.out_of_stock_zones = {"cn-hangzhou-j"}
    sid = _create(ros, name="zone-j", params={"ModelName": "m", "ZoneId": "cn-hangzhou-j"})
    assert _poll(ros, sid).status == "CREATE_ROLLBACK_COMPLETE"
    sid = _create(ros, name="zone-h", params={"ModelName": "m"})
    assert _poll(ros, sid).status == "CREATE_COMPLETE"

    emu.faults.fail_resources = {"Launch": "WaitCondition timed out"}
    sid = _create(ros, name="launch-fails", disable_rollback=True)
    body = _poll(ros, sid)
    assert body.status == "CREATE_FAILED" and "WaitCondition timed out" in body.status_reason
    resources = ros.list_stack_resources(ros_models.ListStackResourcesRequest(stack_id=sid)).body
    assert {r.logical_resource_id: r.status for r in resources.resources}[
        "Launch"
    ] == "CREATE_FAILED"


def test_stuck_stack_and_denied_key(emu, ros):
    emu.faults.stuck_stacks = {"stuck"}
    sid = _create(ros, name="stuck")
    assert _poll(ros, sid, polls=6).status == "CREATE_IN_PROGRESS"

    emu.faults.denied_access_keys = {"AK-DENIED"}
    denied = RosClient(_config(emu, ak="AK-DENIED"))
    with pytest.raises(ClientException) as exc:
        denied.list_stacks(ros_models.ListStacksRequest(region_id="cn-hangzhou"))
    assert exc.value.code == "Forbidden.RAM" and exc.value.status_code == 403
    assert emu.calls[-1].access_key_id == "AK-DENIED" and emu.calls[-1].status == 403
    ros.list_stacks(ros_models.ListStacksRequest(region_id="cn-hangzhou"))  # other keys work


def test_time_based_completion_and_admin_endpoint():
    with CloudEmulator(create_polls=None, create_seconds=0.2, instance_address="10.0.0.5") as emu:
        ros = RosClient(_config(emu))
        sid = _create(ros)
        assert _get(ros, sid).status == "CREATE_IN_PROGRESS"
        time.sleep(0.25)
        body = _get(ros, sid)
        assert body.status == "CREATE_COMPLETE"
        assert {o["OutputKey"]: o["OutputValue"] for o in body.outputs}["PublicIp"] == "10.0.0.5"

        base = f"http://{emu.endpoint}/__emulator"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(
            f"{base}/faults", data=json.dumps({"throttle_rate": 1}).encode(), method="POST"
        )
        assert json.load(opener.open(req))["throttle_rate"] == 1
        with pytest.raises(ThrottlingException):
            _get(ros, sid)
        calls = json.load(opener.open(f"{base}/calls"))
        assert calls["count"] == len(emu.calls) and calls["calls"][-1]["status"] == 400


def _run(ecs, instance_id, script="true", token=None, timeout=60):
    return ecs.run_command(ecs_models.RunCommandRequest(
        region_id="cn-hangzhou", type="RunShellScript", instance_id=[instance_id],
        command_content=script, timeout=timeout, client_token=token)).body


def _results(ecs, invoke_id):
    return ecs.describe_invocation_results(ecs_models.DescribeInvocationResultsRequest(
        region_id="cn-hangzhou", invoke_id=invoke_id)).body.invocation.invocation_results.invocation_result


def test_run_command_is_idempotent_per_client_token_and_runs_while_polled(emu, ecs):
    import threading

    release = threading.Event()
    ran = []

    def slow(command, instance_id):
        ran.append(instance_id)
        release.wait(5)
        return 0, "done"

    emu.command_handler = slow
    first = _run(ecs, "i-1", token="tok-a")
    assert _run(ecs, "i-1", token="tok-a").invoke_id == first.invoke_id
    for _ in range(3):  # the script is still running: polls say so
        assert _results(ecs, first.invoke_id)[0].invocation_status == "Running"
    release.set()
    time.sleep(0.1)
    assert _results(ecs, first.invoke_id)[0].invocation_status == "Success"
    assert ran == ["i-1"]  # ran once despite the repeated RunCommand


def test_a_command_past_its_timeout_reports_timeout(emu, ecs):
    clock = [0.0]
    emu.clock = lambda: clock[0]
    emu.command_handler = lambda c, i: time.sleep(0.5)
    inv = _run(ecs, "i-1", timeout=10)
    clock[0] = 11.0
    row = _results(ecs, inv.invoke_id)[0]
    assert row.invocation_status == "Timeout" and row.error_code == "InvocationTimeout"


def test_unknown_instances_and_regions_are_refused_like_the_cloud(emu, ecs):
    emu.require_known_instances = True
    with pytest.raises(ClientException) as err:
        _run(ecs, "i-nope")
    assert err.value.code == "InvalidInstance.NotFound" and err.value.status_code == 404
    with pytest.raises(ClientException) as err:
        ecs.describe_available_resource(ecs_models.DescribeAvailableResourceRequest(
            region_id="cn-atlantis", destination_resource="InstanceType"))
    assert err.value.code == "InvalidRegionId.NotFound"


def test_available_resources_list_each_zone_and_its_types(emu, ecs):
    emu.regions = {"cn-hangzhou": {"cn-hangzhou-i": ["ecs.gn7i-c8g1.2xlarge"], "cn-hangzhou-j": None}}
    zones = ecs.describe_available_resource(ecs_models.DescribeAvailableResourceRequest(
        region_id="cn-hangzhou", destination_resource="InstanceType")).body.available_zones.available_zone
    offered = {z.zone_id: [s.value for r in z.available_resources.available_resource
                           for s in r.supported_resources.supported_resource] for z in zones}
    assert offered["cn-hangzhou-i"] == ["ecs.gn7i-c8g1.2xlarge"]
    assert "ecs.ebmgn8v.48xlarge" in offered["cn-hangzhou-j"]


def test_a_lost_response_still_takes_effect(emu, ros):
    emu.faults.update({"lost_response_rate": 1.0, "only_actions": ["CreateStack"]})
    with pytest.raises(ServerException):
        ros.create_stack(ros_models.CreateStackRequest(
            region_id="cn-hangzhou", stack_name="lost", template_body=TEMPLATE, client_token="t1",
            parameters=[ros_models.CreateStackRequestParameters(parameter_key="ModelName", parameter_value="m")]))
    assert emu.stack_by_name("lost") is not None
