"""The store: the MLflow UI, a tracking server, what the store holds, deleting a search."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from pneumo_exp.cli.processes import run_server
from pneumo_exp.config import MLRUNS_DIR, STATE_DIR, TUNER_DIR, tracking_uri
from pneumo_exp.errors import UserError
from pneumo_exp.tracking.access import (
    ADMIN_PASSWORD_ENV,
    RESOURCE_EXPERIMENT,
    RESOURCE_MODEL,
    USER_PASSWORD_ENV,
    auth_client,
    auth_server,
    grant,
    is_loopback,
    read_secret,
    redacted,
)
from pneumo_exp.tracking.listing import experiments, find_search, runs_table, versions_using
from pneumo_exp.tracking.names import TAG_ARCH, arch_experiment
from pneumo_exp.tracking.queries import children
from pneumo_exp.tracking.store import connect, experiment_id, init_sqlite_store, ui_url

log = logging.getLogger(__name__)


def cmd_ui(args: argparse.Namespace) -> int:
    _open_to_the_network(args, secured=False)  # the UI has no login: pneumo-exp server
    client = connect()
    uri = tracking_uri()
    print(f"MLflow UI on http://{args.host}:{args.port} (store {redacted(uri)}). Ctrl-C, or kill "
          "this process (or the make that started it), stops it and its workers.")
    for experiment, name in sorted(experiments(client).items()):
        print(f"  {name}: {ui_url(args.host, args.port, experiment)}")
    sys.stdout.flush()
    return run_server([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                       "--host", args.host, "--port", str(args.port)])


def _open_to_the_network(args: argparse.Namespace, secured: bool) -> None:
    """A server others can reach needs authentication: refused without it, unless the user
    says --insecure (INSECURE=1), and then warned about."""
    if secured or is_loopback(args.host):
        return
    if not args.insecure:
        raise UserError(f"{args.host} is reachable from the network, and this server would "
                        "let anyone there read and write: add AUTH=1 (--auth) with an admin "
                        f"password in {ADMIN_PASSWORD_ENV}, or INSECURE=1 (--insecure) if the "
                        "network is yours alone.")
    log.warning("Serving on %s without authentication (INSECURE): anyone who reaches it can "
                "read and change every run and model.", args.host)


def cmd_server(args: argparse.Namespace) -> int:
    """`mlflow server`: a tracking server and Model Registry that a team and the workers of a
    distributed search share (MLFLOW_TRACKING_URI=http://HOST:PORT on every machine); with
    --auth, MLflow's basic-auth app in front of it."""
    _open_to_the_network(args, args.auth)
    backend = args.backend_store_uri or f"sqlite:///{MLRUNS_DIR.resolve() / 'mlflow.db'}"
    if backend.startswith("sqlite:///"):
        init_sqlite_store(Path(backend.removeprefix("sqlite:///")))
    artifacts = args.artifacts_destination or str((MLRUNS_DIR / "artifacts").resolve())
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", artifacts, "--host", args.host, "--port",
           str(args.port), "--workers", str(args.workers)]
    env = dict(os.environ)
    if args.auth:
        password = read_secret(ADMIN_PASSWORD_ENV, args.admin_password_file,
                               "admin password")
        database = args.auth_database or f"sqlite:///{MLRUNS_DIR.resolve() / 'basic_auth.db'}"
        env.update(auth_server(STATE_DIR, database, args.admin_user, password))
        cmd += ["--app-name", "basic-auth"]
    print(f"MLflow tracking server on http://{args.host}:{args.port} (backend "
          f"{redacted(backend)}, artifacts {redacted(artifacts)}"
          f"{f', users and permissions in {redacted(database)}' if args.auth else ''}). "
          f"Clients: MLFLOW_TRACKING_URI=http://{args.host}:{args.port}"
          f"{' with MLFLOW_TRACKING_USERNAME and _PASSWORD' if args.auth else ''}", flush=True)
    return run_server(cmd, env)


def cmd_users(args: argparse.Namespace) -> int:
    """Add a user to the tracking server, or grant one a permission on experiments and
    registered models (as the server's admin: MLFLOW_TRACKING_USERNAME and _PASSWORD)."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise UserError(f"users live on a tracking server; MLFLOW_TRACKING_URI is {uri}. Set "
                        "it to the server's http(s) address.")
    if args.users_command == "add":
        auth_client(uri).create_user(args.username, read_secret(
            USER_PASSWORD_ENV, args.password_file, f"password of {args.username}"))
        print(f"Added user {args.username} to {uri}.")
        return 0
    client = connect()
    grant_to = [(RESOURCE_EXPERIMENT, experiment_id(client, name if "/" in name
                                                    else arch_experiment(name)), name)
                for name in args.experiment or []]
    grant_to += [(RESOURCE_MODEL, name, name) for name in args.model or []]
    if not grant_to:
        raise UserError("grant what? Give --experiment ARCH (or a name) and/or --model NAME.")
    for kind, resource, name in grant_to:
        grant(uri, args.username, kind, resource, args.permission)
        print(f"Granted {args.permission} on {kind.replace('_', ' ')} {name} to "
              f"{args.username}.")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """The searches and cross-validations; or one search's trials (and importance)."""
    client = connect()
    if not args.search:
        if args.importance:
            raise UserError("--importance needs the search: give NAME=search-name to make, "
                            "or --search to pneumo-exp runs.")
        print(runs_table(client))
        return 0
    from pneumo_exp.tracking.search_record import SearchRecord, format_table
    from pneumo_exp.tracking.search_tracker import log_importance

    record = SearchRecord.from_parent(client, find_search(client, args.search))
    print(f"Trials of search '{record.search_name}' ({record.cfg.arch}):")
    print(format_table(record.table()))
    if args.importance:
        imp = log_importance(record)
        print()
        print(imp.table() if imp else "Too few finished trials (or nothing varied) for "
              "hyperparameter importance.")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Searches side by side: their best so far against time and trials, their best."""
    from pneumo_exp.evaluation.plots import plt
    from pneumo_exp.tracking.compare import (
        compare_figure,
        compare_table,
        noise_verdicts,
        summarize,
    )

    client = connect()
    searches = [summarize(client, find_search(client, s)) for s in args.searches]
    print(compare_table(searches))
    if len(searches) > 1:
        print("\nBest against best, by the validation noise (a bootstrap of the objective over "
              "the validation images, 95%):")
        for line in noise_verdicts(searches):
            print(f"  {line}")
    fig = compare_figure(searches)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"Best so far against time and against trials: {args.out}")
    return 0


def cmd_delete_search(args: argparse.Namespace) -> int:
    """Delete one search's runs (parent and trials) and its tuner state; refused while a
    registered version packages one of its trials."""
    client = connect()
    parent = find_search(client, args.search_name)
    trials = children(client, parent.info.experiment_id, parent.info.run_id)
    used = versions_using(client, {r.info.run_id for r in trials})
    if used:
        listed = ", ".join(f"{u['name']} version {u['version']}" for u in used)
        raise UserError(f"search '{args.search_name}' cannot be deleted: {listed} packages "
                        "its trials. Delete those versions first (MLflow UI, Models).")
    state = TUNER_DIR / parent.data.tags.get(TAG_ARCH, "?") / args.search_name
    what = (f"search '{args.search_name}': its run {parent.info.run_id}, {len(trials)} "
            f"trial runs{', and ' + str(state) if state.is_dir() else ''}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"deleting {what} needs a confirmation: add --yes (YES=1 with "
                            "make).")
        if input(f"Delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    for run in [*trials, parent]:
        client.delete_run(run.info.run_id)
    if state.is_dir():
        shutil.rmtree(state)
    print(f"Deleted {what}. (MLflow keeps deleted runs until `mlflow gc`.)")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """What the state folder keeps, or --clear it."""
    import time

    from pneumo_exp.data.kept import CLEARABLE, SALT_FILE, clear, inventory

    if args.older_than is not None and not args.clear:
        raise UserError("--older-than needs --clear (CLEAR=images, pacs or all).")
    if args.clear:
        kinds = CLEARABLE if args.clear == "all" else (args.clear,)
        count, size = clear(kinds, args.older_than)
        when = f" not used for {args.older_than:g} days" if args.older_than is not None else ""
        print(f"Deleted {count} files ({size / 1e6:.1f} MB) of {', '.join(kinds)}{when}.")
        return 0
    print(f"Kept in {STATE_DIR.resolve()} (private to its user; the MLflow store is "
          f"{MLRUNS_DIR}/):")

    def day(t: float | None) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(t)) if t else "-"

    for k in inventory():
        print(f"  {k.name:<7} {k.files:>6} files {k.bytes / 1e6:>9.1f} MB  last used "
              f"{day(k.oldest)} .. {day(k.newest)}  {k.folder}: {k.what}")
    print(f"  salt    {'kept' if SALT_FILE.is_file() else 'none'}: {SALT_FILE} (the secret of "
          "the hashed patient keys; not cleared)")
    print("Delete: pneumo-exp cache --clear images|pacs|all [--older-than DAYS] "
          "(make cache CLEAR=all OLDER_THAN=30).")
    return 0
