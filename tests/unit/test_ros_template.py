"""The ROS template of ecs-single / ecs-dual: resources, refs, ingress, tags, outputs, no secrets."""

from __future__ import annotations

import json

import pytest
import yaml

from servenest.cloud.ros_template import (
    DEFAULT_IMAGE,
    VSWITCH_CIDR,
    render_template,
    render_template_yaml,
    template_parameters,
)

A10X8 = "ecs.gn7i-8x.16xlarge"
H20 = "ecs.ebmgn8v.48xlarge"
ZONE = "cn-hangzhou-k"
CIDRS = ["203.0.113.0/24", "198.51.100.7/32"]
TEST_KEY = "sk-servenest-unit-test-key-3f9a"


@pytest.fixture
def single(make_spec):
    return make_spec(
        "ecs",
        access={"public": True, "allowed_cidrs": CIDRS, "port": 8080},
        cloud={"bandwidth_mbps": 100},
    )


@pytest.fixture
def dual(make_spec):
    def make(**cloud):
        return make_spec(
            "ecs", name="r1-dual", model="deepseek-ai/DeepSeek-R1", topology="ecs-dual",
            access={"allowed_cidrs": ["10.0.0.0/8"]},
            cloud={"instance_types": [H20], "nodes": 2, "image": "ubuntu_22_04_uefi", **cloud},
        )

    return make


def _instances(t):
    return {k: v for k, v in t["Resources"].items() if v["Type"] == "ALIYUN::ECS::Instance"}


def _endpoint_cidrs(t, port):
    rules = t["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"]
    return [r.get("SourceCidrIp") or r.get("Ipv6SourceCidrIp") for r in rules if r["PortRange"] == f"{port}/{port}"]


def test_single_resources_and_refs(single):
    t = render_template(single, ZONE, A10X8)
    assert t["ROSTemplateFormatVersion"] == "2015-09-01"
    types = {k: v["Type"] for k, v in t["Resources"].items()}
    assert types == {
        "Vpc": "ALIYUN::ECS::VPC", "VSwitch": "ALIYUN::ECS::VSwitch",
        "SecurityGroup": "ALIYUN::ECS::SecurityGroup", "Instance": "ALIYUN::ECS::Instance",
    }
    assert t["Resources"]["VSwitch"]["Properties"]["VpcId"] == {"Ref": "Vpc"}
    assert t["Resources"]["VSwitch"]["Properties"]["ZoneId"] == ZONE
    p = t["Resources"]["Instance"]["Properties"]
    assert p["VpcId"] == {"Ref": "Vpc"} and p["VSwitchId"] == {"Ref": "VSwitch"}
    assert p["SecurityGroupId"] == {"Ref": "SecurityGroup"}
    assert (p["ImageId"], p["InstanceType"], p["ZoneId"]) == (DEFAULT_IMAGE, A10X8, ZONE)
    assert (p["SystemDiskCategory"], p["SystemDiskSize"]) == ("cloud_essd", 200)
    assert p["InstanceChargeType"] == "PostPaid"
    assert p["AllocatePublicIP"] is True and p["InternetMaxBandwidthOut"] == 100
    assert "UserData" not in p and "Password" not in p


def test_single_ingress_is_exactly_the_allowed_cidrs_on_the_engine_port(single):
    t = render_template(single, ZONE, A10X8)
    rules = t["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [r["SourceCidrIp"] for r in rules] == CIDRS
    assert all(r["PortRange"] == "8080/8080" and r["IpProtocol"] == "tcp" for r in rules)
    assert not any(r["PortRange"].startswith("22/") for r in rules)  # Cloud Assistant, no SSH


def test_tags_name_the_deployment(single, dual):
    for t in (render_template(single, ZONE, A10X8), render_template(dual(), ZONE, H20)):
        for res in t["Resources"].values():
            tags = {x["Key"]: x["Value"] for x in res["Properties"]["Tags"]}
            assert tags["servenest:managed"] == "true"
            assert tags["servenest:deployment"] in ("unit-test", "r1-dual")


def test_single_outputs(single):
    out = render_template(single, ZONE, A10X8)["Outputs"]
    assert out["InstanceIds"]["Value"] == [{"Ref": "Instance"}]
    assert out["PrivateIps"]["Value"] == [{"Fn::GetAtt": ["Instance", "PrivateIp"]}]
    assert out["PublicIps"]["Value"] == [{"Fn::GetAtt": ["Instance", "PublicIp"]}]
    assert out["EndpointURL"]["Value"] == {"Fn::Sub": "http://${Instance.PublicIp}:8080/v1"}


def test_dual_master_worker_and_node_to_node_rule(dual):
    t = render_template(dual(), ZONE, H20)
    inst = _instances(t)
    assert set(inst) == {"MasterInstance", "WorkerInstance"}
    for name, role in (("MasterInstance", "master"), ("WorkerInstance", "worker")):
        p = inst[name]["Properties"]
        assert p["ZoneId"] == ZONE and p["VSwitchId"] == {"Ref": "VSwitch"}
        assert {"Key": "servenest:role", "Value": role} in p["Tags"]
        assert p["AllocatePublicIP"] is False and p["InternetMaxBandwidthOut"] == 0
    rules = t["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert _endpoint_cidrs(t, 8000) == ["10.0.0.0/8"]
    intra = [r for r in rules if r["PortRange"] == "-1/-1"]
    assert len(intra) == 1 and intra[0]["SourceCidrIp"] == VSWITCH_CIDR
    assert len(rules) == 2
    out = t["Outputs"]
    assert out["InstanceIds"]["Value"] == [{"Ref": "MasterInstance"}, {"Ref": "WorkerInstance"}]
    assert "PublicIps" not in out
    assert out["EndpointURL"]["Value"] == {"Fn::Sub": "http://${MasterInstance.PrivateIp}:8000/v1"}


def test_existing_network_ids_replace_resources_and_refs(dual):
    spec = dual(vpc_id="vpc-abc", vswitch_id="vsw-def", security_group_id="sg-ghi")
    t = render_template(spec, ZONE, H20)
    assert set(t["Resources"]) == {"MasterInstance", "WorkerInstance"}
    assert "Ref" not in json.dumps(t["Resources"])
    p = t["Resources"]["MasterInstance"]["Properties"]
    assert (p["VpcId"], p["VSwitchId"], p["SecurityGroupId"]) == ("vpc-abc", "vsw-def", "sg-ghi")
    assert "Parameters" not in t and template_parameters(spec) == {}


def test_existing_vswitch_with_new_group_takes_the_cidr_as_a_parameter(dual):
    spec = dual(vpc_id="vpc-abc", vswitch_id="vsw-def")
    t = render_template(spec, ZONE, H20)
    assert set(t["Resources"]) == {"SecurityGroup", "MasterInstance", "WorkerInstance"}
    assert t["Resources"]["SecurityGroup"]["Properties"]["VpcId"] == "vpc-abc"
    rules = t["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rules[-1]["SourceCidrIp"] == {"Ref": "VSwitchCidrBlock"}
    assert set(t["Parameters"]) == {"VSwitchCidrBlock"}
    assert template_parameters(spec, vswitch_cidr="172.16.3.0/24") == {"VSwitchCidrBlock": "172.16.3.0/24"}
    with pytest.raises(ValueError):
        template_parameters(spec)


def test_refuses_bad_placements(make_spec, single, dual):
    with pytest.raises(ValueError, match="instance_types"):
        render_template(single, ZONE, H20)
    with pytest.raises(ValueError, match="UEFI"):
        render_template(dual(image=None), ZONE, H20)
    with pytest.raises(ValueError, match="together"):
        render_template(dual(vpc_id="vpc-abc"), ZONE, H20)
    with pytest.raises(ValueError, match="bandwidth"):
        render_template(
            make_spec("ecs", access={"public": True, "allowed_cidrs": CIDRS}), ZONE, A10X8
        )
    with pytest.raises(ValueError, match="zone"):
        render_template(make_spec("ecs", cloud={"zones": ["cn-hangzhou-j"]}), ZONE, A10X8)


def test_deterministic_yaml_round_trip_without_anchors(single, dual):
    for spec, itype in ((single, A10X8), (dual(), H20)):
        text = render_template_yaml(spec, ZONE, itype)
        assert text == render_template_yaml(spec, ZONE, itype)
        assert yaml.safe_load(text) == render_template(spec, ZONE, itype)
        assert "&id" not in text and "*id" not in text


def test_no_secret_in_the_template(make_spec, monkeypatch):
    monkeypatch.setenv("SERVENEST_API_KEY", TEST_KEY)
    spec = make_spec(
        "ecs", access={"public": True, "allowed_cidrs": CIDRS}, cloud={"bandwidth_mbps": 10},
    )
    text = render_template_yaml(spec, ZONE, A10X8)
    assert TEST_KEY not in text
    for word in ("Password", "api-key", "ApiKey", "NoEcho"):
        assert word not in text
