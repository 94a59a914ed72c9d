"""Who may do what on a team's tracking server: MLflow's basic-auth app, its users and
their permissions per experiment and per registered model, and one clear message when a
server refuses a request (docs/cluster.md, "Who may use the server"). No password is
printed, logged or written outside the files below, which only its owner reads.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import secrets
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from mlflow.exceptions import RestException

from pneumo_exp.errors import UserError
from pneumo_exp.fileio import atomic_path, write_text_atomic

PERMISSIONS = ("READ", "EDIT", "MANAGE")
ADMIN_PASSWORD_ENV = "PNEUMO_EXP_ADMIN_PASSWORD"
USER_PASSWORD_ENV = "PNEUMO_EXP_USER_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
AUTH_CACHE_SECONDS = 60
RESOURCE_EXPERIMENT, RESOURCE_MODEL = "experiment", "registered_model"


class AccessDenied(UserError):
    """The tracking server refused the request (HTTP 401 or 403)."""


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def redacted(uri: str) -> str:
    """A URI with any password in it replaced: postgresql://mlflow:***@db/mlflow."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.password:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def read_secret(env: str, file: str | None, what: str) -> str:
    """A password from a file (its first line) or an environment variable; never a
    default."""
    if file:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as e:
            raise UserError(f"cannot read the {what} file {file}: {e.strerror}.") from e
        secret = lines[0].strip() if lines else ""
    else:
        secret = os.environ.get(env, "").strip()
    if not secret:
        raise UserError(f"no {what}: set {env}, or give a file that holds it.")
    if len(secret) < 12:
        raise UserError(f"the {what} is too short: at least 12 characters.")
    return secret


def auth_server(folder: Path, database: str, admin: str, password: str) -> dict[str, str]:
    """The environment of `mlflow server --app-name basic-auth`: its configuration under
    `folder` (mode 600; users' permissions in `database`, no permission unless granted), and
    `admin`'s `password` for the first start (MLflow ignores it once the admin exists)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "NO_PERMISSIONS", "database_uri": database,
        "admin_username": admin,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # a verified login is remembered for a minute (docs/cluster.md)
        "auth_cache_ttl_seconds": str(AUTH_CACHE_SECONDS)}
    path = folder / "basic_auth.ini"
    with atomic_path(path) as tmp, tmp.open("w") as f:  # 0600, as atomic_path makes it
        config.write(f)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(path), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            SECRET_KEY_ENV: _secret_key(folder)}


def _secret_key(folder: Path) -> str:
    """The key that signs the UI's CSRF tokens: MLFLOW_FLASK_SERVER_SECRET_KEY (the same on
    every server behind one address), else one drawn once and kept under `folder`."""
    if os.environ.get(SECRET_KEY_ENV):
        return os.environ[SECRET_KEY_ENV]
    path = folder / "server_secret_key"
    if not path.exists():
        write_text_atomic(path, secrets.token_hex(32))
    return path.read_text().strip()


REFUSALS = {
    401: "the tracking server refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME "
         "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a user of the server.",
    403: "the tracking server refused the request (HTTP 403): your user has no permission for "
         "it. An admin grants it with pneumo-exp users grant."}


def refusal(error: BaseException) -> AccessDenied | None:
    """The one message for a server's 401 or 403, or None for any other error. The status
    comes from requests' response, else MLflow's error code, else the message's text."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    code = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(
        str(getattr(error, "error_code", "")))
    text = str(error)
    status = int(status) if status else code or next(
        (s for s in REFUSALS if f"error code {s}" in text or f"{s} Client Error" in text), None)
    return AccessDenied(REFUSALS[status]) if status in REFUSALS else None


def auth_client(uri: str) -> Any:
    from mlflow.server import get_app_client

    return get_app_client("basic-auth", tracking_uri=uri)


def grant(uri: str, username: str, resource_type: str, resource_id: str,
          permission: str) -> None:
    """`permission` on one experiment (by id) or registered model (by name), in place of
    the one the user held there (MLflow keeps one a user and resource)."""
    client = auth_client(uri)
    try:
        client.grant_user_permission(username, resource_type, resource_id, permission)
    except RestException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.revoke_user_permission(username, resource_type, resource_id)
        client.grant_user_permission(username, resource_type, resource_id, permission)
