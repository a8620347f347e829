"""GET /metrics after real traffic (two clients, a cell run, a save), read with
prometheus_client's own parser; only admins and the metrics token may read it."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from crdtnb.users import Role, UserStore

from .conftest import TOKEN, Daemon

METRICS_TOKEN = "metrics-token-not-secret"


def _scrape(daemon: Daemon, token: str = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{daemon.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and all((k, w) in ls for k, w in labels.items())]
    assert matches, f"no sample {name} {labels}"
    return sum(matches)


async def test_metrics_after_real_traffic(daemon_factory, root) -> None:
    daemon = daemon_factory("--metrics-token", METRICS_TOKEN, "--save-delay", "0.2")
    one = await daemon.connect("nb.ipynb")
    two = await daemon.connect("nb.ipynb")
    first, second = one.cell_ids()
    one.insert_text(first, 0, "b = 2\n")
    await two.wait_for(lambda _: two.source(first).startswith("b = 2"))
    await one.execute([second])
    await one.wait_for(lambda _: one.cell(second).get("execution_state") == "idle" and one.outputs(second), timeout=90)
    assert daemon.post("/api/notebooks/nb.ipynb/save").status_code == 200
    samples = _scrape(daemon)
    assert _scrape(daemon, METRICS_TOKEN)  # the metrics token reads them too
    node = _value(samples, "crdtnb_info")
    assert node == 1
    assert _value(samples, "crdtnb_rooms_open") == 1
    assert _value(samples, "crdtnb_connections", role="writer") == 2
    assert _value(samples, "crdtnb_messages_in_total", kind="sync_update") >= 1
    assert _value(samples, "crdtnb_messages_out_total", kind="sync_update") >= 1
    assert _value(samples, "crdtnb_message_bytes_in_total", kind="sync_update") > 0
    assert _value(samples, "crdtnb_messages_in_total", kind="sync_step1") >= 2
    assert _value(samples, "crdtnb_store_append_latency_seconds_count") >= 1
    assert _value(samples, "crdtnb_store_batch_changes_count") >= 1
    assert _value(samples, "crdtnb_changes_total", origin="peer") >= 1
    assert _value(samples, "crdtnb_changes_total", origin="server") >= 1  # the kernel's outputs
    assert _value(samples, "crdtnb_file_saves_total") >= 1
    assert _value(samples, "crdtnb_executions_total", status="ok") == 1
    assert _value(samples, "crdtnb_execution_duration_seconds_count") == 1
    assert _value(samples, "crdtnb_kernels", status="idle") == 1
    assert _value(samples, "crdtnb_event_loop_lag_seconds_count") >= 1
    assert _value(samples, "crdtnb_send_queue_overflows_total") == 0
    await one.close()
    await two.close()


def test_metrics_need_an_admin_or_the_metrics_token(daemon_factory, root) -> None:
    users = UserStore(root / ".crdtnb")
    users.add("vera", Role.VIEWER, "correct horse battery")
    viewer = users.new_token("vera")
    daemon = daemon_factory("--metrics-token", METRICS_TOKEN)
    url = f"{daemon.url}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"token {viewer}"}, timeout=10).status_code == 403
    assert httpx.get(url, headers={"Authorization": f"token {METRICS_TOKEN}"}, timeout=10).status_code == 200
