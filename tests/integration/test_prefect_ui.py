"""The Prefect UI after the demo, in a real headless Chromium.

One `prefect server start` with its UI, `servenest demo --keep` against it (the real vLLM
engine; the demo registers everything and starts a worker), then `prefect deployment run
benchmark/local-tiny` through that worker, as a user pressing Run would. Debian's
chromium (scripts/setup.sh installs it) is driven by Playwright over CDP; Playwright's own
browser builds are never downloaded. Screenshots go to SERVENEST_SCREENSHOTS (default: the
test's tmp dir); the README's come from `SERVENEST_SCREENSHOTS=docs/screenshots`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from playwright.sync_api import expect

from tests.integration.conftest import REPO, free_port
from tests.integration.servers import prefect_server

pytestmark = pytest.mark.engine
BIN = Path(sys.executable).parent
# The real binary: /usr/bin/chromium is Debian's wrapper script around it.
CHROMIUM = os.environ.get("SERVENEST_CHROMIUM") or next(
    (p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.access(p, os.X_OK)), None)
# The UI loads data after first paint: wait for what a person would wait for.
UI_TIMEOUT_MS = 60_000
expect.set_options(timeout=UI_TIMEOUT_MS)
PAGE_ROWS = 10  # a table artifact's rows per page in the UI


def run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} -> {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """A UI-enabled server, the demo run against it and a benchmark run via its worker."""
    root = tmp_path_factory.mktemp("prefect-ui")
    with prefect_server(root / "prefect", ui=True) as server:
        # Nothing of the session's server: this process's PREFECT_* point there.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(server.env, SERVENEST_HOME=str(root / "servenest-home"))
        try:
            demo = run([str(BIN / "servenest"), "demo", "--keep", "--port", str(free_port())], env, 1500)
            # Twice, so the trend chart draws a line.
            for _ in range(2):
                run([str(BIN / "prefect"), "deployment", "run", "benchmark/local-tiny", "--watch"], env, 900)
            yield {"server": server, "env": env, "demo": demo.stdout, "ui": server.api_url.removesuffix("/api")}
        finally:
            subprocess.run([str(BIN / "servenest"), "down", "local-tiny"], cwd=REPO, env=env,
                           capture_output=True, timeout=300)
            subprocess.run([str(BIN / "servenest"), "stop"], cwd=REPO, env=env, capture_output=True, timeout=60)


def api(server, method: str, path: str, **kw):
    with httpx.Client(base_url=server.api_url, trust_env=False, timeout=30) as http:
        response = http.request(method, path, **kw)
    response.raise_for_status()
    return response.json()


def deployments(server) -> dict[str, dict]:
    flows = {f["id"]: f["name"] for f in api(server, "POST", "/flows/filter", json={})}
    return {f"{flows[d['flow_id']]}/{d['name']}": d
            for d in api(server, "POST", "/deployments/filter", json={"limit": 200})}


def test_the_demo_leaves_every_deployment_an_automation_and_a_worker(ui_server):
    server = ui_server["server"]
    assert "stop the worker and the Prefect server:" in ui_server["demo"]
    assert re.search(r"Prefect registration: blocks, pool, deployments, automations \(s\): [\d.]+", ui_server["demo"])
    deployed = deployments(server)
    shipped = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert len(deployed) == len(shipped)
    # Local schedules run; a cloud spec's wait for its credentials block.
    (local,) = deployed["redeploy/local-tiny"]["schedules"]
    (cloud,) = deployed["redeploy/qwen3-8b"]["schedules"]
    assert (local["active"], cloud["active"]) == (True, False)
    # A cloud spec's every schedule, also of deployments that carry only its name.
    (cloud_watch,) = deployed["watch/qwen3-8b"]["schedules"]
    assert cloud_watch["active"] is False
    assert deployed["teardown/local-tiny"]["schedules"] == []
    names = [a["name"] for a in api(server, "POST", "/automations/filter", json={})]
    for path in (REPO / "deployments" / "automations").glob("*.yaml"):
        assert names.count(yaml.safe_load(path.read_text())["name"]) == 1
    # Each deployment trigger is an automation of its own (prefect deploy makes them).
    assert sum(n.startswith("local-tiny__automation_") for n in names) == 2
    workers = api(server, "POST", "/work_pools/servenest-local/workers/filter", json={})
    assert [w["status"] for w in workers] == ["ONLINE"]
    # The benchmark ran through that worker, as the UI's Run button would have it.
    bench_runs = api(server, "POST", "/flow_runs/filter", json={
        "deployments": {"id": {"any_": [deployed["benchmark/local-tiny"]["id"]]}}})
    assert [r["state_type"] for r in bench_runs] == ["COMPLETED", "COMPLETED"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("no Chromium: `apt-get install chromium` (scripts/setup.sh does as root), "
                    "or set SERVENEST_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Chromium's sandbox refuses to run as root; CI runs as root.
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


@pytest.fixture
def page(browser, ui_server, request, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    out = Path(os.environ.get("SERVENEST_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> Path:
        from PIL import Image

        path = out / f"{name}.png"
        pg.screenshot(path=str(path))
        # 256 colours hold a UI page: a third of the bytes, for the README's copies.
        Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
        assert path.stat().st_size > 10_000, f"{path} is nearly empty"
        return path

    pg.shot = shot
    yield pg
    context.close()
    assert not errors, f"the UI raised: {errors}"


def ui_url(ui_server, path: str) -> str:
    # The UI that http://<server>/ opens by default (V2 in prefect 3.8.8).
    return f"{ui_server['ui']}/v2{path}"


def artifact_id(ui_server, key: str) -> str:
    (latest,) = api(ui_server["server"], "POST", "/artifacts/latest/filter",
                    json={"artifacts": {"key": {"any_": [key]}}})
    return latest["latest_id"]


def provision_run(ui_server) -> dict:
    (found,) = api(ui_server["server"], "POST", "/flow_runs/filter", json={
        "flow_runs": {"name": {"any_": ["provision-local-tiny"]}}})
    return found


def test_the_flow_run_page_shows_the_run_and_its_artifacts(ui_server, page):
    run_ = provision_run(ui_server)
    page.goto(ui_url(ui_server, f"/runs/flow-run/{run_['id']}?tab=Artifacts"))
    expect(page.get_by_text("provision-local-tiny").first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    for key in ("connection-local-tiny", "stage-timings-local-tiny"):
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    # The run graph is a canvas drawn after its data arrives: let it draw before the shot.
    expect(page.locator("canvas").first).to_be_visible()
    page.wait_for_timeout(3000)
    page.shot("flow-run")


def test_the_connection_card_renders_its_heading_and_a_real_table_header(ui_server, page):
    page.goto(ui_url(ui_server, f"/artifacts/artifact/{artifact_id(ui_server, 'connection-local-tiny')}"))
    expect(page.get_by_role("heading", name="local-tiny: connection card")).to_be_visible()
    table = page.locator("table").filter(has_text="Base URL")
    expect(table.locator("th")).to_have_text(["Endpoint", "Value"])
    expect(table.locator("td").filter(has_text="Base URL")).to_be_visible()
    expect(table).to_contain_text("/v1")
    expect(table).not_to_contain_text("sk-integration")  # masked, never the key
    page.shot("connection-card")


def test_the_stage_timings_table_lists_every_stage(ui_server, page):
    key = "stage-timings-local-tiny"
    data = api(ui_server["server"], "GET", f"/artifacts/{artifact_id(ui_server, key)}")["data"]
    stages = [row["stage"] for row in (json.loads(data) if isinstance(data, str) else data)]
    assert {"validate", "stage weights", "launch", "gate", "load check", "register"} <= set(stages)
    page.goto(ui_url(ui_server, f"/artifacts/artifact/{artifact_id(ui_server, key)}"))
    table = page.locator("table").filter(has_text="seconds")
    expect(table.locator("th")).to_have_text(["stage", "seconds", "status"])
    first = table.locator("tbody tr td:first-child")
    expect(first).to_have_text(stages[:PAGE_ROWS])  # in pipeline order
    page.shot("stage-timings")
    for stage in stages[PAGE_ROWS:]:  # on later pages: found through the table's search
        page.get_by_placeholder("Search", exact=True).fill(stage)
        expect(first).to_have_text([stage])


def test_the_benchmark_trend_shows_the_chart_and_its_tables(ui_server, page):
    page.goto(ui_url(ui_server, f"/artifacts/artifact/{artifact_id(ui_server, 'bench-trend-local-tiny')}"))
    expect(page.get_by_role("heading", name="Benchmark trend of local-tiny")).to_be_visible()
    chart = page.get_by_role("img", name="Benchmark trend of local-tiny")
    expect(chart).to_be_visible()
    # Decoded (naturalWidth) and laid out: a data URI the UI refused would be 0 x 0.
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
    natural = chart.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    box = chart.bounding_box()
    assert natural == [640, 480] and box["width"] > 200 and box["height"] > 150
    expect(page.locator("td").filter(has_text=re.compile("^p99 TTFT$"))).to_have_count(1)
    expect(page.get_by_role("heading", name=re.compile(r"Last \d+ runs"))).to_be_visible()
    page.shot("benchmark-trend")


def test_the_deployments_list_names_provision_local_tiny_ready_to_run(ui_server, page):
    page.goto(ui_url(ui_server, "/deployments"))
    expect(page.get_by_text(f"{len(deployments(ui_server['server']))} Deployments")).to_be_visible()
    page.get_by_placeholder("Search deployments").fill("local-tiny")
    row = page.locator("tbody tr").filter(has_text="provision").filter(has_text="local-tiny")
    expect(row).to_have_count(1)
    # Ready: a worker polls its pool, so the Run button starts it.
    expect(row).to_contain_text("Ready")
    expect(row).not_to_contain_text("Not Ready")
    local_tiny = [n for n in deployments(ui_server["server"]) if n.endswith("/local-tiny")]
    expect(page.locator("tbody tr")).to_have_count(min(len(local_tiny), 10))  # one per flow
    page.shot("deployments")


def test_registering_again_once_credentials_exist_turns_cloud_schedules_on(ui_server):
    server, env = ui_server["server"], ui_server["env"]
    run([sys.executable, "-c", "from blocks import AlibabaCloudCredentials as C; C(access_key_id="
         "'LTAI-not-a-real-key', access_key_secret='not-a-secret', endpoint_override='127.0.0.1:9')"
         ".save('default')"], env, 120)
    out = run([str(BIN / "servenest"), "register"], env, 900).stdout
    assert "0 paused for want of credentials" in out
    deployed = deployments(server)
    assert [s["active"] for s in deployed["redeploy/qwen3-8b"]["schedules"]] == [True]
    assert [s["active"] for s in deployed["watch/qwen3-8b"]["schedules"]] == [True]
    assert [s["active"] for s in deployed["sweep/cn-hangzhou"]["schedules"]] == [False]  # as prefect.yaml says
    names = [a["name"] for a in api(server, "POST", "/automations/filter", json={})]
    assert names.count("servenest-crash-zombie-runs") == 1  # updated, not added again
