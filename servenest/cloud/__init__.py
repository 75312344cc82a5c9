"""Alibaba Cloud test equipment: a local emulator of the ROS, ECS Cloud Assistant and CS APIs.

The real SDK clients (alibabacloud-ros20190910, -ecs20140526, -cs20151215) are pointed at
:class:`servenest.cloud.emulator.CloudEmulator` with ``endpoint=emulator.endpoint`` and
``protocol="http"``; no real cloud is contacted.
"""
