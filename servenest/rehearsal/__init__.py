"""Imitations of the outside world, for rehearsals and tests; never imported by product code.

Like moto or kind, this room is a product apart from the code it imitates for:

- ``http``: the small HTTP request handler the emulators share.
- ``cloud``: an emulator of the Alibaba Cloud ROS, ECS (Cloud Assistant, pricing) and CS
  APIs, which the real SDK clients talk to over HTTP.
- ``hosts``: emulated ECS instances that run the rendered host scripts with bash, with
  shims for docker, nvidia-smi and modelscope, serving the real CPU vLLM or ``openai_noop``.
- ``ecs``: the cloud emulator wired to its hosts (``emulated_cloud``).
- ``kubernetes``: a Kubernetes API server emulator with controllers and a kubelet.
- ``ack``: the CS emulator plus the Kubernetes emulator, for ack rehearsals.
- ``openai_noop``: an OpenAI-compatible server that answers instantly.

Product code reaches this room through one seam, ``servenest up --emulate`` in
``servenest/cli.py``, and tests through their fixtures; the import-linter contracts in
``pyproject.toml`` keep it so.
"""
