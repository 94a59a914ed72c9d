"""Load on the team's tracking server: N client processes, each logging M metric points (one
request each, as a trial's epochs do) and one small artifact, at once, against `pneumo-exp
server` on a throwaway PostgreSQL, on 127.0.0.1 only. Reports throughput, latency per
request (p50, p95, max) and counts what arrived.

    .venv/bin/python bench/server_load.py                 # N = 1, 4, 8; M = 500
    .venv/bin/python bench/server_load.py --clients 8 --points 500 --timeout 600
    .venv/bin/python bench/server_load.py --auth      # behind the basic-auth app

Bounded: every client stops at --timeout seconds, and the table says what it did by then.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from postgres import postgres
from tracking_server import tracking_server

EXPERIMENT = "server-load"
ADMIN_PASSWORD = "load-test-admin-password"  # a throwaway server on 127.0.0.1
AUTH_ENV = "SERVER_LOAD_AUTH"  # "1": the clients log in (set before they are spawned)


def client(uri: str, experiment_id: str, index: int, points: int, deadline: float,
           results: mp.Queue) -> None:
    """One client process: a run, `points` metric requests, one artifact."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if os.environ.get(AUTH_ENV) == "1":
        os.environ.update({"MLFLOW_TRACKING_USERNAME": "admin",
                           "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD})
    from mlflow import MlflowClient

    mlflow_client = MlflowClient(uri)
    run = mlflow_client.create_run(experiment_id, run_name=f"client-{index}")
    run_id = run.info.run_id
    latencies = []
    for step in range(points):
        if time.time() > deadline:
            break
        start = time.perf_counter()
        mlflow_client.log_metric(run_id, "val_auc", step / points, step=step)
        latencies.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "trial.json"
        artifact.write_text(f'{{"client": {index}}}')
        start = time.perf_counter()
        mlflow_client.log_artifact(run_id, str(artifact))
        latencies.append(time.perf_counter() - start)
    mlflow_client.set_terminated(run_id)
    results.put((run_id, len(latencies) - 1, latencies))


def measure(uri: str, clients: int, points: int, timeout: float) -> dict[str, float]:
    from mlflow import MlflowClient

    mlflow_client = MlflowClient(uri)
    experiment_id = mlflow_client.create_experiment(f"{EXPERIMENT}-{clients}")
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    deadline = time.time() + timeout
    procs = [ctx.Process(target=client, args=(uri, experiment_id, i, points, deadline,
                                              results)) for i in range(clients)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    done = [results.get(timeout=timeout + 120) for _ in procs]
    seconds = time.perf_counter() - start
    for p in procs:
        p.join()
    latencies = np.concatenate([np.asarray(lat) for _, _, lat in done]) * 1000
    sent = sum(n for _, n, _ in done)
    arrived = sum(len(mlflow_client.get_metric_history(run_id, "val_auc"))
                  for run_id, _, _ in done)
    artifacts = sum(any(f.path == "trial.json" for f in mlflow_client.list_artifacts(run_id))
                    for run_id, _, _ in done)
    return {"clients": clients, "points sent": sent, "points arrived": arrived,
            "artifacts": artifacts, "seconds": seconds, "points/s": sent / seconds,
            "p50 ms": float(np.percentile(latencies, 50)),
            "p95 ms": float(np.percentile(latencies, 95)), "max ms": float(latencies.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds after which a client stops logging")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app in "
                        "front: every request checks the password's scrypt hash")
    args = parser.parse_args()
    if args.auth:
        os.environ[AUTH_ENV] = "1"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, postgres() as db, \
            tracking_server(Path(tmp), backend=db.uri, workers=args.workers,
                            admin_password=ADMIN_PASSWORD if args.auth else None) as server:
        for n in args.clients:
            rows.append(measure(server.uri, n, args.points, args.timeout))
            print(rows[-1], flush=True)
    keys = list(rows[0])
    print(f"\nserver: pneumo-exp server --workers {args.workers}{' --auth' if args.auth else ''} "
          "on PostgreSQL, 127.0.0.1; "
          f"{os.cpu_count()} CPUs")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.0f}" if k != "points/s" else f"{v:.1f}"
                                for k, v in row.items()) + " |")


if __name__ == "__main__":
    main()
