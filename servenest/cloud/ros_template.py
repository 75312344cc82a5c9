"""The ROS template of an ECS deployment (ecs-single: 1 instance; ecs-dual: master + worker).

Pure functions: the same spec, zone and instance type give the same dict, so a stack
update that changes nothing is a no-op. No cloud call happens here.

Choices a reader should know:

- Commands (weight staging, launch, teardown) reach the instances through Cloud
  Assistant, whose agent connects out to Alibaba Cloud. The template therefore has no
  ``UserData`` and opens **no port 22**.
- The API key is not in the template at all: it is written to a root-only file on the
  instance by a separate Cloud Assistant command (see ``servenest.cloud.scripts``), so no
  ``NoEcho`` parameter is needed and the stack's stored template and parameters hold no
  secret.
- Ingress on the engine port comes exactly from ``access.allowed_cidrs``. ecs-dual also
  gets one rule for all traffic between the nodes, limited to the VSwitch CIDR: Ray uses
  6379 plus ephemeral worker/object-manager ports and NCCL picks ephemeral ports, so a
  6379-only rule would hang the cluster.
- Existing network (``cloud.vpc_id`` + ``cloud.vswitch_id``, optionally
  ``cloud.security_group_id``): those resources are omitted and their ids used in place of
  ``Ref``s. An existing security group is not modified (its owner manages its rules). With
  an existing VSwitch and a new security group on ecs-dual, the VSwitch's CIDR arrives as
  the ``VSwitchCidrBlock`` parameter (``template_parameters(..., vswitch_cidr=...)``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from servenest.catalog import get_instance_type
from servenest.cloud.weights_cache import weights_disk
from servenest.spec import DeploymentSpec

TEMPLATE_VERSION = "2015-09-01"
VPC_CIDR = "192.168.0.0/16"
VSWITCH_CIDR = "192.168.0.0/24"
# Fuzzy image id (ROS resolves it to the newest matching public image). The host
# bootstrap (servenest/cloud/bootstrap.py) installs the NVIDIA driver, docker and
# nvidia-container-toolkit on it; a custom image that has them sets cloud.image_prepared.
# ebmgn8v boots UEFI images only, so for those types cloud.image is required.
DEFAULT_IMAGE = "ubuntu_22"

_CIDR_PARAMETER = "VSwitchCidrBlock"


def _roles(spec: DeploymentSpec) -> list[str]:
    if spec.topology == "ecs-single":
        return ["single"]
    if spec.topology == "ecs-dual":
        return ["master", "worker"]
    raise ValueError(f"ROS templates cover ecs-single and ecs-dual, not {spec.topology}")


def _logical_name(role: str) -> str:
    return {"single": "Instance", "master": "MasterInstance", "worker": "WorkerInstance"}[role]


def _tags(spec: DeploymentSpec, role: str | None = None) -> list[dict[str, str]]:
    tags = [
        {"Key": "servenest:deployment", "Value": spec.name},
        {"Key": "servenest:managed", "Value": "true"},
    ]
    if role:
        tags.append({"Key": "servenest:role", "Value": role})
    return tags


def _network_mode(spec: DeploymentSpec) -> tuple[bool, bool]:
    """(existing VPC+VSwitch, existing security group); refuses half-given networks."""
    c = spec.cloud
    if bool(c.vpc_id) != bool(c.vswitch_id):
        raise ValueError("give cloud.vpc_id and cloud.vswitch_id together (or neither)")
    if c.security_group_id and not c.vpc_id:
        raise ValueError("cloud.security_group_id needs cloud.vpc_id and cloud.vswitch_id")
    return bool(c.vpc_id), bool(c.security_group_id)


def _check_placement(spec: DeploymentSpec, zone: str, instance_type: str) -> None:
    if instance_type not in spec.cloud.instance_types:
        raise ValueError(f"{instance_type} is not among cloud.instance_types {spec.cloud.instance_types}")
    if spec.cloud.zones and zone not in spec.cloud.zones:
        raise ValueError(f"zone {zone} is not among cloud.zones {spec.cloud.zones}")
    if spec.access.public and spec.cloud.bandwidth_mbps == 0:
        raise ValueError("access.public needs cloud.bandwidth_mbps > 0 (0 allocates no public IP)")
    if not spec.cloud.image and "UEFI" in get_instance_type(instance_type).notes:
        raise ValueError(f"{instance_type} needs a UEFI image; set cloud.image")


def _ingress(cidr: str, port_range: str, protocol: str, description: str) -> dict[str, Any]:
    key = "Ipv6SourceCidrIp" if ipaddress.ip_network(cidr).version == 6 else "SourceCidrIp"
    rule: dict[str, Any] = {"IpProtocol": protocol, "PortRange": port_range}
    rule[key] = cidr
    rule.update({"Priority": 1, "NicType": "intranet", "Description": description})
    return rule


def render_template(spec: DeploymentSpec, zone: str, instance_type: str,
                    weights_snapshot: str | None = None) -> dict[str, Any]:
    """The ROS template (ROSTemplateFormatVersion 2015-09-01) for one placement of the spec;
    with ``weights.cache: snapshot`` each instance gets a weights data disk, made from
    ``weights_snapshot`` (a cache entry) when given."""
    roles = _roles(spec)
    _check_placement(spec, zone, instance_type)
    existing_net, existing_sg = _network_mode(spec)
    c = spec.cloud
    port = spec.access.port
    template: dict[str, Any] = {
        "ROSTemplateFormatVersion": TEMPLATE_VERSION,
        "Description": (
            f"ServeNest {spec.name}: {spec.model} ({spec.engine.kind}) on "
            f"{len(roles)} x {instance_type} in {zone}"
        ),
    }
    parameters: dict[str, Any] = {}
    resources: dict[str, Any] = {}

    if existing_net:
        vpc_id: Any = c.vpc_id
        vswitch_id: Any = c.vswitch_id
    else:
        resources["Vpc"] = {
            "Type": "ALIYUN::ECS::VPC",
            "Properties": {"CidrBlock": VPC_CIDR, "VpcName": f"servenest-{spec.name}", "Tags": _tags(spec)},
        }
        resources["VSwitch"] = {
            "Type": "ALIYUN::ECS::VSwitch",
            "Properties": {
                "VpcId": {"Ref": "Vpc"}, "ZoneId": zone, "CidrBlock": VSWITCH_CIDR,
                "VSwitchName": f"servenest-{spec.name}", "Tags": _tags(spec),
            },
        }
        vpc_id, vswitch_id = {"Ref": "Vpc"}, {"Ref": "VSwitch"}

    if existing_sg:
        sg_id: Any = c.security_group_id
    else:
        rules = [
            _ingress(cidr, f"{port}/{port}", "tcp", f"servenest {spec.name} endpoint")
            for cidr in spec.access.allowed_cidrs
        ]
        if spec.topology == "ecs-dual":
            if existing_net:
                parameters[_CIDR_PARAMETER] = {
                    "Type": "String",
                    "Description": "CIDR of the existing VSwitch (intra-cluster Ray/NCCL traffic).",
                }
                node_cidr: Any = {"Ref": _CIDR_PARAMETER}
            else:
                node_cidr = VSWITCH_CIDR
            rules.append({
                "IpProtocol": "all", "PortRange": "-1/-1", "SourceCidrIp": node_cidr,
                "Priority": 1, "NicType": "intranet",
                "Description": f"servenest {spec.name} node-to-node (Ray 6379 + ephemeral, NCCL)",
            })
        resources["SecurityGroup"] = {
            "Type": "ALIYUN::ECS::SecurityGroup",
            "Properties": {
                "VpcId": vpc_id, "SecurityGroupName": f"servenest-{spec.name}",
                "SecurityGroupIngress": rules, "Tags": _tags(spec),
            },
        }
        sg_id = {"Ref": "SecurityGroup"}

    public_ip = c.bandwidth_mbps > 0
    for role in roles:
        props: dict[str, Any] = {
            "ImageId": c.image or DEFAULT_IMAGE,
            "InstanceType": instance_type,
            "ZoneId": zone,
            "VpcId": vpc_id,
            "VSwitchId": vswitch_id,
            "SecurityGroupId": sg_id,
            "InstanceName": f"servenest-{spec.name}-{role}",
            "SystemDiskCategory": c.disk_category,
            "SystemDiskSize": c.system_disk_gb,
            "InstanceChargeType": "PostPaid",
            "AllocatePublicIP": public_ip,
            "InternetMaxBandwidthOut": c.bandwidth_mbps,
            "Tags": _tags(spec, role),
        }
        if public_ip:
            props["InternetChargeType"] = "PayByTraffic"
        if spec.weights.cache == "snapshot":
            props["DiskMappings"] = [weights_disk(spec, weights_snapshot)]
        resources[_logical_name(role)] = {"Type": "ALIYUN::ECS::Instance", "Properties": props}

    names = [_logical_name(r) for r in roles]
    outputs: dict[str, Any] = {
        "InstanceIds": {"Description": "Instance ids, in role order", "Value": [{"Ref": n} for n in names]},
        "PrivateIps": {
            "Description": "Private IPs, in role order",
            "Value": [{"Fn::GetAtt": [n, "PrivateIp"]} for n in names],
        },
    }
    if public_ip:
        outputs["PublicIps"] = {
            "Description": "Public IPs, in role order",
            "Value": [{"Fn::GetAtt": [n, "PublicIp"]} for n in names],
        }
    # The master serves the API on ecs-dual (vLLM via Ray on the head; SGLang rank 0).
    ip_attr = "PublicIp" if spec.access.public else "PrivateIp"
    outputs["EndpointURL"] = {
        "Description": "OpenAI-compatible base URL",
        "Value": {"Fn::Sub": f"http://${{{names[0]}.{ip_attr}}}:{port}/v1"},
    }
    if parameters:
        template["Parameters"] = parameters
    template["Resources"] = resources
    template["Outputs"] = outputs
    return template


def template_parameters(spec: DeploymentSpec, *, vswitch_cidr: str | None = None) -> dict[str, str]:
    """Parameter values for ``render_template``'s Parameters (none hold secrets)."""
    existing_net, existing_sg = _network_mode(spec)
    if spec.topology == "ecs-dual" and existing_net and not existing_sg:
        if not vswitch_cidr:
            raise ValueError(
                "ecs-dual on an existing VSwitch also needs cloud.security_group_id (a group that "
                "lets the two nodes reach each other); this version does not read the VSwitch CIDR"
            )
        return {_CIDR_PARAMETER: str(ipaddress.ip_network(vswitch_cidr, strict=True))}
    return {}


class _NoAliasDumper(yaml.SafeDumper):
    """Shared ``Ref`` dicts are written out in full, not as YAML anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_template_yaml(spec: DeploymentSpec, zone: str, instance_type: str,
                         weights_snapshot: str | None = None) -> str:
    return yaml.dump(
        render_template(spec, zone, instance_type, weights_snapshot), Dumper=_NoAliasDumper, sort_keys=False,
        allow_unicode=True, width=120,
    )


# -- ack: a managed cluster with a GPU node pool ------------------------------------------------
ACK_CLUSTER_SPEC = "ack.pro.small"
ACK_SERVICE_CIDR = "172.21.0.0/20"
ACK_CONTAINER_CIDR = "172.20.0.0/16"
# ACK add-ons the ack topology needs: Fluid warms the weights; LeaderWorkerSet runs groups.
ACK_ADDONS = ("flannel", "ack-fluid", "lws")
# Managed Service for Prometheus' agent, which brings the PodMonitor CRD autoscaling scrapes
# the engine through (www.alibabacloud.com/help/doc-detail/291402.htm).
PROMETHEUS_ADDON = "ack-arms-prometheus"


def render_ack_cluster(spec: DeploymentSpec, *, at_max: bool = False) -> dict[str, Any]:
    """VPC, VSwitch and an ACK managed cluster whose node pool holds ``cloud.nodes`` GPU
    instances of ``cloud.instance_types`` per replica (ROS places the first type it can get):
    ``replicas.min`` replicas' worth, growing to ``replicas.max``'s when autoscaled (``at_max``:
    the pool at its ceiling, which is what the budget must cover)."""
    c = spec.cloud
    count = c.nodes * (spec.replicas.max if at_max else spec.replicas.min)
    pool: dict[str, Any] = {"NodePoolInfo": {"Name": "servenest-gpu"}, "Count": count}
    if spec.autoscaled and not at_max:
        # The node pool grows with the pods the HPA adds (ROS ALIYUN::CS::ClusterNodePool's
        # AutoScaling map, www.alibabacloud.com/help/doc-detail/312325.htm).
        pool["AutoScaling"] = {"Enable": True, "Type": "gpu", "MinInstances": count,
                               "MaxInstances": c.nodes * spec.replicas.max}
    if not c.zones:
        raise ValueError("creating an ACK cluster needs cloud.zones (the zone of its VSwitch)")
    tags = [{"Key": "servenest:deployment", "Value": spec.name}, {"Key": "servenest:managed", "Value": "true"}]
    vswitch = {"Ref": "VSwitch"}
    return {
        "ROSTemplateFormatVersion": TEMPLATE_VERSION,
        "Description": f"ServeNest ACK cluster for {spec.name} ({spec.model})",
        "Resources": {
            "Vpc": {"Type": "ALIYUN::ECS::VPC",
                    "Properties": {"CidrBlock": VPC_CIDR, "VpcName": f"servenest-{spec.name}"}},
            "VSwitch": {"Type": "ALIYUN::ECS::VSwitch",
                        "Properties": {"VpcId": {"Ref": "Vpc"}, "ZoneId": c.zones[0], "CidrBlock": VSWITCH_CIDR}},
            "Cluster": {
                "Type": "ALIYUN::CS::ManagedKubernetesCluster",
                "Properties": {
                    "Name": f"servenest-{spec.name}",
                    "ClusterSpec": ACK_CLUSTER_SPEC,
                    "VpcId": {"Ref": "Vpc"},
                    "VSwitchIds": [vswitch],
                    "ServiceCidr": ACK_SERVICE_CIDR,
                    "ContainerCidr": ACK_CONTAINER_CIDR,
                    "Addons": [{"Name": name} for name in ACK_ADDONS + (
                        (PROMETHEUS_ADDON,) if spec.autoscaled else ())],
                    "NodePools": [{
                        **pool,
                        "ScalingGroup": {
                            "VSwitchIds": [vswitch], "InstanceTypes": list(c.instance_types),
                            "SystemDiskCategory": c.disk_category, "SystemDiskSize": c.system_disk_gb,
                        },
                    }],
                    "DeletionProtection": False,
                    "Tags": tags,
                },
            },
        },
        "Outputs": {"ClusterId": {"Value": {"Fn::GetAtt": ["Cluster", "ClusterId"]}}},
    }


def render_ack_cluster_yaml(spec: DeploymentSpec, *, at_max: bool = False) -> str:
    return yaml.dump(render_ack_cluster(spec, at_max=at_max), Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120)
