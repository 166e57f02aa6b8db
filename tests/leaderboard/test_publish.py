"""Publishing a built site to a folder (GitHub Pages) or a Hugging Face Space, and the dry runs."""

from __future__ import annotations

import pytest

from harness.errors import LeaderboardError
from leaderboard.publish import publish_site, publish_to_folder, publish_to_hf_space, site_files
from leaderboard.site import build_site
from tests.leaderboard.factory import make_record, write_board


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    write_board(root / "records", [make_record(0), make_record(1)])
    build_site(root / "records", root / "site", workers=1)
    return root / "site"


def expected_files(site):
    return sorted((p.relative_to(site).as_posix(), p.stat().st_size) for p in site.rglob("*")
                  if p.is_file() and p.name != ".slowrun-leaderboard")


def test_site_files_lists_every_file_with_its_size(site):
    assert [(f.path, f.size) for f in site_files(site)] == expected_files(site)


def test_folder_dry_run_writes_nothing(site, tmp_path):
    files = publish_to_folder(site, tmp_path / "pages", dry_run=True)
    assert not (tmp_path / "pages").exists()
    assert [(f.path, f.size) for f in files] == sorted(expected_files(site) + [(".nojekyll", 0)])


def test_folder_publish_copies_the_site_with_nojekyll(site, tmp_path):
    publish_to_folder(site, tmp_path / "pages")
    assert (tmp_path / "pages" / ".nojekyll").read_bytes() == b""
    for path, _ in expected_files(site):
        assert (tmp_path / "pages" / path).read_bytes() == (site / path).read_bytes()


def test_republishing_replaces_an_earlier_publish_and_keeps_git(site, tmp_path):
    pages = tmp_path / "pages"
    publish_to_folder(site, pages)
    (pages / ".git").mkdir()
    (pages / ".git" / "HEAD").write_text("ref: refs/heads/gh-pages\n")
    (pages / "stale.html").write_text("old")
    publish_to_folder(site, pages)
    assert not (pages / "stale.html").exists()
    assert (pages / ".git" / "HEAD").read_text() == "ref: refs/heads/gh-pages\n"
    assert (pages / "index.html").read_bytes() == (site / "index.html").read_bytes()


def test_a_foreign_folder_is_not_overwritten(site, tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "mine.txt").write_text("keep")
    with pytest.raises(LeaderboardError, match="no earlier publish"):
        publish_to_folder(site, tmp_path / "pages")
    assert [p.name for p in (tmp_path / "pages").iterdir()] == ["mine.txt"]


def test_an_unbuilt_site_is_refused(tmp_path):
    with pytest.raises(LeaderboardError, match="leaderboard build"):
        publish_to_folder(tmp_path, tmp_path / "pages")


def test_hf_space_dry_run_uses_no_network(site, monkeypatch):
    import huggingface_hub

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the dry run must not create a Hub client")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    files, destination = publish_site(site, ["hf-space", "someone/slowrun-board"], dry_run=True)
    assert [(f.path, f.size) for f in files] == expected_files(site)
    assert destination == "Hugging Face Space someone/slowrun-board"


class RecordingApi:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        if self.fail:
            raise ConnectionError("Hub unreachable")

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_hf_space_creates_a_static_space_and_uploads_the_folder(site):
    api = RecordingApi()
    publish_to_hf_space(site, "someone/board", api=api)
    (name1, create), (name2, upload) = api.calls
    assert name1 == "create_repo" and create["repo_type"] == "space" and create["space_sdk"] == "static"
    assert create["exist_ok"] is True and create["repo_id"] == "someone/board"
    assert name2 == "upload_folder" and upload["folder_path"] == str(site) and upload["repo_type"] == "space"
    assert upload["repo_id"] == "someone/board"


def test_hub_failures_become_clear_errors(site):
    with pytest.raises(LeaderboardError, match="could not publish to the Space someone/board.*--dry-run"):
        publish_to_hf_space(site, "someone/board", api=RecordingApi(fail=True))


@pytest.mark.parametrize("to", [["hf-space"], ["hf-space", "noslash"], ["a", "b"]])
def test_bad_destinations_are_refused(site, to):
    with pytest.raises(LeaderboardError):
        publish_site(site, to, dry_run=True)
