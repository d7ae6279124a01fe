"""The real-time service under load: N concurrent clients asking `/v1/recommend` for real
MovieLens 100K users, each with a deadline, against a `recsys serve`-equivalent server
(uvicorn, in this process) on the default model. Reports latency percentiles, the share of
answers that fell back to the retrieval order, throughput, and CPU seconds per request
(the server process's CPU time over the requests it answered).

    python benchmarks/bench_api.py --clients 1 4 8 --deadline-ms 3000 --requests 6

Set-up (once, in a scratch folder): the demo pipeline ingests ml-100k and builds and
registers the retrieval index (no re-ranking), exactly what `recsys demo --no-rerank` does.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from one_row import write_rows  # benchmarks/ is on sys.path when a script runs


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_up(var: Path, data: Path) -> list[str]:
    """ml-100k in a scratch database with a registered index; returns the user ids."""
    from recsys.pipeline import DemoConfig, run_demo

    run_demo(DemoConfig(data=data, rerank=False, progress=False,
                                 database_url=f"sqlite:///{var / 'recsys.db'}",
                                 artifact_dir=var / "artifacts"),
                      echo=lambda line: None)  # fmt: skip
    from recsys.db.engine import get_engine
    from recsys.db.events import interaction_log

    log = interaction_log(engine=get_engine(f"sqlite:///{var / 'recsys.db'}"))
    return sorted(set(log.users))


def serve(var: Path, port: int, model: str) -> threading.Thread:
    import uvicorn

    from recsys.api import create_app
    from recsys.settings import Settings

    settings = Settings(var_dir=var, database_url=f"sqlite:///{var / 'recsys.db'}",
                        artifact_dir=var / "artifacts", model=model, reload_poll_s=0,
                        require_api_key=False, log_impressions=True)  # fmt: skip
    config = uvicorn.Config(create_app(settings=settings), host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return thread


def load(port: int, users: list[str], clients: int, per_client: int, deadline: float) -> dict:
    import httpx

    answers: list[tuple[float, bool, int]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            for _ in range(per_client):
                body = {"user_id": rng.choice(users), "k": 20, "deadline_ms": deadline}
                t0 = time.perf_counter()
                r = http.post("/v1/recommend", json=body)
                wall = time.perf_counter() - t0
                with lock:
                    answers.append((wall, bool(r.json().get("fallback")), r.status_code))

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    lat = np.array([a[0] for a in answers])
    return {
        "clients": clients, "deadline_ms": deadline, "requests": len(answers),
        "ok": sum(a[2] == 200 for a in answers),
        "errors": sum(a[2] != 200 for a in answers),
        "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
        "fallback_share": float(np.mean([a[1] for a in answers])),
        "throughput_rps": len(answers) / wall, "cpu_s_per_request": cpu / len(answers),
    }  # fmt: skip


def session(port: int, user: str, out: Path) -> None:
    """recommend -> events -> recommend for one user, written as a curl transcript."""
    import json

    import httpx

    base = f"http://127.0.0.1:{port}"
    lines = []

    def call(path: str, body: dict) -> dict:
        answer = httpx.post(base + path, json=body, timeout=120).json()
        shown = dict(answer)
        if "items" in shown:
            shown["items"] = shown["items"][:3] + (
                [f"... {len(answer['items']) - 3} more"] if len(answer["items"]) > 3 else []
            )
        lines.append(f"$ curl -s localhost:8000{path} -H 'content-type: application/json' "
                     f"-d '{json.dumps(body)}'")  # fmt: skip
        lines.append(json.dumps(shown, indent=1))
        return answer

    first = call("/v1/recommend", {"user_id": user, "k": 5, "deadline_ms": 3000})
    clicked = first["items"][0]["id"]
    call("/v1/events", {"events": [{"event_id": f"demo-{user}-1", "user_id": user,
                                    "item_id": clicked, "kind": "click",
                                    "timestamp": time.time()}]})  # fmt: skip
    second = call("/v1/recommend", {"user_id": user, "k": 5, "deadline_ms": 3000})
    assert clicked not in {i["id"] for i in second["items"]}
    out.write_text("```\n" + "\n".join(lines) + "\n```\n")


def row_of(r: dict) -> list[str]:
    return [str(r["clients"]), f"{r['deadline_ms']:.0f}", f"{r['requests']} ({r['errors']})",
            f"{r['p50_s']:.2f}", f"{r['p99_s']:.2f}", f"{100 * r['fallback_share']:.0f}%",
            f"{r['throughput_rps']:.2f}", f"{r['cpu_s_per_request']:.2f}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/movielens-100k"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--deadline-ms", type=float, default=3000.0)
    parser.add_argument("--requests", type=int, default=6, help="per client")
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/api"))
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="bench-api-"))
    os.environ["RECSYS_VAR_DIR"] = str(var)
    users = set_up(var, args.data)
    port = free_port()
    serve(var, port, args.model)
    import httpx

    for _ in range(600):  # the model loads at start-up
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    load(port, users, 1, 2, args.deadline_ms)  # warm-up
    rows = [load(port, users, n, args.requests, args.deadline_ms) for n in args.clients]
    result = {"model": args.model, "data": str(args.data), "threads": os.cpu_count(),
              "runs": rows}  # fmt: skip
    header = ["clients", "deadline ms", "requests (errors)", "p50 s", "p99 s", "fallback",
              "req/s", "CPU s/request"]  # fmt: skip
    table = [row_of(r) for r in rows]
    write_rows(args.out, result, header, table)
    session(port, users[0], args.out.with_name(args.out.name + "-session.md"))


if __name__ == "__main__":
    main()
