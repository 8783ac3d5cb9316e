"""The operators' dashboard and alerts (deploy/grafana/, deploy/alerts.yaml) against real data.

- Static: the dashboard is importable (unique panel ids, every query on the `$datasource`
  variable, only known template variables), the ConfigMap and the PrometheusRule are deployed.
- promtool (Debian's `prometheus` package): the rules load, and each alert fires on the series it
  is written for and stays quiet on healthy ones (annotations left out: those are text).
- End to end: a real Prometheus scrapes a running local stack (the EPP's metrics port, each
  simulated pod's vLLM /metrics, a DCGM exporter page of the same pods) while requests go
  through Envoy, shedding and model-server errors included. Then, with the template variables
  substituted (`$pool`, `$model`, Grafana's `$__rate_interval`, `$__range`):
  * every panel query parses and returns at least one series with a finite value;
  * every variable query's values include the stack's pool or model;
  * every alert expression parses, and its *signal* returns series. The signal is the
    expression with its top-level threshold comparison removed and an outer absent(...)
    unwrapped (`up{job="epp"} == 0` → `up{job="epp"}`, `absent(up{job="epp"} == 1)` →
    `up{job="epp"}`), because an alert is built to be empty while all is well;
  * the alerts about a healthy stack's state (EPP down, no ready endpoint, stale metrics) are
    empty, and the shedding and server-error ratios are above zero (the load made both);
  * Prometheus evaluated every rule without error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from epp.local.stack import SEED_EXAMPLE, LocalStack
from epp.observability import EppMetrics
from epp.sim.metrics import render_dcgm
from epp.sim.pod import SimPod
from epp.sim.server import METRICS_TYPE
from tests.e2e.conftest import stack_config
from tests.factories import fresh, seed_store
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "epp-dashboard.json"
ALERTS = DEPLOY / "alerts.yaml"

POOL = "llama2-gpu-pool"
CRITICAL, SHEDDABLE = "llama2-7b-chat", "llama2-7b-batch"
# Values for the template variables: Grafana's built-ins, then the dashboard's own
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "1m", "__interval": "1s"}
VARIABLES = {"pool": POOL, "model": ".*"}
VARIABLE_EXPECTS = {"pool": POOL, "model": CRITICAL}  # a value each variable query must offer
# alerts about state the local stack keeps healthy: their expressions must be empty
QUIET = {"EppDown", "EppReplicaDown", "InferencePoolNoReadyEndpoints",
         "InferencePoolStaleEndpointMetrics"}  # fmt: skip
INDUCED = {"InferencePoolSheddingSustained", "InferenceGatewayHighErrorRate"}  # signal > 0
REQUIRED_METRICS = {
    "inference_pool_ready_pods", "epp_endpoint_metrics_age_seconds", "vllm:num_requests_running",
    "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "DCGM_FI_DEV_GPU_UTIL",
    "inference_extension_flow_control_queue_size", "inference_extension_flow_control_queue_bytes",
    "inference_objective_request_error_total", "inference_objective_request_total",
    "inference_objective_request_duration_seconds_bucket",
    "inference_extension_scheduler_e2e_duration_seconds_bucket",
    "inference_extension_plugin_duration_seconds_bucket", "process_cpu_seconds_total",
    "inference_extension_flow_control_request_queue_duration_seconds_bucket",
    "inference_extension_flow_control_request_queue_duration_seconds_count",
    "epp_objective_attainment_total", "epp_latency_prediction_error_ratio_bucket",
}  # fmt: skip

VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


# ---- the dashboard and the rules, as files ------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data, including those inside collapsed rows."""
    found = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def panel_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels(dash) for t in p["targets"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace `$name` / `${name}` as Grafana would; `$1` (a regex group) stays as it is."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():
            return match.group(0)
        return values[name]  # KeyError: a variable the dashboard does not define

    return VARIABLE.sub(value, expr)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def top_level_comparison(expr: str) -> int | None:
    """Index of the last comparison operator outside (), {}, [] and quotes, or None."""
    depth, quote, found, i = 0, "", None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (expr[i : i + 2] in ("==", "!=", ">=", "<=") or c in "<>"):
            found = i
            i += 1 if expr[i : i + 2] in ("==", "!=", ">=", "<=") else 0
        i += 1
    return found


def signal(expr: str) -> str:
    """The alert's expression without its threshold: unwrap absent(...), drop `op threshold`."""
    expr = expr.strip()
    while True:
        if expr.startswith("absent(") and expr.endswith(")"):
            expr = expr[len("absent(") : -1].strip()
        elif (at := top_level_comparison(expr)) is not None:
            expr = expr[:at].strip()
        else:
            return expr


# ---- static checks ------------------------------------------------------------------------------


def test_the_epp_registry_exports_process_metrics_and_endpoint_metrics_age() -> None:
    registry = CollectorRegistry()
    metrics = EppMetrics(registry)
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
    store = seed_store(2)
    store.set_metrics("127.0.0.2:8000", fresh())
    metrics.refresh_pools(store)

    def age(address: str) -> float | None:
        labels = {"pool": POOL, "endpoint": address}
        return registry.get_sample_value("epp_endpoint_metrics_age_seconds", labels)

    scraped = age("127.0.0.2:8000")
    assert scraped is not None and 0 <= scraped < 1
    assert age("127.0.0.3:8000") == math.inf  # never scraped
    time.sleep(0.05)
    metrics.refresh_pools(store)
    later = age("127.0.0.2:8000")
    assert later is not None and later >= scraped + 0.05


def test_the_dashboard_is_importable_and_covers_what_operators_need() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    nested = [p for row in dash["panels"] for p in row.get("panels", [])]
    ids = [p["id"] for p in (*dash["panels"], *nested)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert defined == {"datasource", *VARIABLES}
    for panel in panels(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
    for _, expr in panel_queries(dash):
        substitute(expr, GRAFANA_BUILTINS | VARIABLES)  # no unknown variable (KeyError)
    text = " ".join(expr for _, expr in panel_queries(dash))
    missing = {m for m in REQUIRED_METRICS if not re.search(rf"{re.escape(m)}\b", text)}
    assert not missing, f"no panel reads {sorted(missing)}"


def test_the_dashboard_and_the_alerts_are_deployed() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert "alerts.yaml" in kustomization["resources"]
    (generated,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "epp-dashboard"]
    assert generated["files"] == [str(DASHBOARD.relative_to(DEPLOY))]
    assert generated["options"]["labels"] == {"grafana_dashboard": "1"}
    doc = yaml.safe_load(ALERTS.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    names = [r["alert"] for r in rules()]
    assert set(names) == QUIET | INDUCED and len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        inner = signal(rule["expr"])
        assert inner != rule["expr"].strip(), f"{rule['alert']}: no threshold to remove"
        assert top_level_comparison(inner) is None


def test_signal_removes_the_threshold_only() -> None:
    assert signal('absent(up{job="epp"} == 1)') == 'up{job="epp"}'
    assert signal('sum(rate(x{a=~"b|c"}[5m])) / (sum(y) or vector(0))\n> 0.05') == (
        'sum(rate(x{a=~"b|c"}[5m])) / (sum(y) or vector(0))'
    )
    assert signal('m{l!="a>b"} >= 2') == 'm{l!="a>b"}'
    assert top_level_comparison('sum(m{l="x"})') is None


# ---- promtool -----------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(found).exists():
        pytest.fail("promtool not found: `apt-get install -y prometheus` (Debian) provides it")
    return found


def rule_file(path: Path, annotations: bool = True) -> Path:
    groups = yaml.safe_load(ALERTS.read_text())["spec"]["groups"]
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in {"job": "epp", **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _traffic(served: int, errors: dict[tuple[str, str], int]) -> list[dict[str, str]]:
    """Per-minute counts: `served` decided requests, errors[(model, code)] of each error."""
    m = {"model_name": "m", "target_model_name": "m"}
    found = [_series("inference_objective_request_total", m, f"0+{served}x40")]
    for (model, code), per_minute in errors.items():
        labels = {"model_name": model, "target_model_name": model, "error_code": code}
        found.append(
            _series("inference_objective_request_error_total", labels, f"0+{per_minute}x40")
        )
    return found


@pytest.mark.integration
def test_promtool_each_alert_fires_on_its_case_and_stays_quiet_when_healthy(
    tmp_path: Path,
) -> None:
    rule_file(tmp_path / "rules.yml", annotations=False)
    epp = {"instance": "10.0.0.1:9090"}
    endpoint = {**epp, "pool": "p", "endpoint": "10.0.1.1:8000"}
    broken = [
        _series("up", epp, "0x40"),
        _series("inference_pool_ready_pods", {**epp, "name": "p"}, "3 0x40"),
        _series("epp_endpoint_metrics_age_seconds", endpoint, "0.05 30+60x40"),
        # per minute: 60 served, 30 shed (33 %), 12 model-server 500s (12 / (60 + 30 + 6))
        *_traffic(60, {("", "Shed"): 30, ("m", "ModelServerError500"): 12, ("", "BadRequest"): 6}),
    ]
    healthy = [
        _series("up", epp, "1x40"),
        _series("inference_pool_ready_pods", {**epp, "name": "p"}, "3x40"),
        _series("epp_endpoint_metrics_age_seconds", endpoint, "0.05x40"),
        # shedding 2 %, a rare 500; client errors (BadRequest, a model server's 400) are many
        # but are not the gateway's: they must not count as its error rate
        *_traffic(60, {("", "Shed"): 1, ("m", "ModelServerError500"): 1,
                       ("", "BadRequest"): 600, ("m", "ModelServerError400"): 300}),
    ]  # fmt: skip
    fired = [
        ("EppDown", {"severity": "critical"}),  # absent() of a comparison: no labels
        ("EppReplicaDown", {**epp, "job": "epp", "severity": "warning"}),
        ("InferencePoolNoReadyEndpoints", {"name": "p", "severity": "critical"}),
        ("InferencePoolStaleEndpointMetrics", {**endpoint, "job": "epp", "severity": "warning"}),
        ("InferencePoolSheddingSustained", {"severity": "warning"}),
        ("InferenceGatewayHighErrorRate", {"severity": "critical"}),
    ]
    names = {name for name, _ in fired}
    assert names == QUIET | INDUCED
    tests = [
        {
            "interval": "1m",
            "input_series": broken,
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": name, "exp_alerts": [{"exp_labels": labels}]}
                for name, labels in fired
            ],
        },
        {
            "interval": "1m",
            "input_series": healthy,
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": name, "exp_alerts": []} for name in sorted(names)
            ],
        },
    ]
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests}))
    checked = subprocess.run(
        [promtool(), "check", "rules", str(rule_file(tmp_path / "annotated.yml"))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", str(spec)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


# ---- end to end ---------------------------------------------------------------------------------

SHEDDABLE_MODEL = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": SHEDDABLE},
    "spec": {"poolRef": {"name": POOL}, "routing": {"priority": "low"}},
}


def manifests(folder: Path) -> Path:
    """The seed's pool and model (its pods declaring `--max-num-seqs 8`) and a sheddable model."""
    folder.mkdir()
    docs = [d for d in yaml.safe_load_all((SEED_EXAMPLE / "inference.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "InferencePool":
            (container,) = doc["spec"]["deployment"]["template"]["spec"]["containers"]
            container["args"] = ["--max-num-seqs", "8"]
    (folder / "inference.yaml").write_text(yaml.safe_dump_all([*docs, SHEDDABLE_MODEL]))
    return folder


@contextlib.asynccontextmanager
async def dcgm_exporter(pods: Sequence[SimPod]) -> AsyncIterator[str]:
    """The simulator's DCGM page for these pods (one GPU each, labelled with its pod)."""

    async def page(request: web.Request) -> web.Response:
        body = render_dcgm(pods, asyncio.get_running_loop().time())
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def scrape_config(stack: LocalStack, dcgm: str, rules_path: Path) -> dict[str, Any]:
    """What the ServiceMonitors give in a cluster: job="epp" for the EPP, each model server
    with its pod and namespace labels (instance = pod IP:port), the DCGM exporter's own pod
    labels kept (honor_labels)."""
    epp = f"127.0.0.1:{stack.config.metrics_port}"
    servers = [
        {"targets": [f"{p.host}:{p.port}"], "labels": {"namespace": "default", "pod": p.name}}
        for p in stack.pods
    ]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_path)],
        "scrape_configs": [
            {"job_name": "epp", "static_configs": [
                {"targets": [epp], "labels": {"namespace": "inference-gateway", "pod": "epp-0"}}
            ]},
            {"job_name": "inference-model", "static_configs": servers},
            {"job_name": "dcgm-exporter", "honor_labels": True,
             "static_configs": [{"targets": [dcgm]}]},
        ],
    }  # fmt: skip


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[str]:
    """Debian's Prometheus with this configuration, on a free loopback port, once ready."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("Prometheus not found: `apt-get install -y prometheus` (Debian's package)")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    path, log_path = tmp_path / "prometheus.yml", tmp_path / "prometheus.log"
    path.write_text(yaml.safe_dump(config))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            async def ready() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"prometheus exited:\n{log_path.read_text()[-3000:]}")
                async with httpx.AsyncClient(timeout=1) as client:
                    with contextlib.suppress(httpx.HTTPError):
                        return (await client.get(f"{url}/-/ready")).status_code == 200
                return False

            await until("Prometheus to be ready", 30, ready)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def query(prom: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    """An instant query; AssertionError with Prometheus' message if it does not parse."""
    resp = await prom.get("/api/v1/query", params={"query": promql})
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        return [{"metric": {}, "value": result}]
    assert isinstance(result, list)
    return result


def finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in series)


async def until(what: str, timeout: float, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def traffic(stack: LocalStack, gateway: httpx.AsyncClient) -> dict[str, list[int]]:
    """One round of load through Envoy: 24 critical and 16 sheddable requests (4 at a time),
    6 streamed critical ones of two tenants with a TTFT objective, two bad bodies, sheddable
    requests while every pod reports saturation, and critical ones while every pod answers
    500. Returns the status codes per kind."""
    assert stack.sim is not None
    codes: dict[str, list[int]] = {"ok": [], "bad": [], "shed": [], "failed": []}
    gate = asyncio.Semaphore(4)

    async def send(kind: str, **kw: Any) -> None:
        async with gate:
            codes[kind].append((await gateway.post("/v1/chat/completions", **kw)).status_code)

    models = [CRITICAL, SHEDDABLE] * 16 + [CRITICAL] * 8
    await asyncio.gather(*(send("ok", json=chat(m)) for m in models))
    # streamed answers of two tenants' flows with a TTFT objective: the flow, objective and
    # prediction panels
    tenant = {"x-slo-ttft-ms": "5000"}
    await asyncio.gather(
        *(
            send(
                "ok",
                json=chat(CRITICAL) | {"stream": True, "max_tokens": 4},
                headers=tenant | {"x-gateway-inference-fairness-id": f"tenant-{i % 2}"},
            )
            for i in range(6)
        )
    )
    for _ in range(2):
        await send("bad", content=b"{not json", headers={"content-type": "application/json"})
    pods = [stack.sim.pod(spec.name) for spec in stack.pods]
    for pod in pods:
        pod.set_fake_metrics(waiting=40, kv_usage=0.97)
    # the EPP scrapes every 50 ms, but vouches for an idle pod's last figures for up to 0.5 s
    # (--scrape-quiet-interval) without fetching
    await asyncio.sleep(1.0)
    for _ in range(2):
        await send("shed", json=chat(SHEDDABLE))
    for pod in pods:
        pod.set_fake_metrics(waiting=None, kv_usage=None)
        pod.set_faults(error_rate=1.0)
    await asyncio.sleep(0.5)
    for _ in range(2):
        await send("failed", json=chat(CRITICAL))
    for pod in pods:
        pod.set_faults(error_rate=0.0)
    return codes


@pytest.mark.e2e
async def test_every_panel_and_alert_returns_data_from_a_running_stack(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "run", (manifests(tmp_path / "manifests"),), first_pod_ip=190)
    rules_path = rule_file(tmp_path / "rules.yml")
    async with LocalStack(config) as stack:
        assert stack.sim is not None
        async with (
            dcgm_exporter(stack.sim.pods) as dcgm,
            prometheus(tmp_path, scrape_config(stack, dcgm, rules_path)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as prom,
            httpx.AsyncClient(base_url=stack.url, timeout=20) as gateway,
        ):
            await run_checks(stack, prom, gateway)


async def run_checks(
    stack: LocalStack, prom: httpx.AsyncClient, gateway: httpx.AsyncClient
) -> None:
    targets = 2 + len(stack.pods)

    async def all_up() -> bool:
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            return len(await query(prom, "up == 1")) == targets
        return False

    await until("Prometheus to scrape every target", 30, all_up)
    # two rounds a few scrapes apart, so every counter and histogram grows between two samples
    first = await traffic(stack, gateway)
    await asyncio.sleep(1.5)
    second = await traffic(stack, gateway)
    for codes in (first, second):
        assert set(codes["ok"]) == {200}, codes
        assert codes["bad"] == [400, 400] and codes["shed"] == [429, 429], codes
        assert codes["failed"] == [500, 500], codes
    await asyncio.sleep(2.5)  # a couple of scrape intervals

    problems: list[str] = []
    dash = dashboard()
    for name, expr in panel_queries(dash):
        promql = substitute(expr, GRAFANA_BUILTINS | VARIABLES)
        try:
            result = await query(prom, promql)
        except AssertionError as error:
            problems.append(f"panel {name}: {error}")
            continue
        if not finite(result):
            problems.append(f"panel {name}: no series with a finite value: {promql} -> {result}")
    for variable in dash["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert found is not None, variable["definition"]
        selector, label = found.groups()
        resp = await prom.get(f"/api/v1/label/{label}/values", params={"match[]": selector})
        values = resp.json()["data"]
        if VARIABLE_EXPECTS[variable["name"]] not in values:
            problems.append(f"variable {variable['name']}: {values}")
    for rule in rules():
        name, expr, inner = rule["alert"], rule["expr"], signal(rule["expr"])
        try:
            fired = await query(prom, expr)
            observed = await query(prom, inner)
        except AssertionError as error:
            problems.append(f"alert {name}: {error}")
            continue
        if not observed:
            problems.append(f"alert {name}: its signal returns no series: {inner}")
        if name in QUIET and fired:
            problems.append(f"alert {name} fires on a healthy stack: {fired}")
        if name in INDUCED and not any(float(s["value"][1]) > 0 for s in observed):
            problems.append(f"alert {name}: the induced errors do not show: {observed}")
    groups = (await prom.get("/api/v1/rules")).json()["data"]["groups"]
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(evaluated) == QUIET | INDUCED
    problems += [
        f"rule {n}: health {r['health']} {r.get('lastError', '')}"
        for n, r in evaluated.items()
        if r["health"] != "ok"
    ]
    assert not problems, "\n".join(problems)
