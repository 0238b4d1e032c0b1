"""Secrets Manager secrets into the environment: once, JSON objects only, tokens skipped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fmn import secrets

pytestmark = pytest.mark.unit


class FakeSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.calls = values, 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        self.calls += 1
        return {"SecretString": self.values[SecretId]}


def test_variables_of_each_secret_join_the_environment_once(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(secrets, "_loaded", set())
    client = FakeSecrets({"arn:a": json.dumps({"FMN_SECRET_KEY": "k"}),
                          "arn:b": json.dumps({"FMN_IRC_URL": "ircs://n:pw@irc"})})
    env = {"FMN_SECRETS": "arn:a, arn:b", "FMN_IRC_URL": "irc://local"}
    assert secrets.load_secrets(env, client) == 2
    assert env["FMN_SECRET_KEY"] == "k" and env["FMN_IRC_URL"] == "ircs://n:pw@irc"
    assert secrets.load_secrets(env, client) == 0 and client.calls == 2


def test_unresolved_template_values_and_bad_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_loaded", set())
    assert secrets.load_secrets({"FMN_SECRETS": "${Token[TOKEN.12]}"}, FakeSecrets({})) == 0
    with pytest.raises(secrets.SecretError, match="not a JSON object"):
        secrets.load_secrets({"FMN_SECRETS": "arn:x"}, FakeSecrets({"arn:x": "[1]"}))
