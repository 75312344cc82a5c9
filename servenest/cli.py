"""`servenest`: what people do by hand. Deployments still run through Prefect's own CLI
(`prefect deployment run provision/<name>`); this wraps the same flows for a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from servenest.errors import ServeNestError
from servenest.paths import servenest_executable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "deployments" / "local-tiny.yaml"
# `servenest bench --strict`: the run completed but is invalid (the client fell behind).
INVALID_RUN_EXIT = 3


@contextmanager
def prefect_api(quiet: bool = False):
    """Run the body against a Prefect API (configured, or a local server started here)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from servenest.prefect_api import ensure_api

    url, startup_s = ensure_api()
    if startup_s and not quiet:
        print(f"started a local Prefect server in {startup_s:.1f} s: {url.removesuffix('/api')}")
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url, startup_s


def ensure_key(secret_name: str, *, quiet: bool = False) -> bool:
    """Create a random API key in a Secret block if it is missing; True if created."""
    from servenest.register import ensure_key as create_if_missing

    created = create_if_missing(secret_name)
    if created and not quiet:
        print(f"created a random API key in Secret block {secret_name!r}")
    return created


# -- commands -------------------------------------------------------------------------
def cmd_validate(args) -> int:
    from servenest.fit import check_spec_fits
    from servenest.spec import load_spec_file

    for path in args.specs:
        spec = load_spec_file(path)
        for report in check_spec_fits(spec):
            print(f"{path}: ok: {report.summary()}")
    return 0


def cmd_plan(args) -> int:
    from servenest.plan import render_plan
    from servenest.spec import load_spec_file

    plan = render_plan(load_spec_file(args.spec))
    if args.format == "json":
        print(json.dumps(plan, indent=2))
    else:
        for section, body in plan.items():
            print(f"== {section}")
            if section == "kubernetes":  # as kubectl would take them
                from servenest.k8s.manifests import to_yaml

                print(to_yaml(body))
            else:
                print(body if isinstance(body, str) else json.dumps(body, indent=2))
    return 0


def cmd_catalog(args) -> int:
    from servenest.catalog import MODELS

    print(f"{'model':45} {'params':>8} {'weights':>9} {'context':>8} {'min GPU mem':>11}")
    for m in MODELS.values():
        mem = f"{m.min_gpu_memory_gib} GiB" if m.min_gpu_memory_gib else "-"
        print(f"{m.id:45} {m.params_b:>7g}B {m.weight_gb:>7.1f}GB {m.context_length:>8} {mem:>11}")
    return 0


def cmd_deployments(args) -> int:
    from servenest.prefect_yaml import render

    text = render(REPO_ROOT / "deployments")
    target = REPO_ROOT / "prefect.yaml"
    if args.write:
        target.write_text(text)
        print(f"wrote {target}")
    elif args.check:
        if not target.exists() or target.read_text() != text:
            raise ServeNestError("prefect.yaml is stale; run `servenest deployments --write`")
        print("prefect.yaml matches deployments/")
    else:
        print(text)
    return 0


def cmd_up(args) -> int:
    from flows.provision import provision
    from servenest.spec import load_spec_file

    spec = load_spec_file(args.spec)
    if args.emulate:
        return rehearse(spec, args)
    with prefect_api():
        if args.create_key:
            ensure_key(spec.access.api_key_secret)
        result = provision(spec, keep_on_failure=args.keep_on_failure, load_check=args.load_check)
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))
    return 0


def rehearse(spec, args) -> int:
    """Provision, prove and tear down a cloud spec against the local emulators (no account)."""
    from flows.provision import provision
    from flows.teardown import teardown

    if spec.topology == "local":
        raise ServeNestError("--emulate rehearses the cloud topologies; a local spec runs for real already")
    with _emulation(spec, args) as summary, prefect_api():
        ensure_key(spec.access.api_key_secret)
        try:
            result = provision(spec, keep_on_failure=args.keep_on_failure, load_check=args.load_check)
            print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))
            if args.hold:
                print(f"rehearsal of {spec.name} is serving at {result['base_url']}/v1 "
                      f"(key: `servenest key {spec.name}`); Ctrl-C tears it down")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
        finally:
            teardown(spec.name)
        print(json.dumps({"rehearsal": spec.name, **summary()}, indent=2))
    return 0


@contextlib.contextmanager
def _emulation(spec, args):
    """The emulated cloud for the spec's topology; yields what to report afterwards."""
    from servenest import paths

    if spec.topology == "ack":
        from servenest.rehearsal.ack import emulated_ack, objects_left

        # Pods run the no-op OpenAI server: a CPU engine cannot stand in for GPU pods' memory.
        print("ack rehearsal: CS and Kubernetes APIs emulated; serving pods run the no-op server")
        with emulated_ack(paths.home() / "emulator" / "ack", cluster_id=spec.cloud.cluster_id) as (
                cloud, _, kube, _):
            yield lambda: {"cloud_api_calls": len(cloud.calls), "kubernetes_api_calls": len(kube.calls),
                           "error_answers": sum(1 for c in [*cloud.calls, *kube.calls] if c.status >= 400),
                           "objects_left": objects_left(kube)}
        return
    from servenest.rehearsal.ecs import emulated_cloud

    with emulated_cloud(args.emulate_engine) as emu:
        yield lambda: {"cloud_api_calls": len(emu.calls),
                       "error_answers": sum(1 for c in emu.calls if c.status >= 400),
                       "stacks_left": [st.name for st in emu.stacks.values() if st.status != "DELETE_COMPLETE"]}


def cmd_down(args) -> int:
    from flows.teardown import teardown

    with prefect_api():
        result = teardown(args.name)
    print(json.dumps(result, indent=2))
    return 0


def cmd_gate(args) -> int:
    from flows.health_gate import health_gate

    with prefect_api():
        result = health_gate(args.name, deadline_s=args.deadline)
    for stage in result["stages"]:
        print(f"{stage['name']:32} {stage['seconds']:7.2f} s  {stage['detail']}")
    return 0


def cmd_status(args) -> int:
    from servenest.status import live_deployments

    with prefect_api(quiet=True):
        rows = live_deployments()
    if not rows:
        print("no registered deployments")
        return 0
    columns = ("deployment", "instance", "topology", "engine", "model", "base_url", "age")
    header = {c: c.upper().replace("_", " ") for c in columns}
    widths = {c: max(len(r[c]) for r in [header, *rows]) for c in columns}

    def line(r: dict) -> str:
        return "  ".join(r[c].ljust(widths[c]) for c in columns).rstrip()

    print(line(header))
    for r in rows:
        print(line(r))
        # Money and verdicts are long and often "-": one indented line under the row.
        cost = "-" if r["hourly_cost"] == "-" else f"{r['hourly_cost']}, {r['cost_so_far']} so far"
        print(f"    cost {cost} | last gate {r['last_gate']} | last benchmark {r['last_benchmark']}")
    return 0


def cmd_key(args) -> int:
    from tasks.registry import registered
    from tasks.secrets import read_api_key

    with prefect_api(quiet=True):
        if args.name == "create":
            if not args.secret:
                raise ServeNestError("usage: servenest key create SECRET_BLOCK_NAME")
            if not ensure_key(args.secret, quiet=True):
                print(f"Secret block {args.secret!r} already exists; left unchanged", file=sys.stderr)
            return 0
        block, _, _ = registered(args.name)
        print(read_api_key(block.api_key_secret).get_secret_value())
    return 0


def _goodput(text: list[str] | None) -> dict[str, float]:
    out = {}
    for item in text or []:
        key, _, value = item.partition(":")
        try:
            out[key] = float(value)
        except ValueError:
            raise ServeNestError(f"--goodput takes KEY:MS pairs (ttft:500 tpot:50), not {item!r}") from None
    return out


def cmd_bench(args) -> int:
    """`vllm bench serve`'s flags and output, against any OpenAI-compatible endpoint."""
    import os
    from contextlib import nullcontext

    from servenest.bench.run import BenchSettings, run_benchmark, save_result

    base_url = args.base_url or f"http://{args.host}:{args.port}"
    model, served, tokenizer, key = args.model, args.served_model_name, args.tokenizer, args.api_key
    ctx = prefect_api(quiet=True) if args.deployment else nullcontext()
    with ctx:
        if args.deployment:
            from tasks.registry import registered
            from tasks.secrets import read_api_key

            block, spec, state = registered(args.deployment)
            base_url = args.base_url or block.base_url
            model = model or spec.model
            served = served or spec.served_model_name
            tokenizer = tokenizer or spec.benchmark.tokenizer or state.weights.get("dir")
            key = key or read_api_key(block.api_key_secret).get_secret_value()
    key = key or os.environ.get("OPENAI_API_KEY")
    if not model:
        raise ServeNestError("--model is required (or --deployment NAME)")
    settings = BenchSettings(
        base_url=base_url.rstrip("/"), model=model, endpoint=args.endpoint, backend=args.backend,
        served_model_name=served, tokenizer=tokenizer, dataset_name=args.dataset_name,
        dataset_path=args.dataset_path, num_prompts=args.num_prompts,
        request_rate=args.request_rate, burstiness=args.burstiness,
        max_concurrency=args.max_concurrency, seed=args.seed,
        sharegpt_output_len=args.sharegpt_output_len, random_input_len=args.random_input_len,
        random_output_len=args.random_output_len, random_range_ratio=args.random_range_ratio,
        ignore_eos=args.ignore_eos, temperature=args.temperature, goodput=_goodput(args.goodput),
        metric_percentiles=[float(p) for p in args.metric_percentiles.split(",")],
        percentile_metrics=args.percentile_metrics.split(","), num_warmups=args.num_warmups,
        label=args.label, save_detailed=args.save_detailed,
        max_send_lag_ms=args.max_send_lag_ms, api_key=key,
    )
    outcome = run_benchmark(settings)
    # The figures are always printed and saved; an invalid run is flagged, and fails the
    # command only with --strict (what a gate wants).
    print(outcome.summary)
    print(f"client CPU per request: {outcome.client_cpu_per_request_ms:.3f} ms; "
          f"send lag p99: {outcome.send_lag_p99_ms:.2f} ms; "
          + ("valid" if outcome.valid else "INVALID: " + "; ".join(outcome.invalid_reasons)))
    if args.save_result:
        print(f"saved {save_result(outcome, args.result_dir, args.result_filename)}")
    if not outcome.valid:
        print("WARNING: this run is INVALID (servenest.valid: false): its figures measure the "
              "client or the machine as much as the server. "
              + ("Exit status 3 (--strict)." if args.strict else
                 "Exit status 0; pass --strict to make an invalid run fail."),
              file=sys.stderr)
        if args.strict:
            return INVALID_RUN_EXIT
    return 0


def cmd_demo(args) -> int:
    """The main job: the local pipeline end to end on the real engine, then the Prefect
    server made ready to run every deployment from its UI (servenest.register)."""
    from flows.provision import provision
    from flows.teardown import teardown
    from servenest.connection import curl_command, key_command
    from servenest.register import register
    from servenest.spec import load_spec_file

    spec = load_spec_file(args.spec)
    if args.port:
        spec = spec.model_copy(update={"access": spec.access.model_copy(update={"port": args.port})})
    t0 = time.monotonic()
    with prefect_api() as (url, server_s):
        ensure_key(spec.access.api_key_secret)
        result = provision(spec, load_check=True)
        down = None
        if not args.keep:
            down = time.monotonic()
            teardown(spec.name)
            down = time.monotonic() - down
        print("\nregistering blocks, work pool, deployments and automations, and starting a worker ...")
        register_s = time.monotonic()
        registration = register(url, worker=True)
        register_s = time.monotonic() - register_s
    total = time.monotonic() - t0
    summary = demo_summary(result["stages"], total, server_s, down, register_s)
    print("\n".join(registration.lines()))
    print("\n== ServeNest demo: provision -> gate -> load check -> " + ("kept serving" if args.keep else "teardown"))
    for row in result["stages"]:
        print(f"  {row['stage']:16} {row['seconds']:8.2f} s  {row['status']}")
    if down is not None:
        print(f"  {'teardown':16} {down:8.2f} s  ok")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    exe = shlex.quote(servenest_executable())
    prefect = shlex.quote(str(Path(exe).with_name("prefect")))
    ui = url.removesuffix("/api")
    print(f"\nPrefect UI (run history, Deployments, artifacts): {ui}\n"
          f"run a deployment through the worker: PREFECT_API_URL={url} {prefect} deployment run "
          f"provision/{shlex.quote(spec.name)} --watch\n"
          f"stop the worker and the Prefect server: {exe} stop")
    if args.keep:
        print(f"\nserving {result['model']} at {result['base_url']}/v1 (key in Secret block "
              f"{spec.access.api_key_secret!r})\n\n{key_command(spec.name, exe)}\n"
              f"{curl_command(result['base_url'], result['model'])}\n\n"
              f"stop it with: {exe} down {shlex.quote(spec.name)}")
    return 0


def cmd_register(args) -> int:
    from servenest.register import register

    with prefect_api() as (url, _):
        result = register(url, worker=args.worker)
    print("\n".join(result.lines()))
    if result.worker:
        print(f"stop the worker (and a Prefect server servenest started): "
              f"{shlex.quote(servenest_executable())} stop")
    return 0


def cmd_stop(args) -> int:
    from servenest.register import stop_started_processes

    stopped = stop_started_processes()
    print("stopped " + ", ".join(stopped) if stopped else "nothing to stop: no worker or Prefect "
          "server that servenest started is running")
    return 0


def demo_summary(stages: list[dict], total_s: float, server_s: float, teardown_s: float | None,
                 register_s: float = 0.0) -> dict:
    """Wall time split into engine start-up (launch to a passed gate), Prefect's own parts
    (server start-up, registering deployments) and everything else."""
    engine = sum(r["seconds"] for r in stages if r["stage"] in ("launch", "gate"))
    out = {
        "wall time (s)": round(total_s, 2),
        "engine start-up, launch to gate passed (s)": round(engine, 2),
        "Prefect server start-up (s)": round(server_s, 2),
    }
    if register_s:
        out["Prefect registration: blocks, pool, deployments, automations (s)"] = round(register_s, 2)
    out["everything else (s)"] = round(total_s - engine - server_s - register_s, 2)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="servenest", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the local pipeline end to end on the real engine")
    d.add_argument("--keep", action="store_true", help="keep serving and print how to call it")
    d.add_argument("--spec", default=str(DEFAULT_SPEC), help="spec file (default: local-tiny)")
    d.add_argument("--port", type=int, help="serve on this port instead of the spec's")
    d.set_defaults(fn=cmd_demo)

    v = sub.add_parser("validate", help="validate spec files and check that they fit")
    v.add_argument("specs", nargs="+")
    v.set_defaults(fn=cmd_validate)

    pl = sub.add_parser("plan", help="print what a spec would create, touching nothing")
    pl.add_argument("spec")
    pl.add_argument("--format", choices=["text", "json"], default="text")
    pl.set_defaults(fn=cmd_plan)

    r = sub.add_parser("register", help="make the Prefect server ready to run every deployment: "
                       "blocks, API key, work pool, deployments, schedules, triggers, automations")
    r.add_argument("--worker", action="store_true",
                   help="also start a process worker for the pool (once per machine)")
    r.set_defaults(fn=cmd_register)

    st = sub.add_parser("stop", help="stop the worker and the local Prefect server servenest started")
    st.set_defaults(fn=cmd_stop)

    c = sub.add_parser("catalog", help="list the models ServeNest knows")
    c.set_defaults(fn=cmd_catalog)

    dp = sub.add_parser("deployments", help="render prefect.yaml from deployments/*.yaml")
    dp.add_argument("--write", action="store_true")
    dp.add_argument("--check", action="store_true")
    dp.set_defaults(fn=cmd_deployments)

    u = sub.add_parser("up", help="bring a spec up (the provision flow)")
    u.add_argument("spec")
    u.add_argument("--keep-on-failure", action="store_true")
    u.add_argument("--load-check", action="store_true")
    u.add_argument("--create-key", action="store_true", help="create a random key if missing")
    u.add_argument("--emulate", action="store_true",
                   help="rehearse a cloud spec on the local cloud emulator: no account, no spend")
    u.add_argument("--hold", action="store_true", help="with --emulate: keep serving until Ctrl-C")
    u.add_argument("--emulate-engine", choices=["vllm", "noop"], default="vllm",
                   help="with --emulate: what the emulated hosts serve (noop: a no-op server, "
                   "to rehearse the cloud steps in seconds)")
    u.set_defaults(fn=cmd_up)

    ca = sub.add_parser("cache", help="list or remove weights-cache entries (ECS snapshots)")
    ca_sub = ca.add_subparsers(dest="action", required=True)
    for name, help_text in (("ls", "list the entries of a region"), ("rm", "remove one entry")):
        one = ca_sub.add_parser(name, help=help_text)
        if name == "rm":
            one.add_argument("snapshot_id")
        else:
            one.add_argument("--format", choices=["text", "json"], default="text")
        one.add_argument("--region", default="cn-hangzhou")
        one.add_argument("--credentials-block", default="default")
    ca.set_defaults(fn=cmd_cache)

    dn = sub.add_parser("down", help="tear a deployment down (the teardown flow)")
    dn.add_argument("name")
    dn.set_defaults(fn=cmd_down)

    g = sub.add_parser("gate", help="run the health gate against a registered deployment")
    g.add_argument("name")
    g.add_argument("--deadline", type=float, default=60.0)
    g.set_defaults(fn=cmd_gate)

    b = sub.add_parser(
        "bench", help="benchmark an endpoint (vllm bench serve's flags)",
        description="Benchmark an OpenAI-compatible endpoint with vllm bench serve's flags, "
        "metrics and --save-result JSON. The results are always printed (and saved with "
        "--save-result). A run is INVALID when the client fell behind its schedule (send lag "
        "p99 above --max-send-lag-ms) or used nearly a whole core: then a WARNING line is "
        "printed and the JSON has servenest.valid false with the reasons. Exit status: 0 "
        "when the run completed (even if invalid or some requests failed; the summary gives "
        "the failure count and the first distinct errors, the JSON an errors list); 3 for an "
        "invalid run with --strict; 2 for bad input (nothing sent).")
    b.add_argument("--deployment", help="a registered deployment: URL, model, tokenizer and key")
    b.add_argument("--base-url")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=8000)
    b.add_argument("--endpoint", default="/v1/completions")
    b.add_argument("--backend", default="openai", choices=["openai", "vllm", "openai-chat"])
    b.add_argument("--model")
    b.add_argument("--served-model-name")
    b.add_argument("--tokenizer", help="local tokenizer directory (default: --model)")
    b.add_argument("--dataset-name", default="random", choices=["sharegpt", "random", "custom"])
    b.add_argument("--dataset-path")
    b.add_argument("--num-prompts", type=int, default=1000)
    b.add_argument("--request-rate", type=float, default=float("inf"))
    b.add_argument("--burstiness", type=float, default=1.0)
    b.add_argument("--max-concurrency", type=int)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--sharegpt-output-len", type=int)
    b.add_argument("--random-input-len", type=int, default=1024)
    b.add_argument("--random-output-len", type=int, default=128)
    b.add_argument("--random-range-ratio", type=float, default=0.0)
    b.add_argument("--ignore-eos", action="store_true")
    b.add_argument("--temperature", type=float)
    b.add_argument("--goodput", nargs="+", help="SLOs as KEY:MS (ttft, tpot, e2el)")
    b.add_argument("--metric-percentiles", default="99")
    b.add_argument("--percentile-metrics", default="ttft,tpot,itl")
    b.add_argument("--num-warmups", type=int, default=0)
    b.add_argument("--label")
    b.add_argument("--api-key", help="default: $OPENAI_API_KEY or the deployment's Secret block")
    b.add_argument("--save-result", action="store_true")
    b.add_argument("--save-detailed", action="store_true", help="also save per-request arrays")
    b.add_argument("--max-send-lag-ms", type=float, default=10.0,
                   help="send lag p99 above this marks the run invalid (default 10)")
    b.add_argument("--strict", action="store_true",
                   help=f"exit with status {INVALID_RUN_EXIT} when the run is invalid (results are "
                   "still printed and saved); what a gate uses")
    b.add_argument("--result-dir")
    b.add_argument("--result-filename")
    b.set_defaults(fn=cmd_bench)

    s = sub.add_parser("status", help="list registered deployments")
    s.set_defaults(fn=cmd_status)

    k = sub.add_parser("key", help="print a deployment's API key; `key create NAME` makes one")
    k.add_argument("name")
    k.add_argument("secret", nargs="?")
    k.set_defaults(fn=cmd_key)
    return p


def cmd_cache(args) -> int:
    """The weights cache of a region: list its entries, or remove one."""
    from servenest.cloud import weights_cache
    from servenest.cloud.credentials import open_session

    session = open_session(args.region, args.credentials_block)
    if args.action == "rm":
        found = weights_cache.entry(session, args.snapshot_id)
        if found is None or found.model == "?":
            raise ServeNestError(f"{args.snapshot_id} is not a ServeNest weights-cache entry in {args.region}")
        weights_cache.delete(session, args.snapshot_id)
        print(f"removed {args.snapshot_id} ({found.model}@{found.revision}, {found.bytes / 1e9:.1f} GB)")
        return 0
    rows = [e.row() for e in weights_cache.entries(session)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no weights-cache entries in {args.region}")
    for r in rows:
        print(f"{r['model']}@{r['revision']}  digest {r['digest'][:12]}  {r['size_gb']} GB  {r['where']}  "
              f"created {r['created']}  {r['status']}  ~{r['monthly_cny']} CNY/month")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ServeNestError as exc:
        print(f"servenest: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
