"""Alibaba Cloud clients: ROS stacks, ECS Cloud Assistant, CS, credentials, templates and host scripts.

Everything here talks to the real cloud APIs through the official SDKs; the emulators that
imitate those APIs for rehearsals live apart, in :mod:`servenest.rehearsal`.
"""
