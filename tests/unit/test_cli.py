"""The ``fmn`` command, driven in-process as a user would type it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import GOLDEN, MESSAGES

from fmn.cli import main

pytestmark = pytest.mark.unit


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, str]:
    code = main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.mark.parametrize("engine", ["indexed", "naive"])
def test_match_prints_exactly_the_golden_notifications(
        capsysbinary: pytest.CaptureFixture[bytes], engine: str) -> None:
    code, out, err = run(capsysbinary, "match", "--engine", engine,
                         "--prefs", str(GOLDEN / "prefs.json"),
                         "--messages", str(GOLDEN / "messages.jsonl"))
    assert (code, err) == (0, "")
    assert out == (GOLDEN / "expected.jsonl").read_bytes()


@pytest.mark.slow
def test_both_engines_print_the_same_on_generated_prefs(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    code, out, _ = run(capsysbinary, "prefs", "generate", "--users", "400", "--seed", "7")
    assert code == 0
    prefs = tmp_path / "prefs.json"
    prefs.write_bytes(out)
    messages = tmp_path / "messages.jsonl"
    messages.write_bytes((MESSAGES / "fedmsg.jsonl").read_bytes()
                         + (MESSAGES / "fedora-messaging.jsonl").read_bytes())
    outputs = {}
    for engine in ("indexed", "naive"):
        code, out, _ = run(capsysbinary, "match", "--engine", engine, "--prefs", str(prefs),
                           "--messages", str(messages))
        assert code == 0
        outputs[engine] = out
    assert outputs["indexed"] == outputs["naive"]
    assert outputs["indexed"].count(b"\n") > 100, "the generated rules must fire"


def test_bad_message_lines_are_reported_and_the_rest_matched(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    good = (GOLDEN / "messages.jsonl").read_text().splitlines()[:40]
    messages = tmp_path / "messages.jsonl"
    messages.write_text("\n".join([good[0], "{not json", '{"msg": {}}', "", *good[1:]]) + "\n")
    code, out, err = run(capsysbinary, "match", "--prefs", str(GOLDEN / "prefs.json"),
                         "--messages", str(messages))
    assert code == 1
    assert f"{messages}:2: refused: not-json" in err
    assert f"{messages}:3: refused: missing-topic" in err
    expected_ids = {json.loads(line).get("id") or json.loads(line).get("msg_id") for line in good}
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed and {n["message_id"] for n in printed} <= expected_ids


def test_invalid_prefs_are_refused_naming_the_field(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    doc = json.loads((GOLDEN / "prefs.json").read_text())
    doc["users"][2]["rules"][0]["tracking"]["kind"] = "everything"
    prefs = tmp_path / "prefs.json"
    prefs.write_text(json.dumps(doc))
    code, out, err = run(capsysbinary, "match", "--prefs", str(prefs),
                         "--messages", str(GOLDEN / "messages.jsonl"))
    assert (code, out) == (2, b"")
    assert "users[2] (adamw) > rules[0]" in err and "tracking > kind" in err


def test_missing_file_is_a_clear_error(capsysbinary: pytest.CaptureFixture[bytes],
                                       tmp_path: Path) -> None:
    code, _, err = run(capsysbinary, "match", "--prefs", str(tmp_path / "nope.json"),
                       "--messages", str(GOLDEN / "messages.jsonl"))
    assert code == 2 and "cannot read preferences" in err and "nope.json" in err


def test_metadata_prints_spec_fields(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, _ = run(capsysbinary, "metadata", "--messages", str(GOLDEN / "messages.jsonl"))
    assert code == 0
    first = json.loads(out.splitlines()[0])
    expected = json.loads((GOLDEN / "metadata.jsonl").read_text().splitlines()[0])
    for key in ("id", "topic", "app_name", "agent_name", "usernames", "severity"):
        assert first[key] == expected[key]


def test_prefs_import_then_export_gives_the_same_document(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fmn.sqlite'}"
    code, _, err = run(capsysbinary, "prefs", "import", str(GOLDEN / "prefs.json"),
                       "--database", url)
    assert code == 0 and "imported 224 users" in err
    code, out, _ = run(capsysbinary, "prefs", "export", "--database", url)
    assert code == 0
    assert json.loads(out) == json.loads((GOLDEN / "prefs.json").read_text())


@pytest.mark.parametrize(("argv", "says"), [
    (["match", "--prefs", str(GOLDEN / "prefs.json"), "--messages", "{tmp}/missing.jsonl"],
     "No such file or directory"),
    (["match", "--prefs", str(GOLDEN / "prefs.json"), "--messages", "{tmp}"],
     "Is a directory"),
    (["bench", "match", "--users", "abc"], "--users takes user counts"),
    (["bench", "email", "--fanout", "0"], "--fanout must be at least 1"),
    (["bench", "email", "--duration", "nan"], "--duration a number of seconds above 0"),
    (["bench", "email", "--messages", "{tmp}/empty.jsonl"], "no messages in"),
    (["bench", "email", "--messages", "{tmp}/bad.jsonl"], "bad.jsonl:2: not a bus message"),
    (["bench", "bridge", "--messages", "0"], "--messages and --rounds must be at least 1"),
    (["bench", "bridge", "--files", "{tmp}/empty.jsonl"], "no messages in"),
    (["prefs", "import", str(GOLDEN / "prefs.json"), "--database", "bogus://x"],
     "not a usable database URL"),
    (["prefs", "export", "--database", "sqlite:///{tmp}/empty.sqlite"], "database error"),
])
def test_errors_are_a_message_not_a_traceback(capsysbinary: pytest.CaptureFixture[bytes],
                                              tmp_path: Path, argv: list[str],
                                              says: str) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    first = (GOLDEN / "messages.jsonl").read_text().splitlines()[0]
    (tmp_path / "bad.jsonl").write_text(first + "\n{not json\n")
    code, _, err = run(capsysbinary, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert err.startswith("fmn: error: ") and says in err and "Traceback" not in err


def test_bench_email_prints_and_writes_its_figures(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    messages = tmp_path / "two.jsonl"
    messages.write_bytes(b"".join((MESSAGES / "fedmsg.jsonl").read_bytes().splitlines(True)[:2]))
    code, out, _ = run(capsysbinary, "bench", "email", "--fanout", "2", "--duration", "0.2",
                       "--messages", str(messages), "--json", str(tmp_path / "email.json"))
    assert code == 0 and b"ms CPU per mail" in out
    figures = json.loads((tmp_path / "email.json").read_text())
    assert figures["fanout"] == 2 and figures["mails"] > 0 and figures["cpu_ms_per_mail"] > 0


def test_bench_bridge_prints_and_writes_its_figures(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    code, out, _ = run(capsysbinary, "bench", "bridge", "--messages", "1500", "--rounds", "1",
                       "--files", str(MESSAGES / "fedmsg.jsonl"),
                       "--json", str(tmp_path / "bridge.json"))
    assert code == 0 and b"us CPU a message" in out and b"drained at" in out
    figures = json.loads((tmp_path / "bridge.json").read_text())
    assert figures["rounds"]["journal"][0]["journaled"] == 1500
    assert figures["rounds"]["no journal"][0]["journaled"] == 0
    assert figures["outage"][0]["spilled"] > 0  # past the outage's buffer of 1,000


def test_feed_url_signs_a_token_for_the_user(capsysbinary: pytest.CaptureFixture[bytes],
                                             tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    from fmn.auth import verify

    code, out, _ = run(capsysbinary, "feed-url", "alice", "--url", "http://127.0.0.1:9/")
    assert code == 0
    url = urlsplit(out.decode().strip())
    assert url.netloc == "127.0.0.1:9" and url.path == "/feed"
    token = parse_qs(url.query)["token"][0]
    assert verify(token, "development-only-secret-key", "feed", 60) == "alice"
    # no running stack and no --url: a clear error
    code, _, err = run(capsysbinary, "feed-url", "alice", "--workdir", str(tmp_path))
    assert code != 0 and "--url" in err and "Traceback" not in err


def test_prefs_import_refuses_what_the_snapshot_cannot_hold(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    doc = json.loads((GOLDEN / "prefs.json").read_text())
    # (a lone surrogate is refused earlier: the file is not JSON to the reader)
    doc["users"][0]["rules"][0]["generation_rules"][0]["filters"]["fields"] = {"\ufffe": [1]}
    bad = tmp_path / "prefs.json"
    bad.write_text(json.dumps(doc))
    url = f"sqlite:///{tmp_path / 'fmn.sqlite'}"
    code, _, err = run(capsysbinary, "prefs", "import", str(bad), "--database", url)
    assert code == 2 and "U+FFFE/U+FFFF" in err and "fields" in err
