"""``fmn sync`` from the command line, on SQLite, the snapshot left alone (``--no-publish``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmn.cli import main

pytestmark = pytest.mark.unit


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_ownership_from_a_file_then_refusals(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    prefs = tmp_path / "prefs.json"
    prefs.write_text(json.dumps({"version": 1, "users": [], "groups": {}, "owners": {
        "rpms": {}, "containers": {}, "modules": {}, "flatpaks": {}}}))
    assert main(["prefs", "import", str(prefs), "--database", url]) == 0
    owner_map = {"rpms": {f"pkg{i}": ["alice", "@sig"] for i in range(60)},
                 "container": {"toolbox": ["bob"]}}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(owner_map))
    sync = ["sync", "ownership", "--from", str(path), "--database", url, "--no-publish"]
    code, out, err = run(capsys, *sync, "--json")
    assert code == 0 and json.loads(out)["artifacts_changed"] == 61, err
    code, _, err = run(capsys, *sync)
    assert code == 0 and "0 artifacts" in err

    for name in list(owner_map["rpms"])[:30]:
        del owner_map["rpms"][name]
    path.write_text(json.dumps(owner_map))
    code, _, err = run(capsys, *sync)
    assert code == 1 and "nothing changed" in err and "refused" in err
    path.write_text(json.dumps(owner_map)[:100])
    code, _, err = run(capsys, *sync)
    assert code == 1 and "fetch failed" in err

    code, out, _ = run(capsys, "status", "--workdir", str(tmp_path / "none"))
    assert code == 2


def test_owner_map_generator_is_fedora_sized(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sync", "owner-map", "--users", "300", "--seed", "3")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["rpms"]) >= 25_000 and set(doc) == {"rpms", "container", "modules",
                                                        "flatpaks"}
    counts = sorted(len([m for m in v if m[0] != "@"]) for v in doc["rpms"].values())
    assert counts[len(counts) // 2] == 1 and counts[-1] >= 5  # most have one, some many
