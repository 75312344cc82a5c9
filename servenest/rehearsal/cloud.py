"""A local emulator of the Alibaba Cloud ROS, ECS (Cloud Assistant, pricing) and CS APIs.

Tests point the REAL SDK clients at it::

    with CloudEmulator() as emu:
        cfg = Config(access_key_id="AK", access_key_secret="SK", region_id="cn-hangzhou",
                     endpoint=emu.endpoint, protocol="http",
                     connect_timeout=2000, read_timeout=5000)
        ros = RosClient(cfg)

Wire format (see the project's aliyun-apis reference): ROS and ECS are RPC style,
``POST /`` routed on the ``x-acs-action`` header, parameters in the query string (lists as
``Name.1``, structs as ``Parameters.1.ParameterKey``) and large fields (TemplateBody) in a
form body. CS is ROA style: REST paths and snake_case JSON. Errors are JSON
``{"Code", "Message", "RequestId"}`` with an HTTP status; throttling carries an
``x-acs-retry-after`` header so the SDK raises ``ThrottlingException``. Signatures are not
checked; the access key id is read from ``Authorization: ... Credential=<AK>,...``.

Fault injection lives in :attr:`CloudEmulator.faults` (a :class:`Faults`), settable from
tests or over HTTP with ``POST /__emulator/faults`` (JSON). ``GET /__emulator/calls`` returns
the call log, ``POST /__emulator/reset`` clears state and faults.

Run standalone (with or without emulated hosts): ``python -m servenest.rehearsal --port 9999``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as _dt
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import yaml

from servenest.catalog import INSTANCE_TYPES as KNOWN_INSTANCE_TYPES
from servenest.rehearsal.disks import DisksMixin
from servenest.rehearsal.http import EmulatorHandler, ServedEmulator

ROS_VERSION = "2019-09-10"
ECS_VERSION = "2014-05-26"
CS_VERSION = "2015-12-15"

INSTANCE_TYPES = ("ALIYUN::ECS::Instance", "ALIYUN::ECS::InstanceGroup")
NO_STOCK_MESSAGE = (
    "The requested resource is sold out in the specified zone; try other types of "
    "resources or other regions and zones."
)
# Region -> zone -> instance types offered there (None: every type). Stock is separate:
# it is what ``Faults.out_of_stock_*`` takes away at CreateStack time, as on the real
# cloud, where DescribeAvailableResource's stock figures are advisory.
DEFAULT_REGIONS: dict[str, dict[str, list[str] | None]] = {
    "cn-hangzhou": {f"cn-hangzhou-{z}": None for z in "bfghijk"},
    "cn-beijing": {f"cn-beijing-{z}": None for z in "acfghijkl"},
    "cn-shanghai": {f"cn-shanghai-{z}": None for z in "bdefgklmn"},
    "cn-wulanchabu": {f"cn-wulanchabu-{z}": None for z in "abc"},
    "cn-shenzhen": {f"cn-shenzhen-{z}": None for z in "acdef"},
    "ap-southeast-1": {f"ap-southeast-1-{z}": None for z in "abc"},
}
ACK_PRO_HOURLY = 0.64  # an ACK Pro control plane's hourly fee, CNY (emulated list price)
DEFAULT_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: emulator-user
  name: emulator
current-context: emulator
users:
- name: emulator-user
  user:
    token: emulator-token
"""


class ApiError(Exception):
    """An API error answered as ``{"Code", "Message", "RequestId"}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class Faults:
    """Fault knobs. Rates are fractions in [0, 1], drawn from the emulator's seeded RNG.

    ``only_actions`` (when non-empty) limits throttling, 5xx and latency to those actions.
    ``lost_response_rate``: the action takes effect but the caller gets a 503, as when a
    response is lost on the way back; only an idempotent client (ClientToken) avoids a
    duplicate then.
    ``fail_resources`` maps a logical resource id to a failure reason (or ``""`` for a
    default). ``stuck_stacks`` holds stack names that never leave CREATE_IN_PROGRESS
    (``"*"`` for every stack). ``denied_access_keys`` get 403 ``Forbidden.RAM``.
    """

    throttle_rate: float = 0.0
    throttle_code: str = "Throttling.User"
    retry_after_ms: int = 1000
    error_rate: float = 0.0
    lost_response_rate: float = 0.0
    latency: float = 0.0
    only_actions: set[str] = field(default_factory=set)
    out_of_stock_zones: set[str] = field(default_factory=set)
    out_of_stock_instance_types: set[str] = field(default_factory=set)
    fail_resources: dict[str, str] = field(default_factory=dict)
    stuck_stacks: set[str] = field(default_factory=set)
    denied_access_keys: set[str] = field(default_factory=set)
    fail_snapshots: int = 0  # the next N CreateSnapshot calls end in status failed

    def update(self, values: dict[str, Any]) -> None:
        """Set knobs from a JSON-like dict (lists become sets where the field is a set)."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown fault knob {key!r}")
            current = getattr(self, key)
            if isinstance(current, set):
                value = {value} if isinstance(value, str) else set(value or ())
            elif isinstance(current, dict):
                value = dict(value or {})
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}


@dataclass
class Call:
    """One API call as the emulator saw it."""

    product: str
    action: str
    method: str
    path: str
    params: dict[str, Any]
    access_key_id: str | None
    status: int = 200
    code: str | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso_z(offset_minutes: int = 0) -> str:
    t = _dt.datetime.now(_dt.UTC) + _dt.timedelta(minutes=offset_minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _indexed(params: dict[str, str], prefix: str) -> list[Any]:
    """RPC lists: ``Prefix.N`` → values, ``Prefix.N.Field`` → dicts, in index order."""
    items: dict[int, Any] = {}
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)(?:\.(.+))?$")
    for key, value in params.items():
        m = pat.match(key)
        if not m:
            continue
        idx = int(m.group(1))
        if m.group(2) is None:
            items[idx] = value
        else:
            entry = items.setdefault(idx, {})
            if isinstance(entry, dict):
                entry[m.group(2)] = value
    return [items[i] for i in sorted(items)]


# --------------------------------------------------------------------------- templates


class _TemplateLoader(yaml.SafeLoader):
    """YAML loader that also understands the short intrinsic tags (``!Ref``, ``!GetAtt``…)."""


def _short_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_TemplateLoader.add_multi_constructor("!", _short_tag)


def parse_template(body: str | None) -> dict[str, Any]:
    """Parse a ROS template (YAML or JSON); raise ``StackValidationFailed`` when invalid."""

    def invalid(msg: str) -> ApiError:
        return ApiError(400, "StackValidationFailed", msg)

    if not body or not body.strip():
        raise invalid("The template body is empty.")
    try:
        tpl = yaml.load(body, Loader=_TemplateLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise invalid(f"Template format error: {exc}") from None
    if not isinstance(tpl, dict):
        raise invalid("The template is not a mapping.")
    version = tpl.get("ROSTemplateFormatVersion")
    if str(version) != "2015-09-01":
        raise invalid(f"Unknown or missing ROSTemplateFormatVersion: {version!r}.")
    resources = tpl.get("Resources", {})
    if not isinstance(resources, dict):
        raise invalid("The Resources section must be a mapping.")
    for lid, res in resources.items():
        if not isinstance(res, dict) or not isinstance(res.get("Type"), str):
            raise invalid(f"Resource {lid} has no Type.")
    for section in ("Parameters", "Outputs"):
        if not isinstance(tpl.get(section, {}) or {}, dict):
            raise invalid(f"The {section} section must be a mapping.")
    return tpl


def _given_parameters(params: dict) -> dict:
    """``Parameters.N.ParameterKey/Value`` of an RPC call, as a dict."""
    return {
        p.get("ParameterKey"): p.get("ParameterValue", "")
        for p in _indexed(params, "Parameters")
        if isinstance(p, dict)
    }


def _resolve_parameters(tpl: dict, given: dict[str, str]) -> dict[str, Any]:
    declared = tpl.get("Parameters") or {}
    for key in given:
        if key not in declared:
            raise ApiError(
                400, "UnknownUserParameter", f"The Parameter ({key}) was not defined in template."
            )
    values: dict[str, Any] = {}
    for key, spec in declared.items():
        spec = spec or {}
        if key in given:
            values[key] = given[key]
        elif "Default" in spec:
            values[key] = spec["Default"]
        else:
            raise ApiError(400, "UserParameterMissing", f"The Parameter ({key}) was not provided.")
    return values


# --------------------------------------------------------------------------- state


@dataclass
class _Resource:
    logical_id: str
    type: str
    properties: dict
    physical_id: str
    status: str = "CREATE_IN_PROGRESS"
    status_reason: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stack:
    stack_id: str
    name: str
    region_id: str
    template: dict
    parameters: dict[str, Any]
    given_parameters: dict[str, str]
    tags: list[dict[str, str]]
    disable_rollback: bool
    timeout_minutes: int
    resources: dict[str, _Resource]
    status: str = "CREATE_IN_PROGRESS"
    status_reason: str = "Stack CREATE started"
    create_time: str = field(default_factory=_now)
    update_time: str | None = None
    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    delete_polls: int = 0
    delete_started: float = 0.0
    outputs: list[dict[str, Any]] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    operation_info: dict[str, Any] | None = None
    gone: bool = False


@dataclass
class _Invocation:
    invoke_id: str
    command_id: str
    content: str
    instance_ids: list[str]
    name: str
    type: str
    start_time: str
    polls: int = 0
    results: dict[str, tuple[int, str]] | None = None
    finished_time: str | None = None
    keep_command: bool = False
    timeout_s: float = 60.0
    started: float = 0.0
    thread: threading.Thread | None = None
    pending: dict[str, tuple[int, str]] = field(default_factory=dict)


class CloudEmulator(DisksMixin, ServedEmulator):
    """In-process Alibaba Cloud emulator (ROS, ECS Cloud Assistant/pricing/disks/snapshots, CS)."""

    ApiError = ApiError  # for the mixins

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region_id: str = "cn-hangzhou",
        create_polls: int | None = 2,
        create_seconds: float | None = None,
        delete_polls: int = 1,
        invocation_polls: int = 1,
        instance_address: str | Callable[[str, int], str] = "127.0.0.1",
        public_address: str | Callable[[str, int], str] | None = None,
        instance_prices: dict[str, float] | None = None,
        default_hourly_price: float = 10.0,
        command_handler: Callable[[str, str], Any] | None = None,
        on_instances_released: Callable[[list[str]], None] | None = None,
        require_known_instances: bool = False,
        regions: dict[str, dict[str, list[str] | None]] | None = None,
        delete_seconds: float | None = None,
        invocation_seconds: float | Callable[[str], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        kubeconfig: str = DEFAULT_KUBECONFIG,
        seed: int = 0,
    ):
        self.host = host
        self.port = port
        self.region_id = region_id
        self.create_polls = create_polls
        self.create_seconds = create_seconds
        self.delete_polls = delete_polls
        self.invocation_polls = invocation_polls
        self.instance_address = instance_address
        self.public_address = public_address
        self.instance_prices = dict(instance_prices or {})
        self.default_hourly_price = default_hourly_price
        self.command_handler = command_handler
        self.on_instances_released = on_instances_released
        self.require_known_instances = require_known_instances
        self.regions = regions if regions is not None else dict(DEFAULT_REGIONS)
        self.delete_seconds = delete_seconds
        self.invocation_seconds = invocation_seconds
        self.clock = clock
        self.kubeconfig = kubeconfig
        self.faults = Faults()
        self.seed = seed
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self.stacks: dict[str, _Stack] = {}
        self.client_tokens: dict = {}
        self.invocations: dict[str, _Invocation] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self._disks_init()
        self._next_loopback = 2

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def reset(self) -> None:
        """Forget all state, calls and faults; reseed the RNG."""
        with self.lock:
            self.calls.clear()
            self.stacks.clear()
            self.client_tokens.clear()
            self.invocations.clear()
            self.instances.clear()
            self.clusters.clear()
            self._disks_init()
            self.faults = Faults()
            self.rng = random.Random(self.seed)

    # ------------------------------------------------------------------ test helpers

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def calls_for(self, action: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.action == action]

    def add_cluster(self, cluster_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Register an ACK cluster; ``fields`` override the snake_case detail keys."""
        cid = cluster_id or "c" + uuid.uuid4().hex[:32]
        now = _iso_z()
        detail = {
            "cluster_id": cid,
            "name": fields.pop("name", f"cluster-{cid[:6]}"),
            "state": "running",
            "region_id": self.region_id,
            "zone_id": f"{self.region_id}-h",
            "vpc_id": "vpc-" + uuid.uuid4().hex[:20],
            "vswitch_ids": ["vsw-" + uuid.uuid4().hex[:20]],
            "cluster_type": "ManagedKubernetes",
            "cluster_spec": "ack.pro.small",
            "profile": "Default",
            "current_version": "1.31.1-aliyun.1",
            "size": 2,
            "master_url": json.dumps({"api_server_endpoint": "https://127.0.0.1:6443"}),
            "created": now,
            "updated": now,
            "tags": [],
            "security_group_id": "sg-" + uuid.uuid4().hex[:20],
            "resource_group_id": "rg-" + uuid.uuid4().hex[:12],
            "deletion_protection": False,
            "parameters": {},
            "meta_data": "{}",
        }
        detail.update(fields)
        with self.lock:
            self.clusters[cid] = {"detail": detail, "deleting_polls": None}
        return detail

    def release_instance(self, instance_id: str) -> None:
        """The instance goes away while its stack stays (reclaimed, or deleted by hand in the
        console): its host stops, and Cloud Assistant answers InvalidInstance.NotFound."""
        with self.lock:
            if self.instances.pop(instance_id, None) is None:
                raise KeyError(f"no emulated instance {instance_id}")
        if self.on_instances_released is not None:
            self.on_instances_released([instance_id])

    def stack_by_name(self, name: str) -> _Stack | None:
        with self.lock:
            for stack in self.stacks.values():
                # A deleted stack's name is free again, as on ROS.
                if stack.name == name and not stack.gone and stack.status != "DELETE_COMPLETE":
                    return stack
        return None

    # ------------------------------------------------------------------ dispatch

    def handle(
        self, method: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        """Route one request; returns (status, extra headers, JSON payload)."""
        if path.startswith("/__emulator/"):
            return self._admin(method, path, body)
        action = headers.get("x-acs-action", "")
        version = headers.get("x-acs-version", "")
        params: dict[str, Any] = dict(query)
        ctype = headers.get("content-type", "")
        if body and "x-www-form-urlencoded" in ctype:
            params.update(dict(parse_qsl(body.decode(), keep_blank_values=True)))
        elif body and "json" in ctype:
            with contextlib.suppress(ValueError):
                loaded = json.loads(body)
                if isinstance(loaded, dict):
                    params.update(loaded)
        params.setdefault("Action", action)
        action = action or params.get("Action", "")
        product = {ROS_VERSION: "ros", ECS_VERSION: "ecs", CS_VERSION: "cs"}.get(
            version or params.get("Version", ""), "?"
        )
        call = Call(product, action, method, path, params, _access_key(headers, params))
        request_id = str(uuid.uuid4()).upper()
        try:
            self._inject_faults(call)
            with self.lock:
                self._check_region(product, params)
                payload, status = self._route(product, method, path, action, params)
                lost = self._lose_response(call)
            if lost:
                raise ApiError(
                    503, "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                )
            if isinstance(payload, dict) and product != "cs":
                payload.setdefault("RequestId", request_id)
            call.status = status
            with self.lock:
                self.calls.append(call)
            return status, {}, payload
        except ApiError as err:
            call.status, call.code = err.status, err.code
            with self.lock:
                self.calls.append(call)
            payload = {
                "Code": err.code,
                "Message": err.message,
                "RequestId": request_id,
                "HostId": f"{product}.aliyuncs.com",
                "Recommend": "",
            }
            return err.status, err.headers, payload

    def _inject_faults(self, call: Call) -> None:
        f = self.faults
        if call.access_key_id and call.access_key_id in f.denied_access_keys:
            raise ApiError(
                403,
                "Forbidden.RAM",
                f"User not authorized to operate on the specified resource, or this API "
                f"doesn't support RAM. AccessKeyId: {call.access_key_id}",
            )
        if f.only_actions and call.action not in f.only_actions:
            return
        if f.latency > 0:
            time.sleep(f.latency)
        with self.lock:
            throttle = f.throttle_rate > 0 and self.rng.random() < f.throttle_rate
            error = not throttle and f.error_rate > 0 and self.rng.random() < f.error_rate
            unavailable = self.rng.random() < 0.5 if error else False
        if throttle:
            raise ApiError(
                400,
                f.throttle_code,
                "Request was denied due to user flow control.",
                {"x-acs-retry-after": str(max(1, int(f.retry_after_ms)))},
            )
        if error:
            if unavailable:
                raise ApiError(
                    503,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                )
            raise ApiError(
                500, "InternalError", "The request processing has failed due to some unknown error."
            )

    def _lose_response(self, call: Call) -> bool:
        f = self.faults
        if f.lost_response_rate <= 0 or (f.only_actions and call.action not in f.only_actions):
            return False
        return self.rng.random() < f.lost_response_rate

    def _check_region(self, product: str, params: dict) -> None:
        region = params.get("RegionId")
        if product in ("ros", "ecs") and region and region not in self.regions:
            raise ApiError(
                404, "InvalidRegionId.NotFound", f"The specified RegionId ({region}) does not exist."
            )

    def _route(self, product: str, method: str, path: str, action: str, params: dict):
        if product == "cs" or not (method == "POST" and path in ("", "/")):
            return self._cs(method, path, params)
        handler = getattr(self, f"_{product}_{action}", None)
        if handler is None:
            raise ApiError(404, "InvalidAction.NotFound", f"Specified api {action} is not found.")
        result = handler(params)
        return (result, 200) if not isinstance(result, tuple) else result

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, dict, Any]:
        if path == "/__emulator/faults":
            if method == "POST":
                try:
                    values = json.loads(body or b"{}")
                    with self.lock:
                        self.faults.update(values)
                except (ValueError, TypeError) as exc:
                    return 400, {}, {"error": str(exc)}
            return 200, {}, self.faults.to_dict()
        if path == "/__emulator/calls":
            with self.lock:
                return (
                    200,
                    {},
                    {
                        "count": len(self.calls),
                        "calls": [dataclasses.asdict(c) for c in self.calls],
                    },
                )
        if path == "/__emulator/reset" and method == "POST":
            self.reset()
            return 200, {}, {"ok": True}
        return 404, {}, {"error": f"unknown admin path {path}"}

    # ------------------------------------------------------------------ ROS

    def _get_stack(self, params: dict) -> _Stack:
        sid = params.get("StackId", "")
        stack = self.stacks.get(sid)
        if stack is None or stack.gone:
            raise ApiError(404, "StackNotFound", f"The Stack ({sid}) could not be found.")
        return stack

    def _ros_CreateStack(self, params: dict) -> dict:
        token = params.get("ClientToken")
        if token and token in self.client_tokens:
            return {"StackId": self.client_tokens[token]}
        name = params.get("StackName", "")
        if not name:
            raise ApiError(400, "MissingParameter", "StackName is mandatory for this action.")
        if self.stack_by_name(name) is not None:
            raise ApiError(409, "StackExists", f"The Stack ({name}) already exists.")
        tpl = parse_template(params.get("TemplateBody"))
        given = _given_parameters(params)
        values = _resolve_parameters(tpl, given)
        stack_id = str(uuid.uuid4())
        resources: dict[str, _Resource] = {}
        for lid, res in (tpl.get("Resources") or {}).items():
            resources[lid] = _Resource(lid, res["Type"], res.get("Properties") or {}, "")
        stack = _Stack(
            stack_id=stack_id,
            name=name,
            region_id=params.get("RegionId", self.region_id),
            template=tpl,
            parameters=values,
            given_parameters=given,
            tags=[
                {"Key": t.get("Key", ""), "Value": t.get("Value", "")}
                for t in _indexed(params, "Tags")
                if isinstance(t, dict)
            ],
            disable_rollback=_truthy(params.get("DisableRollback", "False")),
            timeout_minutes=int(params.get("TimeoutInMinutes") or 60),
            resources=resources,
        )
        stack.started = self.clock()
        self._assign_physical_ids(stack)
        self._event(stack, None, "CREATE_IN_PROGRESS", "Stack CREATE started")
        for res in resources.values():
            self._event(stack, res, "CREATE_IN_PROGRESS", "state changed")
        self.stacks[stack_id] = stack
        if token:
            self.client_tokens[token] = stack_id
        return {"StackId": stack_id}

    def _assign_physical_ids(self, stack: _Stack) -> None:
        prefixes = {
            "ALIYUN::ECS::VPC": "vpc-",
            "ALIYUN::ECS::VSwitch": "vsw-",
            "ALIYUN::ECS::SecurityGroup": "sg-",
            "ALIYUN::ECS::Instance": "i-",
            "ALIYUN::ECS::RunCommand": "t-",
            "ALIYUN::CS::ManagedKubernetesCluster": "c",
        }
        ordinal = 0
        for res in stack.resources.values():
            prefix = prefixes.get(res.type)
            res.physical_id = (prefix + uuid.uuid4().hex[:20]) if prefix else str(uuid.uuid4())
            if res.type in INSTANCE_TYPES:
                amount = 1
                if res.type == "ALIYUN::ECS::InstanceGroup":
                    amount = int(self._resolve(stack, res.properties.get("MaxAmount", 1)) or 1)
                ids, private, public = [], [], []
                zone = self._resolve(stack, res.properties.get("ZoneId")) or f"{stack.region_id}-h"
                for _ in range(amount):
                    iid = "i-" + uuid.uuid4().hex[:20]
                    ids.append(iid)
                    private.append(self._address(self.instance_address, res.logical_id, ordinal))
                    pub_src = self.public_address if self.public_address is not None else None
                    public.append(
                        self._address(pub_src, res.logical_id, ordinal) if pub_src else private[-1]
                    )
                    ordinal += 1
                    self.instances[iid] = {
                        "instance_id": iid, "private_ip": private[-1], "public_ip": public[-1],
                        "zone": zone, "stack_id": stack.stack_id, "logical_id": res.logical_id,
                        "instance_type": str(self._resolve(stack, res.properties.get("InstanceType", ""))),
                        "image_id": str(self._resolve(stack, res.properties.get("ImageId", ""))),
                        "system_disk_gb": int(self._resolve(stack, res.properties.get("SystemDiskSize", 40)) or 40),
                    }
                    self._create_data_disks(iid, self._resolve(stack, res.properties.get("DiskMappings")) or [])
                if res.type == "ALIYUN::ECS::Instance":
                    res.physical_id = ids[0]
                    res.attrs = {
                        "InstanceId": ids[0],
                        "PrivateIp": private[0],
                        "PublicIp": public[0],
                        "ZoneId": zone,
                        "HostName": f"iZ{ids[0][2:]}Z",
                        "PrimaryNetworkInterfaceId": "eni-" + uuid.uuid4().hex[:20],
                    }
                else:
                    res.attrs = {
                        "InstanceIds": ids,
                        "PrivateIps": private,
                        "PublicIps": public,
                        "HostNames": [f"iZ{i[2:]}Z" for i in ids],
                        "ZoneIds": [zone] * amount,
                        "OrderId": "",
                    }
            elif res.type == "ALIYUN::ECS::VPC":
                res.attrs = {"VpcId": res.physical_id}
            elif res.type == "ALIYUN::ECS::VSwitch":
                res.attrs = {"VSwitchId": res.physical_id}
            elif res.type == "ALIYUN::ECS::SecurityGroup":
                res.attrs = {"SecurityGroupId": res.physical_id}
            elif res.type == "ALIYUN::ROS::WaitCondition":
                res.attrs = {"Data": "{}", "ErrorData": "{}", "JoinedErrorData": ""}
            elif res.type == "ALIYUN::CS::ManagedKubernetesCluster":
                res.attrs = {"ClusterId": res.physical_id, "DefaultUserKubeConfig": self.kubeconfig}

    def _address(self, src: str | Callable[[str, int], str], logical_id: str, index: int) -> str:
        if callable(src):
            return src(logical_id, index)
        if src == "auto":
            return self._loopback()
        return src

    def _loopback(self) -> str:
        """A loopback address no live instance holds (all of 127/8 reaches this machine), so
        emulated instances serving on the same port do not collide."""
        used = {i["private_ip"] for i in self.instances.values()}
        for _ in range(253):
            n = self._next_loopback
            self._next_loopback = 2 if n >= 254 else n + 1
            if f"127.0.0.{n}" not in used:
                return f"127.0.0.{n}"
        raise ApiError(400, "QuotaExceeded", "The emulator has no free loopback address.")

    def _release_instances(self, stack: _Stack) -> None:
        for cid in [c for c, e in self.clusters.items() if e["detail"].get("stack_id") == stack.stack_id]:
            del self.clusters[cid]
        gone = [iid for iid, i in self.instances.items() if i["stack_id"] == stack.stack_id]
        for iid in gone:
            del self.instances[iid]
        self._release_disks(gone)
        if gone and self.on_instances_released is not None:
            self.on_instances_released(gone)

    def _resolve(self, stack: _Stack, value: Any) -> Any:
        """Evaluate Ref / Fn::GetAtt / Fn::Sub / Fn::Join / Fn::Select against the stack."""
        if isinstance(value, list):
            return [self._resolve(stack, v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self._resolve(stack, v) for k, v in value.items()}
        ((fn, arg),) = value.items()
        if fn == "Ref":
            return self._ref(stack, arg)
        if fn == "Fn::GetAtt":
            lid, attr = (arg.split(".", 1) if isinstance(arg, str) else arg)[:2]
            return self._getatt(stack, lid, attr)
        if fn == "Fn::Join":
            delim, items = arg
            return str(delim).join(str(x) for x in self._resolve(stack, items))
        if fn == "Fn::Select":
            idx, items = self._resolve(stack, arg)
            return items[int(idx)]
        if fn == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            variables = self._resolve(stack, variables)

            def sub(m: re.Match) -> str:
                name = m.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in variables:
                    return str(variables[name])
                if "." in name:
                    lid, attr = name.split(".", 1)
                    return str(self._getatt(stack, lid, attr))
                return str(self._ref(stack, name))

            return re.sub(r"\$\{([^}]+)\}", sub, text)
        return {fn: self._resolve(stack, arg)}

    def _ref(self, stack: _Stack, name: str) -> Any:
        pseudo = {
            "ALIYUN::StackId": stack.stack_id,
            "ALIYUN::StackName": stack.name,
            "ALIYUN::Region": stack.region_id,
            "ALIYUN::AccountId": "1234567890123456",
            "ALIYUN::NoValue": None,
        }
        if name in pseudo:
            return pseudo[name]
        if name in stack.parameters:
            return stack.parameters[name]
        if name in stack.resources:
            return stack.resources[name].physical_id
        return name

    def _getatt(self, stack: _Stack, lid: str, attr: str) -> Any:
        res = stack.resources.get(lid)
        if res is None:
            return f"{lid}.{attr}"
        if attr in res.attrs:
            return res.attrs[attr]
        return f"{res.physical_id}.{attr}"

    def _event(self, stack: _Stack, res: _Resource | None, status: str, reason: str) -> None:
        stack.events.append(
            {
                "EventId": str(uuid.uuid4()),
                "StackId": stack.stack_id,
                "StackName": stack.name,
                "LogicalResourceId": res.logical_id if res else stack.name,
                "PhysicalResourceId": res.physical_id if res else stack.stack_id,
                "ResourceType": res.type if res else "ALIYUN::ROS::Stack",
                "Status": status,
                "StatusReason": reason,
                "CreateTime": _now(),
            }
        )

    def _advance(self, stack: _Stack) -> None:
        """Move a stack along its state machine; called on each GetStack poll."""
        stack.polls += 1
        if stack.status == "CREATE_IN_PROGRESS":
            stuck = self.faults.stuck_stacks
            if "*" in stuck or stack.name in stuck or stack.stack_id in stuck:
                return
            done = (self.create_polls is not None and stack.polls >= self.create_polls) or (
                self.create_seconds is not None
                and self.clock() - stack.started >= self.create_seconds
            )
            if done:
                self._finish_create(stack)
        elif stack.status == "DELETE_IN_PROGRESS":
            stack.delete_polls += 1
            done = (
                self.clock() - stack.delete_started >= self.delete_seconds
                if self.delete_seconds is not None
                else stack.delete_polls > self.delete_polls
            )
            if done:
                self._release_instances(stack)
                for res in stack.resources.values():
                    res.status = "DELETE_COMPLETE"
                    self._event(stack, res, "DELETE_COMPLETE", "state changed")
                stack.status, stack.status_reason = "DELETE_COMPLETE", "Stack DELETE completed"
                self._event(stack, None, stack.status, stack.status_reason)
        elif stack.status == "DELETE_COMPLETE":
            stack.gone = True

    def _failure_for(self, stack: _Stack, res: _Resource) -> tuple[str, str] | None:
        f = self.faults
        if res.logical_id in f.fail_resources:
            reason = f.fail_resources[res.logical_id] or "Injected failure."
            return "InjectedFailure", reason
        if res.type in INSTANCE_TYPES:
            itype = str(self._resolve(stack, res.properties.get("InstanceType", "")))
            zone = str(self._resolve(stack, res.properties.get("ZoneId", "")) or "")
            if itype in f.out_of_stock_instance_types or (zone and zone in f.out_of_stock_zones):
                return "OperationDenied.NoStock", NO_STOCK_MESSAGE
            for m in self._resolve(stack, res.properties.get("DiskMappings")) or []:
                snap = m.get("SnapshotId")
                if snap and self.snapshots.get(snap, {}).get("Status") != "accomplished":
                    return "InvalidSnapshotId.NotFound", f"The specified snapshot {snap} does not exist."
        return None

    def _finish_create(self, stack: _Stack) -> None:
        failed: tuple[_Resource, str, str] | None = None
        for res in stack.resources.values():
            fail = self._failure_for(stack, res)
            if fail is not None:
                code, msg = fail
                res.status = "CREATE_FAILED"
                res.status_reason = (
                    f"ResponseException: resources.{res.logical_id}: {msg} Code: {code}"
                )
                self._event(stack, res, "CREATE_FAILED", res.status_reason)
                failed = (res, code, msg)
                break
            res.status = "CREATE_COMPLETE"
            res.status_reason = "state changed"
            self._event(stack, res, "CREATE_COMPLETE", "state changed")
        stack.update_time = _now()
        if failed is None:
            stack.status, stack.status_reason = (
                "CREATE_COMPLETE",
                "Stack CREATE completed successfully",
            )
            stack.outputs = self._outputs(stack)
            self._event(stack, None, stack.status, stack.status_reason)
            for res in stack.resources.values():  # a created cluster is one CS knows
                if res.type == "ALIYUN::CS::ManagedKubernetesCluster":
                    self.add_cluster(res.physical_id, name=str(self._resolve(
                        stack, res.properties.get("Name", stack.name))), stack_id=stack.stack_id)
            return
        res, code, msg = failed
        for other in stack.resources.values():
            if other.status == "CREATE_IN_PROGRESS":
                other.status = "INIT_COMPLETE"
        stack.status = "CREATE_FAILED"
        stack.status_reason = f"Resource CREATE failed: {res.status_reason}"
        stack.operation_info = {
            "Action": "CREATE",
            "Code": code,
            "Message": msg,
            "RequestId": str(uuid.uuid4()).upper(),
            "LogicalResourceId": res.logical_id,
            "ResourceType": res.type,
        }
        self._event(stack, None, "CREATE_FAILED", stack.status_reason)
        if not stack.disable_rollback:
            self._release_instances(stack)
            for other in stack.resources.values():
                if other.status in ("CREATE_COMPLETE", "CREATE_FAILED"):
                    other.status = "DELETE_COMPLETE"
                    self._event(stack, other, "DELETE_COMPLETE", "rollback")
            stack.status = "CREATE_ROLLBACK_COMPLETE"
            self._event(stack, None, stack.status, stack.status_reason)

    def _outputs(self, stack: _Stack) -> list[dict[str, Any]]:
        out = []
        for key, spec in (stack.template.get("Outputs") or {}).items():
            spec = spec or {}
            item = {"OutputKey": key, "OutputValue": self._resolve(stack, spec.get("Value"))}
            if "Description" in spec:
                item["Description"] = spec["Description"]
            out.append(item)
        return out

    def _stack_summary(self, stack: _Stack) -> dict[str, Any]:
        d = {
            "StackId": stack.stack_id,
            "StackName": stack.name,
            "Status": stack.status,
            "StatusReason": stack.status_reason,
            "CreateTime": stack.create_time,
            "RegionId": stack.region_id,
            "DisableRollback": stack.disable_rollback,
            "TimeoutInMinutes": stack.timeout_minutes,
            "Tags": [dict(t) for t in stack.tags],
            "StackType": "ROS",
            "DeletionProtection": "Disabled",
        }
        if stack.update_time:
            d["UpdateTime"] = stack.update_time
        if stack.operation_info:
            d["OperationInfo"] = dict(stack.operation_info)
        return d

    def _ros_GetStack(self, params: dict) -> dict:
        stack = self._get_stack(params)
        self._advance(stack)
        if stack.gone:
            raise ApiError(
                404, "StackNotFound", f"The Stack ({stack.stack_id}) could not be found."
            )
        body = self._stack_summary(stack)
        counts = {s: 0 for s in ("ok", "fail", "prog")}
        for res in stack.resources.values():
            if res.status.endswith("_COMPLETE"):
                counts["ok"] += 1
            elif res.status.endswith("_FAILED"):
                counts["fail"] += 1
            else:
                counts["prog"] += 1
        body.update(
            {
                "Description": stack.template.get("Description", ""),
                "Parameters": [
                    {"ParameterKey": k, "ParameterValue": str(v)}
                    for k, v in stack.parameters.items()
                ]
                + [
                    {"ParameterKey": "ALIYUN::StackId", "ParameterValue": stack.stack_id},
                    {"ParameterKey": "ALIYUN::StackName", "ParameterValue": stack.name},
                    {"ParameterKey": "ALIYUN::Region", "ParameterValue": stack.region_id},
                ],
                "ResourceProgress": {
                    "TotalResourceCount": len(stack.resources),
                    "SuccessResourceCount": counts["ok"],
                    "FailedResourceCount": counts["fail"],
                    "InProgressResourceCount": counts["prog"],
                    "PendingResourceCount": 0,
                },
            }
        )
        if stack.outputs is not None:
            body["Outputs"] = [dict(o) for o in stack.outputs]
        return body

    def _ros_ListStacks(self, params: dict) -> dict:
        statuses = set(_indexed(params, "Status"))
        names = set(_indexed(params, "StackName"))
        ids = set(_indexed(params, "StackIds"))
        if params.get("StackId"):
            ids.add(params["StackId"])
        tags = [t for t in _indexed(params, "Tag") if isinstance(t, dict)]
        out = []
        for stack in self.stacks.values():
            if stack.gone or (statuses and stack.status not in statuses):
                continue
            if names and stack.name not in names or ids and stack.stack_id not in ids:
                continue
            have = {(t["Key"], t["Value"]) for t in stack.tags}
            keys = {t["Key"] for t in stack.tags}
            if not all(
                ((t.get("Key"), t.get("Value")) in have) if "Value" in t else t.get("Key") in keys
                for t in tags
            ):
                continue
            out.append(self._stack_summary(stack))
        page = int(params.get("PageNumber") or 1)
        size = int(params.get("PageSize") or 10)
        return {
            "Stacks": out[(page - 1) * size : page * size],
            "TotalCount": len(out),
            "PageNumber": page,
            "PageSize": size,
        }

    def _ros_DeleteStack(self, params: dict) -> dict:
        stack = self._get_stack(params)
        if stack.status not in ("DELETE_IN_PROGRESS", "DELETE_COMPLETE"):
            stack.status, stack.status_reason = "DELETE_IN_PROGRESS", "Stack DELETE started"
            stack.delete_polls = 0
            stack.delete_started = self.clock()
            stack.outputs = None
            stack.update_time = _now()
            self._event(stack, None, stack.status, stack.status_reason)
        return {}

    def _ros_ListStackResources(self, params: dict) -> dict:
        stack = self._get_stack(params)
        return {
            "Resources": [
                {
                    "LogicalResourceId": r.logical_id,
                    "PhysicalResourceId": r.physical_id,
                    "ResourceType": r.type,
                    "Status": r.status,
                    "StatusReason": r.status_reason,
                    "StackId": stack.stack_id,
                    "StackName": stack.name,
                    "CreateTime": stack.create_time,
                    "UpdateTime": stack.update_time or stack.create_time,
                }
                for r in stack.resources.values()
            ]
        }

    def _ros_ListStackEvents(self, params: dict) -> dict:
        stack = self._get_stack(params)
        statuses = set(_indexed(params, "Status"))
        rtypes = set(_indexed(params, "ResourceType"))
        lids = set(_indexed(params, "LogicalResourceId"))
        events = [
            e
            for e in reversed(stack.events)  # newest first, like ROS
            if (not statuses or e["Status"] in statuses)
            and (not rtypes or e["ResourceType"] in rtypes)
            and (not lids or e["LogicalResourceId"] in lids)
        ]
        page = int(params.get("PageNumber") or 1)
        size = int(params.get("PageSize") or 10)
        return {
            "Events": [dict(e) for e in events[(page - 1) * size : page * size]],
            "TotalCount": len(events),
            "PageNumber": page,
            "PageSize": size,
        }

    def _ros_ValidateTemplate(self, params: dict) -> dict:
        tpl = parse_template(params.get("TemplateBody"))
        return {
            "Description": tpl.get("Description", ""),
            "Parameters": [
                {"ParameterKey": k, **{kk: vv for kk, vv in (v or {}).items()}}
                for k, v in (tpl.get("Parameters") or {}).items()
            ],
            "Outputs": [
                {"OutputKey": k, "Description": (v or {}).get("Description", "")}
                for k, v in (tpl.get("Outputs") or {}).items()
            ],
            "Resources": [
                {"ResourceType": r["Type"], "LogicalResourceIdPattern": lid, "ResourcePath": lid}
                for lid, r in (tpl.get("Resources") or {}).items()
            ],
            "ResourceTypes": {
                "Resources": sorted({r["Type"] for r in (tpl.get("Resources") or {}).values()}),
                "DataSources": [],
            },
        }

    def hourly_price(self, instance_type: str) -> float:
        return float(self.instance_prices.get(instance_type, self.default_hourly_price))

    def _ros_GetTemplateEstimateCost(self, params: dict) -> dict:
        tpl = parse_template(params.get("TemplateBody"))
        given = _given_parameters(params)
        values = _resolve_parameters(tpl, given)
        stack = _Stack("", "estimate", self.region_id, tpl, values, given, [], False, 60, {})
        out: dict[str, Any] = {}
        for lid, res in (tpl.get("Resources") or {}).items():
            props = res.get("Properties") or {}
            if res["Type"] == "ALIYUN::CS::ManagedKubernetesCluster":
                # The managed control plane's fee plus each node pool's first instance type.
                amount = ACK_PRO_HOURLY + sum(
                    self.hourly_price(str((pool.get("ScalingGroup") or {}).get("InstanceTypes", [""])[0]))
                    * int(pool.get("Count") or 0) for pool in props.get("NodePools") or [])
                amount, qty = round(amount, 4), 1
            elif res["Type"] in INSTANCE_TYPES:
                itype = str(self._resolve(stack, props.get("InstanceType", "")))
                qty = 1
                if res["Type"] == "ALIYUN::ECS::InstanceGroup":
                    qty = int(self._resolve(stack, props.get("MaxAmount", 1)) or 1)
                amount = round(self.hourly_price(itype) * qty, 4)
            else:
                continue
            out[lid] = {
                "Type": res["Type"],
                "AliasType": res["Type"],
                "Success": True,
                "Result": {
                    "InquiryType": "Buy",
                    "Order": {
                        "Currency": "CNY",
                        "OriginalAmount": amount,
                        "DiscountAmount": 0.0,
                        "TradeAmount": amount,
                        "TaxAmount": 0.0,
                        "TotalCostAmount": amount,
                        "StandPrice": amount,
                        "RuleIds": [],
                    },
                    "OrderDetails": [
                        {
                            "ModuleCode": "InstanceType",
                            "ModuleName": "Instance Type",
                            "Currency": "CNY",
                            "OriginalAmount": amount,
                            "DiscountAmount": 0.0,
                            "TradeAmount": amount,
                        }
                    ],
                    "OrderSupplement": {
                        "ChargeType": str(
                            self._resolve(stack, props.get("InstanceChargeType", "PostPaid"))
                        ),
                        "Period": 1,
                        "PeriodUnit": "Hour",
                        "PriceType": "Hour",
                        "PriceUnit": "Hour",
                        "Quantity": qty,
                        "AutoRenew": False,
                    },
                },
            }
        return {"Resources": out}

    # ------------------------------------------------------------------ ECS

    def _ecs_RunCommand(self, params: dict) -> dict:
        token = params.get("ClientToken")
        if token and ("ecs", token) in self.client_tokens:
            inv = self.invocations[self.client_tokens[("ecs", token)]]
            return {"CommandId": inv.command_id, "InvokeId": inv.invoke_id}
        instance_ids = [str(i) for i in _indexed(params, "InstanceId")]
        if not instance_ids:
            raise ApiError(400, "MissingParameter.InstanceIds", "InstanceId is required.")
        raw = params.get("CommandContent")
        if raw is None:
            raise ApiError(400, "MissingParameter.CommandContent", "CommandContent is required.")
        content = raw
        if str(params.get("ContentEncoding", "PlainText")).lower() == "base64":
            try:
                content = base64.b64decode(raw, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ApiError(
                    400, "InvalidCommandContent.Malformed", "CommandContent is not Base64."
                ) from None
        if self.require_known_instances:
            unknown = [i for i in instance_ids if i not in self.instances]
            if unknown:
                raise ApiError(
                    404, "InvalidInstance.NotFound",
                    f"The specified instance does not exist: {', '.join(unknown)}.",
                )
        inv = _Invocation(
            invoke_id="t-" + uuid.uuid4().hex[:20],
            command_id="c-" + uuid.uuid4().hex[:20],
            content=content,
            instance_ids=instance_ids,
            name=params.get("Name", ""),
            type=params.get("Type", "RunShellScript"),
            start_time=_iso_z(),
            keep_command=_truthy(params.get("KeepCommand", "False")),
            timeout_s=float(params.get("Timeout") or 60),
            started=self.clock(),
        )
        self.invocations[inv.invoke_id] = inv
        if token:
            self.client_tokens[("ecs", token)] = inv.invoke_id
        # The agent runs the script while the caller polls: a long staging reports Running.
        inv.thread = threading.Thread(
            target=self._run_all, args=(inv,), name=f"emulated-{inv.invoke_id}", daemon=True
        )
        inv.thread.start()
        return {"CommandId": inv.command_id, "InvokeId": inv.invoke_id}

    def _run_all(self, inv: _Invocation) -> None:
        for iid in inv.instance_ids:
            try:
                outcome = self._run_handler(inv, iid)
            except Exception as exc:  # noqa: BLE001 - a broken handler is a failed command
                outcome = (1, f"emulated host error: {exc!r}")
            with self.lock:
                inv.pending[iid] = outcome

    def _invocation_done(self, inv: _Invocation) -> bool:
        if inv.polls <= self.invocation_polls:
            return False
        took = self.invocation_seconds
        if callable(took):
            took = took(inv.content)  # per script: staging takes minutes, a status check a second
        if took is not None and self.clock() - inv.started < took:
            return False
        if inv.thread is not None:
            inv.thread.join(timeout=0.05)  # an instant handler is done by the next poll
            if inv.thread.is_alive():
                return False
        return True

    def _run_handler(self, inv: _Invocation, instance_id: str) -> tuple[int, str]:
        if self.command_handler is None:
            return 0, ""
        result = self.command_handler(inv.content, instance_id)
        if result is None:
            return 0, ""
        if isinstance(result, int):
            return result, ""
        if isinstance(result, str):
            return 0, result
        code, output = result
        return int(code), str(output)

    def _ecs_DescribeInvocationResults(self, params: dict) -> dict:
        inv = self.invocations.get(params.get("InvokeId", ""))
        if inv is None:
            raise ApiError(
                404, "InvalidInvokeId.NotFound", "The specified InvokeId does not exist."
            )
        inv.polls += 1
        if inv.results is None and self._invocation_done(inv):
            inv.results = {iid: inv.pending.get(iid, (0, "")) for iid in inv.instance_ids}
            inv.finished_time = _iso_z()
        timed_out = inv.results is None and self.clock() - inv.started > inv.timeout_s
        b64 = str(params.get("ContentEncoding", "Base64")).lower() != "plaintext"
        wanted = params.get("InstanceId")
        rows = []
        for iid in inv.instance_ids:
            if wanted and iid != wanted:
                continue
            row = {
                "InstanceId": iid,
                "InvokeId": inv.invoke_id,
                "CommandId": inv.command_id,
                "StartTime": inv.start_time,
                "Repeats": 1,
                "Dropped": 0,
                "ErrorCode": "",
                "ErrorInfo": "",
                "Username": "root",
            }
            if timed_out:
                row.update(
                    InvocationStatus="Timeout", InvokeRecordStatus="Finished", ExitCode=-1,
                    ErrorCode="InvocationTimeout", Output="",
                    ErrorInfo=f"the command did not finish within {inv.timeout_s:g} s",
                )
            elif inv.results is None:
                row.update(InvocationStatus="Running", InvokeRecordStatus="Running", Output="")
            else:
                code, output = inv.results[iid]
                row.update(
                    InvocationStatus="Success" if code == 0 else "Failed",
                    InvokeRecordStatus="Finished",
                    ExitCode=code,
                    FinishedTime=inv.finished_time,
                    Output=base64.b64encode(output.encode()).decode() if b64 else output,
                )
                if code != 0:
                    row["ErrorCode"] = "NonZeroExitCode"
                    row["ErrorInfo"] = f"the command exited with code {code}"
            rows.append(row)
        return {
            "Invocation": {
                "InvocationResults": {"InvocationResult": rows},
                "TotalCount": len(rows),
                "PageNumber": 1,
                "PageSize": max(len(rows), 10),
                "NextToken": "",
            }
        }

    def _ecs_DescribeAvailableResource(self, params: dict) -> dict:
        """Which instance types each zone offers (PostPaid); not a stock promise."""
        region = params.get("RegionId", self.region_id)
        wanted_zone = params.get("ZoneId")
        wanted_type = params.get("InstanceType")
        zones = []
        for zone, offered in self.regions.get(region, {}).items():
            if wanted_zone and zone != wanted_zone:
                continue
            types = [t for t in (offered if offered is not None else KNOWN_INSTANCE_TYPES) if not wanted_type or t == wanted_type]
            supported = [
                {"Value": t, "Status": "Available", "StatusCategory": "WithStock"} for t in types
            ]
            if not supported:
                continue
            zones.append({
                "ZoneId": zone, "RegionId": region, "Status": "Available",
                "StatusCategory": "WithStock",
                "AvailableResources": {"AvailableResource": [{
                    "Type": "InstanceType", "SupportedResources": {"SupportedResource": supported},
                }]},
            })
        return {"AvailableZones": {"AvailableZone": zones}}

    def _ecs_DescribePrice(self, params: dict) -> dict:
        itype = params.get("InstanceType", "")
        price = self.hourly_price(itype)
        return {
            "PriceInfo": {
                "Price": {
                    "OriginalPrice": price,
                    "DiscountPrice": 0.0,
                    "TradePrice": price,
                    "Currency": "CNY",
                },
                "Rules": {"Rule": []},
            }
        }

    # ------------------------------------------------------------------ CS

    def _cluster(self, cid: str) -> dict[str, Any]:
        entry = self.clusters.get(cid)
        if entry is None:
            raise ApiError(404, "ErrorClusterNotFound", f"cluster {cid} not found")
        if entry["deleting_polls"] is not None:
            entry["deleting_polls"] += 1
            if entry["deleting_polls"] > self.delete_polls:
                del self.clusters[cid]
                raise ApiError(404, "ErrorClusterNotFound", f"cluster {cid} not found")
        return entry

    def _cs(self, method: str, path: str, params: dict) -> tuple[Any, int]:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and len(parts) == 2 and parts[0] == "clusters":
            return dict(self._cluster(parts[1])["detail"]), 200
        if method == "GET" and len(parts) == 3 and parts[0] == "k8s" and parts[2] == "user_config":
            self._cluster(parts[1])
            minutes = int(params.get("TemporaryDurationMinutes") or 4320)
            return {"config": self.kubeconfig, "expiration": _iso_z(minutes)}, 200
        if method == "DELETE" and len(parts) == 2 and parts[0] == "clusters":
            entry = self._cluster(parts[1])
            entry["detail"]["state"] = "deleting"
            if entry["deleting_polls"] is None:
                entry["deleting_polls"] = 0
            return {
                "cluster_id": parts[1],
                "request_id": str(uuid.uuid4()).upper(),
                "task_id": "T-" + uuid.uuid4().hex[:24],
            }, 202
        if method == "GET" and parts == ["api", "v1", "clusters"]:
            rows = [dict(e["detail"]) for e in self.clusters.values()]
            for key in (
                "name",
                "cluster_type",
                "cluster_spec",
                "profile",
                "region_id",
                "cluster_id",
            ):
                if params.get(key):
                    rows = [r for r in rows if str(r.get(key)) == params[key]]
            page = int(params.get("page_number") or 1)
            size = int(params.get("page_size") or 10)
            return {
                "clusters": rows[(page - 1) * size : page * size],
                "page_info": {"page_number": page, "page_size": size, "total_count": len(rows)},
            }, 200
        raise ApiError(404, "InvalidAction.NotFound", f"{method} {path} is not supported.")


def _access_key(headers: dict[str, str], params: dict[str, Any]) -> str | None:
    if headers.get("x-acs-accesskey-id"):
        return headers["x-acs-accesskey-id"]
    auth = headers.get("authorization", "")
    m = re.search(r"Credential=([^,\s]+)", auth)
    if m:
        return m.group(1)
    m = re.match(r"acs\s+([^:]+):", auth)
    if m:
        return m.group(1)
    return params.get("AccessKeyId")


class _Handler(EmulatorHandler):
    emulator: CloudEmulator

    def _serve(self) -> None:
        try:
            status, extra, payload = self.emulator.handle(*self.request_parts())
        except Exception as exc:  # an emulator bug: answer 500 rather than hang the client
            status, extra = 500, {}
            payload = {"Code": "InternalError", "Message": f"emulator: {exc!r}", "RequestId": "x"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(
            "x-acs-request-id",
            str(payload.get("RequestId", "")) if isinstance(payload, dict) else "",
        )
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


CloudEmulator.handler = _Handler  # defined after the emulator it serves
CloudEmulator.thread_name = "cloud-emulator"
