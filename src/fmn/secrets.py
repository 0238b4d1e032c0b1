"""Secrets from AWS Secrets Manager, into the environment the settings read.

A deployed function gets ``FMN_SECRETS``: comma-separated ARNs of secrets,
each a JSON object of setting variables (``{"FMN_SECRET_KEY": "..."}``,
``{"FMN_DATABASE_URL": "..."}``, ``{"FMN_IRC_URL": "ircs://nick:password@..."}``).
:func:`load_secrets` reads them once per process and puts their variables
into ``os.environ``, so :class:`fmn.settings.Settings` (and everything that
reads the environment) sees them without a secret ever being a plain
environment variable of the function.  Without ``FMN_SECRETS`` it does
nothing (local runs, tests).  boto3 is imported only when there is work.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import MutableMapping

VARIABLE = "FMN_SECRETS"
_loaded: set[str] = set()
_lock = threading.Lock()


class SecretError(RuntimeError):
    """A secret named in ``FMN_SECRETS`` is missing or not a JSON object of strings."""


def load_secrets(environ: MutableMapping[str, str] | None = None, client: object = None) -> int:
    """Put the variables of every secret in ``FMN_SECRETS`` into ``environ``; how many.

    Each secret is fetched once per process.  A secret's value replaces the
    variable's (an app's ``.chalice/config.json`` carries local defaults).
    """
    env = os.environ if environ is None else environ
    # "${Token[...]}": an unresolved template value (Chalice imports apps while
    # packaging them with the deployment's variables): nothing to read yet
    arns = [a.strip() for a in env.get(VARIABLE, "").split(",")
            if a.strip() and not a.strip().startswith("${Token[")]
    todo = [a for a in arns if a not in _loaded]
    if not todo:
        return 0
    with _lock:
        if client is None:
            from fmn.aws import client as aws_client
            from fmn.settings import Settings

            client = aws_client("secretsmanager", Settings.from_env(env))
        count = 0
        for arn in todo:
            try:
                raw = client.get_secret_value(SecretId=arn)["SecretString"]  # type: ignore[attr-defined]
                values = json.loads(raw)
            except Exception as exc:  # botocore errors, not JSON
                raise SecretError(f"secret {arn}: {exc}") from exc
            if not isinstance(values, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
                raise SecretError(f"secret {arn} is not a JSON object of strings")
            for name, value in values.items():
                if value:
                    env[name] = value
                    count += 1
            _loaded.add(arn)
        return count
