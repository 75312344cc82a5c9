#!/usr/bin/env python3
"""Start ServeNest runs from another system, through a self-hosted Prefect server's REST API.

Needs only httpx (no Prefect, no ServeNest). Reads PREFECT_API_URL (e.g.
http://prefect.internal:4200/api) and PREFECT_API_AUTH_STRING (the server's
PREFECT_SERVER_API_AUTH_STRING, "user:password", sent as HTTP Basic auth).

    # a flow run of a named deployment, with parameters (merged over the deployment's own)
    examples/trigger.py run provision/local-tiny --param keep_on_failure=true --watch
    examples/trigger.py run benchmark/qwen3-8b --param 'overrides={"num_prompts": 100}'

    # an event: every redeploy/<name> of this model starts, at this revision
    examples/trigger.py publish-revision Qwen/QwQ-32B 7f3c9e1

The two calls it makes are the whole protocol:
    GET  /api/deployments/name/{flow}/{deployment}          -> {"id": ...}
    POST /api/deployments/{id}/create_flow_run  {"parameters": {...}}
    POST /api/events  [{"id", "occurred", "event", "resource", "payload", "related"}]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
import time
import uuid

import httpx

REVISION_PUBLISHED = "servenest.model.revision.published"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def client() -> httpx.Client:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        sys.exit("set PREFECT_API_URL to the server's API, e.g. http://127.0.0.1:4200/api")
    headers = {}
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return httpx.Client(base_url=url.rstrip("/") + "/", headers=headers, timeout=30)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code == 401:
        sys.exit("401 from the Prefect API: PREFECT_API_AUTH_STRING is missing or wrong")
    if response.status_code == 404:
        sys.exit(f"404 from the Prefect API: {response.request.url.path} not found")
    if response.status_code >= 400:
        sys.exit(f"{response.status_code} from the Prefect API: {response.text[:500]}")
    return response


def parse_params(pairs: list[str], params_json: str | None) -> dict:
    """--params JSON, then each --param k=v (a JSON value, else a plain string), as Prefect's CLI."""
    out = json.loads(params_json) if params_json else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--param {pair!r} must look like name=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(api: httpx.Client, name: str, parameters: dict, watch: bool, timeout_s: float) -> int:
    flow, sep, deployment = name.partition("/")
    if not sep:
        sys.exit(f"{name!r} must be FLOW/DEPLOYMENT, e.g. provision/local-tiny")
    dep = _check(api.get(f"deployments/name/{flow}/{deployment}")).json()
    created = _check(api.post(f"deployments/{dep['id']}/create_flow_run",
                              json={"parameters": parameters})).json()
    print(json.dumps({"flow_run_id": created["id"], "name": created["name"]}))
    if not watch:
        return 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _check(api.get(f"flow_runs/{created['id']}")).json()["state"] or {}
        if state.get("type") in TERMINAL:
            print(json.dumps({"state": state["type"], "message": state.get("message")}))
            return 0 if state["type"] == "COMPLETED" else 1
        time.sleep(2)
    print(json.dumps({"state": "TIMEOUT"}))
    return 2


def publish_revision(api: httpx.Client, model: str, revision: str, source: str) -> int:
    event = {
        "id": str(uuid.uuid4()), "occurred": dt.datetime.now(dt.UTC).isoformat(),
        "event": REVISION_PUBLISHED,
        "resource": {"prefect.resource.id": f"servenest.model.{model}", "servenest.model.id": model},
        "payload": {"revision": revision, "source": source}, "related": [],
    }
    _check(api.post("events", json=[event]))
    print(json.dumps({"event_id": event["id"], "event": REVISION_PUBLISHED, "model": model}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="create a flow run of FLOW/DEPLOYMENT")
    r.add_argument("deployment")
    r.add_argument("--param", action="append", default=[], help="name=value (value parsed as JSON if it can be)")
    r.add_argument("--params", help="all parameters as one JSON object")
    r.add_argument("--watch", action="store_true", help="wait for the run to end; exit 1 unless Completed")
    r.add_argument("--timeout", type=float, default=3600)
    p = sub.add_parser("publish-revision", help="emit servenest.model.revision.published")
    p.add_argument("model")
    p.add_argument("revision")
    p.add_argument("--source", default="examples/trigger.py")
    args = parser.parse_args(argv)
    with client() as api:
        if args.command == "run":
            return run(api, args.deployment, parse_params(args.param, args.params), args.watch, args.timeout)
        return publish_revision(api, args.model, args.revision, args.source)


if __name__ == "__main__":
    sys.exit(main())
