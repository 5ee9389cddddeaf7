"""Provenance names the code that ran: sinklab's own version, and the commit, marked dirty when tracked files differ
from it, or the one a copied tree declares in SINKLAB_COMMIT."""

from __future__ import annotations

from pathlib import Path

import sinklab
from sinklab import provenance


def test_version_is_the_running_code_s(monkeypatch):
    monkeypatch.setattr(provenance, "_version", lambda package: "0.0.0-stale-metadata")
    assert provenance.run_provenance(None)["sinklab"] == sinklab.__version__


def _fake_git(top: Path, status: str):
    def git(*args):
        if args[0] == "rev-parse":
            return f"{top}\nabc1234\n"
        return status

    return git


def test_commit_is_marked_dirty_when_tracked_files_changed(monkeypatch):
    top = Path(provenance.__file__).resolve().parents[2]  # the checkout: src/sinklab/provenance.py under it
    monkeypatch.setattr(provenance, "_git", _fake_git(top, ""))
    assert provenance._git_commit() == "abc1234"
    monkeypatch.setattr(provenance, "_git", _fake_git(top, " M src/sinklab/provenance.py\n"))
    assert provenance._git_commit() == "abc1234-dirty"


def test_a_copied_tree_or_another_repository_reads_sinklab_commit(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "_git", lambda *args: None)  # no git, or not a repository
    monkeypatch.delenv("SINKLAB_COMMIT", raising=False)
    assert provenance._git_commit() is None
    monkeypatch.setenv("SINKLAB_COMMIT", "def5678")
    assert provenance._git_commit() == "def5678"
    monkeypatch.setattr(provenance, "_git", _fake_git(tmp_path, ""))  # sinklab installed inside another repository
    assert provenance._git_commit() == "def5678"


def test_a_command_keeps_the_commit_it_started_on(monkeypatch):
    top = Path(provenance.__file__).resolve().parents[2]
    monkeypatch.setattr(provenance, "_git", _fake_git(top, ""))
    with provenance.command_line(["scan", "--model", "tiny-llama"]):
        monkeypatch.setattr(provenance, "_git", lambda *args: f"{top}\nfff9999\n" if args[0] == "rev-parse" else "")
        record = provenance.run_provenance(None)
    assert record["sinklab_commit"] == "abc1234" and record["command"] == "sinklab scan --model tiny-llama"
    assert provenance.run_provenance(None)["sinklab_commit"] == "fff9999"  # outside a command: read when written
