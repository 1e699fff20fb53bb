"""What a holder trusts (fedlearn.app_trust), without processes (the end-to-end
refusal of a file-reading app is in test_e2e_trust)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlearn.app_trust import AppTrust, fab_sha256, fedlearn_app_hash, task_command
from fedlearn.cli import app
from fedlearn.deployment import supernode_command, write_app


def test_fedlearns_hash_is_the_bundle_flwr_run_builds_from_the_servers_app(
    tmp_path: Path,
) -> None:
    from flwr.cli.build import build_fab_from_disk

    built = build_fab_from_disk(write_app(tmp_path / "app"))
    assert fab_sha256(built) == fedlearn_app_hash()
    # The bundle carries no code: the ClientApp it names is the holder's installed one.
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(built)).namelist()
    assert sorted(names) == [".info/CONTENT", "pyproject.toml"]


def test_the_hash_binds_fedlearns_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedlearn.deployment

    ours = fedlearn_app_hash()
    fedlearn_app_hash.cache_clear()
    monkeypatch.setattr(fedlearn.deployment, "__version__", "99.0.0")
    try:
        assert fedlearn_app_hash() != ours
    finally:
        fedlearn_app_hash.cache_clear()


def test_pinned_hashes_are_validated_and_normalized() -> None:
    digest = "AB" * 32
    trust = AppTrust.for_holder([digest, digest.lower()])
    assert trust.pinned == ("ab" * 32,)
    assert trust.hashes == {fedlearn_app_hash(), "ab" * 32}
    assert "ab" * 32 in trust.describe()
    for bad in ("abc", "g" * 64, "ab" * 33, ""):
        with pytest.raises(ValueError, match="64 hex digits"):
            AppTrust.for_holder([bad])


def test_the_supernode_runs_no_app_itself(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("f0,label\n1,0\n")
    cmd = supernode_command(
        superlink="127.0.0.1:9092",
        data_path=data,
        root_certificates=None,
        port=9094,
        superexec_secret=tmp_path / "secret",
    )
    assert cmd[cmd.index("--isolation") + 1] == "process"
    assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "secret")


def test_a_task_process_gets_no_token_on_its_command_line() -> None:
    cmd = task_command(runtime_api_address="127.0.0.1:9094", trusted=frozenset({"a"}), parent_pid=1)
    assert "--token" not in cmd
    assert cmd[cmd.index("--trusted") + 1] == "a"


def test_client_refuses_a_malformed_pinned_hash(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("f0,label\n1,0\n")
    result = CliRunner().invoke(
        app,
        [
            "client",
            "--superlink",
            "127.0.0.1:1",
            "--data",
            str(data),
            "--insecure",
            "--trust-app-hash",
            "not-a-hash",
        ],
    )
    assert result.exit_code == 2
    assert "64 hex digits" in result.output
