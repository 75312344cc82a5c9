"""What an ECS deployment would create and run, rendered without touching a cloud: the ROS
template and its parameters, and each host's staging, launch and teardown scripts.

Until the ECS topology brings stacks up (issue 4), `servenest plan` shows this for
``ecs-single`` and ``ecs-dual`` specs so they can be reviewed and checked by other tools.
"""

from __future__ import annotations

from servenest.cloud.ros_template import render_template_yaml, template_parameters
from servenest.cloud.scripts import launch_script, staging_script, teardown_script
from servenest.spec import DeploymentSpec

HEAD_PLACEHOLDER = "MASTER_PRIVATE_IP"  # filled from the stack's outputs at launch


def render_ecs_plan(spec: DeploymentSpec) -> dict:
    zone = spec.cloud.zones[0] if spec.cloud.zones else f"{spec.cloud.region}-a"
    itype = spec.cloud.instance_types[0]
    roles = ["single"] if spec.topology == "ecs-single" else ["master", "worker"]
    head = None if spec.topology == "ecs-single" else HEAD_PLACEHOLDER
    return {
        "placement": {"region": spec.cloud.region, "zone": zone, "instance_type": itype,
                      "candidates": {"zones": spec.cloud.zones, "instance_types": spec.cloud.instance_types}},
        "ros_template": render_template_yaml(spec, zone, itype),
        "ros_parameters": template_parameters(spec),
        "scripts": {
            role: {"stage_weights": staging_script(spec, role),
                   "launch": launch_script(spec, role, head_address=head),
                   "teardown": teardown_script()}
            for role in roles
        },
    }
