"""``fmn bench email --send``: the sender's whole path, against the real Redis and a sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import MESSAGES

from fmn.cli import main

pytestmark = pytest.mark.integration


def test_bench_email_send_prints_and_writes_its_figures_and_leaves_no_keys(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services import REDIS_URL, redis_client

    client = redis_client()
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    messages = tmp_path / "two.jsonl"
    messages.write_bytes(b"".join((MESSAGES / "fedmsg.jsonl").read_bytes().splitlines(True)[:2]))
    code = main(["bench", "email", "--send", "--fanout", "3", "--duration", "0.3",
                 "--messages", str(messages), "--json", str(tmp_path / "send.json")])
    out = capsysbinary.readouterr().out
    assert code == 0 and b"ms CPU a mail in the sender" in out
    figures = json.loads((tmp_path / "send.json").read_text())
    assert figures["mode"] == "send" and figures["fanout"] == 3 and figures["mails"] > 0
    assert figures["cpu_ms_per_mail"] > 0 and figures["sink_cpu_ms_per_mail"] >= 0
    assert not list(client.scan_iter(match="fmn-bench-email-*"))


def test_bench_email_send_says_where_it_looked_for_redis(
        capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    code = main(["bench", "email", "--send", "--duration", "0.1"])
    err = capsysbinary.readouterr().err.decode()
    assert code == 2 and "needs Redis at redis://127.0.0.1:9/0" in err, err
    assert "Traceback" not in err
