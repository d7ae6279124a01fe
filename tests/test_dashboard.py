"""The operator's page (GET /dashboard): what it shows, parsed from the HTML; the two-step
rollback with its token; the admin key as a browser sends it (HTTP Basic)."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from recsys.api import create_app
from recsys.api.metrics import ApiMetrics
from recsys.settings import Settings

REQUEST = {
    "task": "rec-movie",
    "history": ["Toy Story (1995)"],
    "candidates": [
        {"id": str(i), "text": t, "score": 1.0 / (i + 1)}
        for i, t in enumerate(["Heat (1995)", "Fargo (1996)", "Casino (1995)"])
    ],
}


VOID = {"input", "img", "meta", "br", "hr", "link"}


class Page(HTMLParser):
    """Tables by id (rows of cell texts), elements by id, and every form field."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: dict[str, dict[str, str]] = {}
        self.inputs: dict[str, str] = {}
        self.text: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the open elements
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids[a["id"]] = a
            self.text.setdefault(a["id"], "")
        if tag not in VOID:
            self._open.append((tag, a.get("id")))
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "input":
            self.inputs[a.get("name", "")] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, element in self._open:
            if element is not None:
                self.text[element] += data

    def rows(self, table: str) -> list[dict[str, str]]:
        header, *body = self.tables[table]
        return [dict(zip(header, row, strict=False)) for row in body]


@pytest.fixture
def world(engine, tmp_path, tiny_ranker):
    """Two promoted-in-turn rankers, a running job, a replay report; the app serves v2."""
    from recsys.db.registry import register_model
    from recsys.db.runs import insert_job_run
    from recsys.registry import promote

    for v, mrr in (("v1", 0.21), ("v2", 0.25)):
        register_model("ranker", v, str(tmp_path / v), metrics={"gate_mrr": mrr}, engine=engine)
        promote("ranker", v, force=True, engine=engine)
    register_model("index", "idx-1", str(tmp_path / "idx"), engine=engine)
    job = insert_job_run(kind="batch", status="succeeded", progress=0.4, engine=engine)
    replay = tmp_path / "var" / "replay"
    replay.mkdir(parents=True)
    (replay / "report.md").write_text(
        "# Replay\n\n| policy | MRR |\n|---|---|\n| A | 0.1 |\n| B <script>x</script> | 0.2 |\n"
        "\n![replay](replay.png)\n"
    )
    (replay / "replay.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    served = {"version": "v2"}
    settings = Settings(var_dir=tmp_path / "var", require_api_key=False, reload_poll_s=0)
    app = create_app(ranker=tiny_ranker, settings=settings, engine=engine, version="v2",
                     probe=lambda: served["version"], loader=lambda: tiny_ranker)  # fmt: skip
    with TestClient(app) as client:
        yield client, job, served


def page(client: TestClient, path: str = "/dashboard", **kw) -> Page:
    answer = client.get(path, **kw)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    return Page(answer.text)


def test_the_page_shows_status_registry_history_jobs_replay_and_traffic(world):
    client, job, _ = world
    for _ in range(2):
        assert client.post("/v1/rank", json=REQUEST).status_code == 200
    assert client.post("/v1/rank", json={"candidates": []}).status_code == 422
    p = page(client)
    status = {r["part"]: r["state"] for r in p.rows("status")}
    assert status == {"database": "OK", "broker": "OK", "models": "OK", "activity": "OK"}
    assert p.text["overall"] == "OK"
    registry = {(r["kind"], r["version"]): r for r in p.rows("registry")}
    assert registry["ranker", "v2"]["status"] == "promoted"
    assert registry["ranker", "v1"]["status"] == "candidate"
    assert "gate_mrr=0.25" in registry["ranker", "v2"]["gate / metrics"]
    assert registry["ranker", "v2"][""] == "roll back to v1…"
    history = [(r["version"], r["event"]) for r in p.rows("history")]
    assert history[:3] == [("idx-1", "registered"), ("v2", "promoted"), ("v2", "registered")]
    assert ("v1", "promoted") in history
    jobs = {r["id"]: r for r in p.rows("jobs")}
    assert jobs[str(job)]["progress"] == "40%" and jobs[str(job)]["status"] == "succeeded"
    traffic = {r["endpoint"]: r for r in p.rows("traffic")}
    assert traffic["/v1/rank"]["requests"] == "3"
    assert traffic["/v1/rank"]["5xx rate"] == "0.0%"
    assert traffic["/v1/rank"]["p95 ≤"].endswith(("ms", "s"))
    assert [row[:2] for row in p.tables[""]][-2:] == [["A", "0.1"], ["B <script>x</script>", "0.2"]]
    assert "replay-plot" in p.ids  # the plot, served beside the page
    plot = client.get("/dashboard/replay.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"


def test_the_replay_report_cannot_inject_markup(world):
    client, _, _ = world
    html = client.get("/dashboard").text
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html


def test_rollback_is_confirmed_then_done_and_the_server_switches(world, engine):
    from recsys.db.registry import current_model, get_model

    client, _, served = world
    confirm = page(client, "/dashboard/rollback?kind=ranker")
    assert "v2" in confirm.text["plan"] and "v1" in confirm.text["plan"]
    form = confirm.inputs
    assert form["expected"] == "v2" and len(form["token"]) == 64
    assert current_model("ranker", engine=engine).version == "v2"  # looking changes nothing
    served["version"] = "v1"  # what the registry probe will say after the rollback
    done = client.post("/dashboard/rollback", data=form, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/dashboard?rolled_back=ranker"
    assert current_model("ranker", engine=engine).version == "v1"
    assert get_model("ranker", "v2", engine=engine).status == "retired"
    after = page(client, done.headers["location"])
    assert after.text["notice"] == "ranker rolled back: promoted now v1"
    assert client.get("/v1/model").json()["version"] == "v1"  # reloaded without a restart
    assert ("v2", "retired") in [(r["version"], r["event"]) for r in after.rows("history")]
    again = client.post("/dashboard/rollback", data=form, follow_redirects=False)
    assert again.status_code == 409 and "now v1, not v2" in again.json()["error"]


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"kind": "ranker", "expected": "v2"}, 403, "stale or not from this server"),
        ({"kind": "ranker", "expected": "v2", "token": "0" * 64}, 403, "stale"),
        ({"kind": "ranker", "expected": "v1", "token": "from-the-v2-page"}, 403, "stale"),
        ({"kind": "ranker", "expected": "x" * 5000}, 413, "over 4096 bytes"),
    ],
)
def test_a_bad_rollback_form_is_refused_and_changes_nothing(world, engine, form, status, message):
    from recsys.db.registry import current_model

    client, _, _ = world
    if form.get("token") == "from-the-v2-page":  # a real token, for another version
        form["token"] = page(client, "/dashboard/rollback?kind=ranker").inputs["token"]
    answer = client.post("/dashboard/rollback", data=form, follow_redirects=False)
    assert answer.status_code == status and message in answer.json()["error"]
    assert current_model("ranker", engine=engine).version == "v2"


def test_nothing_to_roll_back_is_said_not_offered(engine, tmp_path, tiny_ranker):
    settings = Settings(var_dir=tmp_path, require_api_key=False, reload_poll_s=0)
    with TestClient(create_app(ranker=tiny_ranker, settings=settings, engine=engine)) as client:
        p = page(client)
        assert p.rows("registry") == [{"kind": "nothing registered"}]
        assert p.text["overall"] == "ATTENTION"  # no index registered: models check fails
        assert "no replay report yet" in p.text["replay"]
        answer = client.get("/dashboard/rollback?kind=ranker")
        assert answer.status_code == 409 and "no ranker version is promoted" in answer.text
        assert "confirm" not in Page(answer.text).ids
        assert client.get("/dashboard/replay.png").status_code == 404


def test_the_admin_key_is_needed_as_basic_or_bearer(engine, tmp_path, tiny_ranker):
    from recsys.auth import create_api_key

    admin = create_api_key("ops", ["admin"], engine=engine)
    ranking = create_api_key("feed", ["rank"], engine=engine)
    settings = Settings(var_dir=tmp_path, require_api_key=True, reload_poll_s=0)
    with TestClient(create_app(ranker=tiny_ranker, settings=settings, engine=engine)) as client:
        refused = client.get("/dashboard")
        assert refused.status_code == 401 and "admin scope" in refused.json()["error"]
        assert refused.headers["www-authenticate"].startswith("Basic")  # the browser asks
        for auth in [("ops", ranking), ("ops", "rk_wrong"), ("ops", "")]:
            assert client.get("/dashboard", auth=auth).status_code == 401
        bad = {"Authorization": "Basic !!not-base64!!"}
        assert client.get("/dashboard", headers=bad).status_code == 401
        assert client.get("/dashboard", auth=("anyone", admin)).status_code == 200
        bearer = {"Authorization": f"Bearer {admin}"}
        assert client.get("/dashboard", headers=bearer).status_code == 200
        assert client.post("/dashboard/rollback", data={"kind": "ranker"}).status_code == 401


def test_traffic_quantiles_come_from_the_histogram_buckets():
    m = ApiMetrics()
    for _ in range(9):
        m.requests.labels(endpoint="/v1/rank", status="200").inc()
        m.latency.labels(endpoint="/v1/rank", status="200").observe(0.004)
    m.requests.labels(endpoint="/v1/rank", status="503").inc()
    m.latency.labels(endpoint="/v1/rank", status="503").observe(2.0)
    m.fallbacks.labels(endpoint="/v1/rank", reason="deadline").inc(2)
    (t,) = m.traffic()
    assert (t.requests, t.errors, t.fallbacks) == (10, 1, 2)
    assert (t.p50_s, t.p95_s) == (0.005, 2.5)
    m.latency.labels(endpoint="/v1/rank", status="200").observe(100.0)  # beyond every bucket
    assert m.traffic()[0].p95_s == math.inf
    assert t.fallback_rate == pytest.approx(0.2) and t.error_rate == pytest.approx(0.1)
