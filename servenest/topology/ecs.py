"""The ECS topologies: one GPU instance (ecs-single) or two joined by Ray (ecs-dual).

Machines come from a ROS stack (``servenest.cloud.ros_template``); commands reach them
through Cloud Assistant (``servenest.cloud.scripts``). What the state record holds, saved
before each step returns, is enough for a rerun to resume and for a teardown from any
process to find everything:

- ``resources.attempts``: every placement tried (zone, instance type, ClientToken, stack
  id, outcome), written *before* CreateStack, so a rerun after a crash reuses the token
  and ROS hands back the same stack instead of a duplicate;
- ``resources.stack_id`` / ``instances``: the live stack and its hosts, in role order.

Stacks are named ``servenest-<deployment>`` and tagged ``servenest:deployment`` and
``servenest:managed``; teardown deletes every stack carrying the deployment's tag.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from functools import cached_property

from servenest import readiness, time_to_ready
from servenest.catalog import get_instance_type
from servenest.cloud import bootstrap, scripts, weights_cache
from servenest.cloud.api import CloudSession
from servenest.cloud.assistant import Assistant, CommandResult
from servenest.cloud.credentials import open_session
from servenest.cloud.ros import DEPLOYMENT_TAG, IN_PROGRESS_SUFFIX, MANAGED_TAG, StackResult, Stacks
from servenest.cloud.ros_template import render_template_yaml, template_parameters
from servenest.errors import (
    CapacityError,
    CloudError,
    CloudInputError,
    CloudTransientError,
    ServeNestError,
    SpecError,
    StackFailedError,
    WeightsError,
)
from servenest.spec import DeploymentSpec, load_spec_data
from servenest.state import DeploymentState
from servenest.topology.base import (
    Endpoint,
    EngineStatus,
    Estimate,
    RuntimeState,
    StagedWeights,
    Topology,
)

log = logging.getLogger(__name__)
STAGING_POLL_S = (20.0, 1.8, 180.0)  # a download takes minutes to hours: poll gently
STAGING_RATE_BPS = 100e6  # what the progress estimate and the staging timeout assume


def roles_of(spec: DeploymentSpec) -> list[str]:
    return ["single"] if spec.topology == "ecs-single" else ["master", "worker"]


def stack_name(deployment: str) -> str:
    return f"servenest-{deployment}"


def deployment_tags(deployment: str) -> dict[str, str]:
    return {DEPLOYMENT_TAG: deployment, MANAGED_TAG: "true"}


def placed_spec(spec: DeploymentSpec, instance_type: str) -> DeploymentSpec:
    """The spec with ``instance_type`` first: scripts size TP/PP from the first candidate."""
    data = spec.model_dump(mode="json")
    types = data["cloud"]["instance_types"]
    data["cloud"]["instance_types"] = [instance_type] + [t for t in types if t != instance_type]
    return load_spec_data(data)


def render(spec: DeploymentSpec, zone: str, instance_type: str,
           weights_snapshot: str | None = None) -> tuple[str, dict[str, str]]:
    """(template YAML, parameters) for one placement; bad combinations are spec errors."""
    try:
        return render_template_yaml(spec, zone, instance_type, weights_snapshot), template_parameters(spec)
    except ValueError as exc:
        raise SpecError(f"{spec.name}: {exc}") from None


class EcsTopology(Topology):
    name = "ecs"

    clock: Callable[[], float] = staticmethod(time.monotonic)

    @cached_property
    def session(self) -> CloudSession:
        return open_session(self.spec.cloud.region, self.spec.cloud.credentials_block)

    @property
    def stacks(self) -> Stacks:
        return Stacks(self.session, self.clock)

    @property
    def assistant(self) -> Assistant:
        return Assistant(self.session, self.clock)

    @property
    def roles(self) -> list[str]:
        return roles_of(self.spec)

    @property
    def instances(self) -> list[dict]:
        return self.state.resources.get("instances") or []

    def gpu_demand(self) -> dict[str, int]:
        # Capacity failover may land on any candidate type: count the largest.
        types = [get_instance_type(t) for t in self.spec.cloud.instance_types]
        demand: dict[str, int] = {}
        for t in types:
            demand[t.gpu] = max(demand.get(t.gpu, 0), t.gpu_count * self.spec.cloud.nodes)
        return demand

    # -- plan and preflight ---------------------------------------------------------------
    def plan(self) -> dict:
        c = self.spec.cloud
        zone = c.zones[0] if c.zones else f"{c.region}-<first zone offering the type>"
        itype = c.instance_types[0]
        head = scripts.HEAD_PLACEHOLDER if self.spec.topology == "ecs-dual" else None
        template, parameters = render(self.spec, c.zones[0] if c.zones else f"{c.region}-a", itype)
        return {
            "placement": {"region": c.region, "zone": zone, "instance_type": itype,
                          "candidates": {"zones": c.zones, "instance_types": c.instance_types}},
            "ros_template": template,
            "ros_parameters": parameters,
            "bootstrap": bootstrap.plan(self.spec, itype),
            "time_to_ready": time_to_ready.estimate(self.spec),
            "weights_cache": weights_cache.plan(self.spec),
            "scripts": {
                role: {"stage_weights": scripts.staging_script(self.spec, role),
                       "launch": scripts.launch_script(self.spec, role, head_address=head),
                       "teardown": scripts.teardown_script()}
                for role in self.roles
            },
        }

    def preflight(self) -> dict:
        time_to_ready.check_staging_limit(self.spec)
        offered = self._offered_types()
        c = self.spec.cloud
        unknown = [z for z in c.zones if z not in offered]
        if unknown:
            raise CloudInputError(
                f"zone(s) {', '.join(unknown)} are not in region {c.region}; its zones: "
                f"{', '.join(sorted(offered)) or 'none'}")
        candidates = self._candidates(offered)
        if not candidates:
            raise CloudInputError(
                f"none of {', '.join(c.instance_types)} is offered in "
                f"{', '.join(c.zones) if c.zones else c.region}; choose other cloud.instance_types "
                f"or cloud.zones")
        for zone, itype in candidates[:1]:
            template, _ = render(self.spec, zone, itype)
            self.stacks.validate(template)
        # Saved with the first stack attempt: a preflight that stops here leaves no record.
        self.state.resources["candidates"] = [list(p) for p in candidates]
        return {"candidates": [f"{itype}@{zone}" for zone, itype in candidates]}

    def _offered_types(self) -> dict[str, set[str]]:
        from alibabacloud_ecs20140526 import models as m

        body = self.session.call("ecs", "describe_available_resource", m.DescribeAvailableResourceRequest(
            region_id=self.spec.cloud.region, destination_resource="InstanceType",
            instance_charge_type="PostPaid"))
        out: dict[str, set[str]] = {}
        for zone in (body.get("AvailableZones") or {}).get("AvailableZone") or []:
            types = out.setdefault(zone.get("ZoneId", ""), set())
            for res in (zone.get("AvailableResources") or {}).get("AvailableResource") or []:
                for sup in (res.get("SupportedResources") or {}).get("SupportedResource") or []:
                    if sup.get("Status") == "Available":
                        types.add(sup.get("Value", ""))
        return out

    def _candidates(self, offered: dict[str, set[str]] | None = None) -> list[tuple[str, str]]:
        """(zone, instance type) in the spec's order: each type in every zone, then the next."""
        if offered is None:
            recorded = self.state.resources.get("candidates")
            if recorded:
                return [tuple(p) for p in recorded]
            offered = self._offered_types()
        zones = self.spec.cloud.zones or sorted(offered)
        return [(z, t) for t in self.spec.cloud.instance_types for z in zones if t in offered.get(z, ())]

    def estimate(self) -> Estimate:
        """The first placement's price, plus each fallback instance type's (failover may move
        there; provision skips any above ``cloud.hourly_budget``)."""
        candidates = self._candidates()
        zone, itype = candidates[0]
        first = self._price(zone, itype)
        others = []
        for other_zone, other_type in candidates:
            if other_type != itype and other_type not in (t for t, _ in others):
                others.append((other_type, self._price(other_zone, other_type).hourly))
        return Estimate(first.hourly, first.currency, first.placement, first.lines, tuple(others))

    @cached_property
    def _prices(self) -> dict[str, Estimate]:
        return {}  # per instance type: one GetTemplateEstimateCost each per run

    def _price(self, zone: str, itype: str) -> Estimate:
        cache = self._prices
        if itype not in cache:
            template, parameters = render(self.spec, zone, itype)
            lines, currency = self.stacks.priced_lines(template, parameters)
            cache[itype] = Estimate(round(sum(a for _, _, a in lines), 4), currency,
                                    f"{len(self.roles)} x {itype} in {zone}", tuple(lines))
        return cache[itype]

    # -- provision ------------------------------------------------------------------------
    def provision(self) -> dict:
        existing = self._adopt_existing()
        if existing is not None:
            self._record_stack(existing)
            return {"stack_id": existing.stack_id, "resumed": True, **self._placement()}
        skip = {(a["zone"], a["instance_type"]) for a in self._attempts()
                if a.get("outcome") in ("no capacity", "over budget")}
        budget = self.spec.cloud.hourly_budget
        for zone, itype in self._candidates():
            if (zone, itype) in skip:
                continue
            if budget is not None and itype != self.spec.cloud.instance_types[0]:
                price = self._price(zone, itype)
                if price.hourly > budget:  # a fallback type must respect the budget too
                    self._attempts().append({"zone": zone, "instance_type": itype, "outcome": "over budget",
                                             "reason": f"{price.hourly:.2f} {price.currency}/hour"})
                    self.save()
                    continue
            result = self._create(zone, itype)
            if result.status == "CREATE_COMPLETE":
                self._record_stack(result)
                return {"stack_id": result.stack_id, "resumed": False, **self._placement()}
            if not result.capacity_failure:
                raise StackFailedError(result.explain(), code=result.status)
            # Out of stock or over quota here: remove the failed stack, try the next placement.
            self.stacks.delete(result.stack_id)
            self.state.resources.pop("stack_id", None)
            self.save()
        raise CapacityError(
            "no candidate placement had capacity within budget; attempts:\n" + "\n".join(
                f"  - {a['instance_type']} in {a['zone']}: {a.get('outcome')} {a.get('reason', '')}"
                for a in self._attempts()
            ), code="NoCapacity")

    def _attempts(self) -> list[dict]:
        return self.state.resources.setdefault("attempts", [])

    def _create(self, zone: str, itype: str) -> StackResult:
        template, parameters = render(self.spec, zone, itype, self._weights_cache().get("snapshot_id"))
        # An attempt a dead run left at "creating" keeps its token: if that CreateStack did
        # reach ROS, the same token returns the same stack instead of StackExists.
        attempt = next((a for a in self._attempts() if a.get("outcome") == "creating"
                        and (a["zone"], a["instance_type"]) == (zone, itype)), None)
        if attempt is None:
            attempt = {"zone": zone, "instance_type": itype, "client_token": uuid.uuid4().hex,
                       "outcome": "creating", "at": time.time()}
            self._attempts().append(attempt)
            self.save()  # before CreateStack
        tags = deployment_tags(self.spec.name) | {"servenest:zone": zone, "servenest:instance-type": itype}
        attempt["stack_id"] = self.stacks.create(
            stack_name(self.spec.name), template, parameters, tags, attempt["client_token"])
        self.state.resources["stack_id"] = attempt["stack_id"]
        self.save()
        return self._finish_attempt(attempt, self.stacks.wait_created(attempt["stack_id"]))

    def _finish_attempt(self, attempt: dict, result: StackResult) -> StackResult:
        if result.status == "CREATE_COMPLETE":
            attempt["outcome"] = "created"
        else:
            attempt["outcome"] = "no capacity" if result.capacity_failure else "failed"
            attempt["reason"] = result.reason
        self.save()
        return result

    def _attempt_for(self, body: dict) -> dict:
        """The recorded attempt that made this stack; from its tags when the record is gone."""
        sid = body["StackId"]
        attempt = next((a for a in self._attempts() if a.get("stack_id") == sid), None)
        if attempt is None:
            tags = {t["Key"]: t["Value"] for t in body.get("Tags") or []}
            zone, itype = tags.get("servenest:zone", "?"), tags.get("servenest:instance-type", "?")
            attempt = next((a for a in self._attempts() if a.get("outcome") == "creating"
                            and (a["zone"], a["instance_type"]) == (zone, itype)), None)
            if attempt is None:
                attempt = {"zone": zone, "instance_type": itype, "at": time.time()}
                self._attempts().append(attempt)
            attempt["stack_id"] = sid
        return attempt

    def _adopt_existing(self) -> StackResult | None:
        """The deployment's stack from an earlier (perhaps interrupted) run, if usable;
        anything else of that name is deleted so a fresh placement can take the name."""
        sid = self.state.resources.get("stack_id")
        body = self.stacks.get(sid) if sid else None
        if body is None:
            found = self.stacks.find_by_name(stack_name(self.spec.name))
            body = self.stacks.get(found["StackId"]) if found else None
        if body is None:
            return None
        sid = body["StackId"]
        self.state.resources["stack_id"] = sid
        self.save()
        if body.get("Status", "").endswith(IN_PROGRESS_SUFFIX):
            # Creating, rolling back, updating or deleting: ROS refuses another action
            # (ActionInProgress) until it settles.
            body = self.stacks.wait_settled(sid)
            if body is None:
                self.state.resources.pop("stack_id", None)
                self.save()
                return None
        status = body.get("Status", "")
        attempt = self._attempt_for(body)
        if status in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
            outputs = {o["OutputKey"]: o.get("OutputValue") for o in body.get("Outputs") or []}
            return self._finish_attempt(attempt, StackResult(sid, "CREATE_COMPLETE", body.get("StatusReason", ""),
                                                             outputs, []))
        if status != "DELETE_COMPLETE":
            result = StackResult(sid, status, body.get("StatusReason", ""), {}, self.stacks.failed_resources(sid))
            self._finish_attempt(attempt, result)
            log.warning("replacing stack %s left by an earlier run:\n%s", sid, result.explain())
            self.stacks.delete(sid)
        self.state.resources.pop("stack_id", None)
        self.save()
        return None

    def _record_stack(self, result: StackResult) -> None:
        out = result.outputs
        ids, private = list(out.get("InstanceIds") or []), list(out.get("PrivateIps") or [])
        public = list(out.get("PublicIps") or [None] * len(ids))
        if len(ids) != len(self.roles):
            raise StackFailedError(
                f"stack {result.stack_id} reports {len(ids)} instances, expected {len(self.roles)}")
        self.state.resources["stack_id"] = result.stack_id
        self.state.resources["instances"] = [
            {"role": role, "instance_id": i, "private_ip": p, "public_ip": pub}
            for role, i, p, pub in zip(self.roles, ids, private, public, strict=True)
        ]
        self.save()

    def _placement(self) -> dict:
        done = [a for a in self._attempts() if a.get("outcome") == "created"]
        last = done[-1] if done else {}
        return {"zone": last.get("zone"), "instance_type": last.get("instance_type"),
                "attempts": len(self._attempts())}

    def _placed(self) -> DeploymentSpec:
        itype = self._placement()["instance_type"] or self.spec.cloud.instance_types[0]
        return placed_spec(self.spec, itype)

    def _serving_ids(self) -> list[str]:
        """The host that serves HTTP (and holds the key): single, or master on ecs-dual."""
        return self._ids(["single", "master"])

    def _ids(self, roles: list[str] | None = None) -> list[str]:
        if not self.instances:
            raise ServeNestError(f"{self.spec.name} has no instances yet; run provision first")
        return [i["instance_id"] for i in self.instances if roles is None or i["role"] in roles]

    # -- hosts --------------------------------------------------------------------------
    def prepare_hosts(self) -> dict:
        """The host bootstrap on every instance (servenest/cloud/bootstrap.py)."""
        itype = self._placement()["instance_type"] or self.spec.cloud.instance_types[0]
        script = bootstrap.bootstrap_script(self.spec, itype)
        record = bootstrap.run_on_hosts(self.assistant, self._ids(), script, self.session.sleep,
                                        self.session.timings.scale)
        self.state.resources["bootstrap"] = {k: v for k, v in record.items() if k != "log"}
        self.save()
        return record

    def check_hosts(self) -> dict:
        spec = self._placed()
        image = spec.engine.image or scripts.DEFAULT_IMAGES[spec.engine.kind]
        return readiness.check_hosts(self.assistant, spec, spec.cloud.instance_types[0], self.instances,
                                     image, scripts.model_dir(spec))

    # -- weights ------------------------------------------------------------------------
    def _weights_cache(self) -> dict:
        """The cache entry this deployment's disks come from (looked up once, recorded
        before the stack is made, so a rerun builds the same disks)."""
        if self.spec.weights.cache != "snapshot":
            return {}
        record = self.state.resources.get("weights_cache")
        if record is None:
            found = weights_cache.find(self.session, self.spec)
            record = {"snapshot_id": found.snapshot_id, "digest": found.digest} if found else {}
            self.state.resources["weights_cache"] = record
            self.save()
        return record

    def stage_weights(self, progress: Callable[[float, str], None] | None = None) -> StagedWeights:
        staged = self._stage_weights(progress)
        if self.spec.weights.cache == "snapshot":
            self.state.resources["weights_cache"] = weights_cache.after_staging(
                self.session, self.spec, self._weights_cache(), staged, self._ids()[0])
            self.save()
        return staged

    def _stage_weights(self, progress: Callable[[float, str], None] | None = None) -> StagedWeights:
        spec = self.spec
        if self._weights_cache().get("snapshot_id"):  # a cached copy: every file against its manifest
            spec = spec.with_section("weights", verify="full")
        expected_s = max(60.0, spec.model_info.weight_gb * 1e9 / STAGING_RATE_BPS)

        def on_poll(elapsed: float, results: list[CommandResult]) -> None:
            if progress is not None:
                running = sum(1 for r in results if r.status not in ("Success",))
                pct = min(95.0, 100 * elapsed / (expected_s * self.session.timings.scale))
                progress(pct, f"{running} host(s) downloading {spec.weights_repo}, {elapsed:.0f} s")

        # Every host gets the weights (ecs-dual: each node loads its pipeline stages).
        results = self.assistant.run(
            self._ids(), scripts.staging_script(spec, self.roles[0]), name="servenest-stage-weights",
            timeout_s=int(600 + 3 * expected_s), on_poll=on_poll, poll_s=STAGING_POLL_S)
        summaries = {_weights_summary(r) for r in results}
        if len(summaries) != 1:
            raise WeightsError(f"hosts disagree on the staged weights of {spec.model}: {sorted(summaries)}")
        files, size, digest = summaries.pop()
        reused = all("skipping download" in r.output for r in results)
        location = f"{scripts.model_dir(spec)} on {', '.join(self._ids())}"
        self.state.weights = {"host_dir": scripts.model_dir(spec), "digest": digest, "bytes": size}
        self.save()
        if progress is not None:
            progress(100.0, f"{files} files verified on {len(results)} host(s)")
        return StagedWeights(location, files, size, digest, reused)

    # -- engine -------------------------------------------------------------------------
    def launch(self, api_key: str) -> dict:
        serving = self._serving_ids()
        self.assistant.run(serving, scripts.key_script(api_key), name="servenest-api-key", timeout_s=60)
        spec = self._placed()
        head = self.instances[0]["private_ip"] if spec.topology == "ecs-dual" else None
        for inst in self.instances:  # master first: the worker joins its Ray head
            self.assistant.run([inst["instance_id"]], scripts.launch_script(spec, inst["role"], head),
                               name=f"servenest-launch-{inst['role']}", timeout_s=600)
        self.state.engine = {"launched_at": time.time(), "container": scripts.CONTAINER_NAME,
                             "instance_type": spec.cloud.instance_types[0]}
        self._cached_status = None
        self.save()
        return {"hosts": [f"{i['role']}={i['instance_id']}" for i in self.instances],
                "container": scripts.CONTAINER_NAME}

    def endpoint(self) -> Endpoint:
        if not self.instances:
            raise ServeNestError(f"{self.spec.name} has no instances yet; run provision first")
        head = self.instances[0]
        ip = head["public_ip"] if self.spec.access.public and head.get("public_ip") else head["private_ip"]
        return Endpoint(f"http://{ip}:{self.spec.access.port}", self.spec.served_model_name, self.spec.access.public)

    _cached_status: tuple[float, EngineStatus] | None = None

    def status(self) -> EngineStatus:
        if not self.state.engine or not self.instances:
            return EngineStatus(False, detail="not launched")
        now = self.clock()
        cache = self._cached_status
        if cache and now - cache[0] < self.session.timings.status_cache_s * self.session.timings.scale:
            return cache[1]
        status, _ = self._inspect()
        self._cached_status = (now, status)
        return status

    def _inspect(self) -> tuple[EngineStatus, RuntimeState]:
        """The serving host's container, by ``docker inspect`` through Cloud Assistant."""
        serving = self._serving_ids()
        try:
            result = self.assistant.run(serving, scripts.status_script(), name="servenest-status",
                                        timeout_s=60, check=False)[0]
        except CloudTransientError as exc:
            # Liveness is advisory (the gate's HTTP checks decide); an API hiccup is no verdict.
            detail = f"unknown ({exc.code or 'transient error'})"
            return EngineStatus(True, None, detail), RuntimeState(True, detail)
        except CloudError as exc:
            if exc.code.startswith("InvalidInstance"):
                detail = f"instance {serving[0]} is gone"
                return EngineStatus(False, detail=detail), RuntimeState(False, detail, gone=True)
            raise
        status = _container_status(result)
        return status, RuntimeState(status.running, status.detail, _restart_count(result))

    def runtime_state(self) -> RuntimeState:
        if not self.state.engine or not self.instances:
            return RuntimeState(False, "not launched")
        return self._inspect()[1]

    def restart_engine(self, api_key: str) -> dict:
        # `docker restart` keeps the container's arguments and its mounted key file; the
        # master goes first on ecs-dual so the worker rejoins a fresh Ray head.
        self._ids()
        for inst in self.instances:
            self.assistant.run([inst["instance_id"]], scripts.restart_script(),
                               name=f"servenest-restart-{inst['role']}", timeout_s=300)
        self._cached_status = None
        self.state.engine["restarted_at"] = time.time()
        self.save()
        return {"restarted": [f"{i['role']}={i['instance_id']}" for i in self.instances]}

    def logs(self, lines: int = 40) -> list[str]:
        if not self.instances:
            return []
        result = self.assistant.run(self._serving_ids(), scripts.logs_script(lines),
                                    name="servenest-logs", timeout_s=60, check=False)[0]
        return redact_keys(result.output).splitlines()[-lines:]

    def diagnostics(self) -> dict:
        if not self.instances:
            return {}
        ids = self._ids()
        # One command per question, run on every host at once.
        states = {r.instance_id: r for r in self.assistant.run(
            ids, scripts.status_script(), name="servenest-status", timeout_s=60, check=False)}
        logs = {r.instance_id: r for r in self.assistant.run(
            ids, scripts.logs_script(40), name="servenest-logs", timeout_s=60, check=False)}
        out: dict = {
            inst["role"]: {"instance_id": (iid := inst["instance_id"]),
                           "container": _container_status(states[iid]).detail,
                           "logs": redact_keys(logs[iid].output).splitlines()}
            for inst in self.instances
        }
        if self.spec.topology == "ecs-dual":
            [ray] = self.assistant.run(self._ids(["master"]), scripts.ray_status_script(),
                                       name="servenest-ray-status", timeout_s=60, check=False)
            out["ray"] = {"nodes": _ray_nodes(ray.output), "status": ray.output.splitlines()}
        return out

    # -- teardown -----------------------------------------------------------------------
    def teardown(self) -> dict:
        deleted = delete_deployment_stacks(self.stacks, self.spec.name, self.state.resources.get("stack_id"))
        self.state.resources, self.state.engine = {}, {}
        self.save()
        return {"stacks_deleted": deleted, "weights_kept": False}

    @classmethod
    def teardown_recorded(cls, state: DeploymentState) -> dict:
        cloud = state.spec.get("cloud") or {}
        session = open_session(cloud.get("region", "cn-hangzhou"), cloud.get("credentials_block", "default"))
        deleted = delete_deployment_stacks(Stacks(session), state.name, state.resources.get("stack_id"))
        return {"stacks_deleted": deleted}


def delete_deployment_stacks(stacks: Stacks, deployment: str, known_id: str | None) -> list[str]:
    """Delete every stack of the deployment: the recorded one and any carrying its tag
    (a run that died before recording its stack id still tagged it)."""
    ids = [known_id] if known_id else []
    ids += [st["StackId"] for st in stacks.list_tagged(deployment_tags(deployment))
            if st["StackId"] not in ids]
    return [sid for sid in ids if stacks.delete(sid)]


# SGLang takes its key as --api-key and prints its server args (api_key='…') at start-up.
_KEY_IN_LOG = re.compile(r"""(api[_-]?key['"]?\s*[=:]\s*['"]?|--api-key[= ])[^\s'",)]+""", re.I)


def redact_keys(text: str) -> str:
    """Engine logs with any API key they print replaced, before they reach a log or artifact."""
    return _KEY_IN_LOG.sub(lambda m: m.group(1) + "<redacted>", text)


def _weights_summary(result: CommandResult) -> tuple[int, int, str]:
    m = scripts.WEIGHTS_LINE.search(result.output)
    if not m:
        raise WeightsError(f"staging on {result.instance_id} reported no manifest:\n{result.tail()}")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _container_status(result: CommandResult) -> EngineStatus:
    if not result.ok:
        # Cloud Assistant could not answer; do not call a running engine dead for that.
        return EngineStatus(True, None, f"unknown ({result.status} {result.error})".strip())
    words = (result.output.strip().splitlines() or ["absent"])[-1].split()
    if words[0] == "running":
        return EngineStatus(True, None, f"container {scripts.CONTAINER_NAME} running on {result.instance_id}")
    if words[0] == "absent":
        return EngineStatus(False, None, f"no container {scripts.CONTAINER_NAME} on {result.instance_id}")
    code = int(words[1]) if len(words) > 1 and words[1].lstrip("-").isdigit() else None
    return EngineStatus(False, code, f"container {scripts.CONTAINER_NAME} {words[0]} (exit {code}) on {result.instance_id}")


def _restart_count(result: CommandResult) -> int:
    """The third word of the status line: docker's RestartCount (its restart policy's)."""
    words = (result.output.strip().splitlines() or [""])[-1].split() if result.ok else []
    return int(words[2]) if len(words) > 2 and words[2].isdigit() else 0


def _ray_nodes(output: str) -> int | None:
    active = re.search(r"Active:\s*\n((?:\s+\d+\s+node_\S+\n?)+)", output)
    if not active:
        return None
    return sum(int(line.split()[0]) for line in active.group(1).strip().splitlines())
