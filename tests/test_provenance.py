"""provenance.git_commit: the commit a result file records."""

import shutil
import subprocess

import pytest

from keras_effcnn import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_clean_dirty_and_outside(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("1\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert provenance.git_commit(repo) == head
    assert provenance.git_commit(repo / "a.txt") == head  # a file inside the checkout names it too
    (repo / "untracked.txt").write_text("x\n")
    assert provenance.git_commit(repo) == head  # untracked files (run outputs) do not change the code
    (repo / "a.txt").write_text("2\n")
    assert provenance.git_commit(repo) == head + " (+ uncommitted changes)"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert provenance.git_commit(outside) is None
