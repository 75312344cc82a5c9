"""launch: relaunch a registered deployment with new engine arguments, without restaging.

What the seeds' "customize deployment parameters" does by hand (docker stop, docker rm,
docker run with new flags), with a gate: if the new arguments do not pass, the previous
ones are relaunched, so the endpoint keeps serving.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import clean_up_failed, register, serve
from servenest.timing import StageTimer
from servenest.topology import open_topology
from tasks.artifacts import publish_stage_timings
from tasks.registry import registered
from tasks.secrets import load_api_key
from tasks.shell import prefect_shell_runner
from tasks.spec import check_spec


@flow(name="launch", flow_run_name="launch-{name}")
def launch(name: str, engine: dict, keep_on_failure: bool = False) -> dict:
    """Relaunch ``name`` with ``engine`` fields changed (e.g. {"max_model_len": 4096}).

    Args:
        name: Registered deployment name.
        engine: Engine fields to change, as in the spec's `engine:` section.
        keep_on_failure: Leave a failing relaunch running instead of restoring the previous one.
    """
    timer = StageTimer()
    block, spec, state = registered(name)
    try:
        with timer.stage("validate"):
            new_spec = spec.with_engine(**engine)  # spec: the live slot's
            check_spec(new_spec)
            api_key = load_api_key(new_spec.access.api_key_secret)
        topology = open_topology(new_spec, state, run=prefect_shell_runner)
        try:
            gate = serve(topology, api_key, timer, run_load_check=False)
        except BaseException:
            if keep_on_failure:
                clean_up_failed(topology, True, timer)
                raise
            get_run_logger().warning("new engine arguments failed the gate; relaunching the previous ones")
            previous = open_topology(spec, topology.state, run=prefect_shell_runner)
            try:
                with timer.stage("restore previous"):
                    register(previous, api_key, serve(previous, api_key, timer, False), timer, name)
            except BaseException:
                clean_up_failed(previous, False, timer)
            raise
        # Only a failed launch or gate restores the previous arguments; the new engine
        # passed, so a registry hiccup here must not replace it.
        register(topology, api_key, gate, timer, name)
    finally:
        publish_stage_timings(name, timer.rows)
    return {"deployment": name, "engine": new_spec.engine.model_dump(mode="json"), "stages": timer.rows}
