"""Publishing a built site: to a folder (GitHub Pages) or to a Hugging Face static Space.

Both take the output of `slowrun leaderboard build` as it is. A dry run lists what would be published,
file by file with sizes, and touches nothing: no file written, no network used.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import LeaderboardError
from leaderboard.naming import SITE_MARKER

NOJEKYLL = ".nojekyll"  # tells GitHub Pages to serve the files as they are
HF_SPACE = "hf-space"


@dataclass(frozen=True)
class PlannedFile:
    path: str  # posix, relative to the site root
    size: int


def site_files(site_dir: str | Path) -> list[PlannedFile]:
    """Every file of a built site, sorted; refuses a folder that is not a build."""
    site_dir = Path(site_dir)
    if not (site_dir / "index.html").is_file() or not (site_dir / SITE_MARKER).is_file():
        raise LeaderboardError(f"no built leaderboard at {site_dir}; run `slowrun leaderboard build --out "
                               f"{site_dir}` first")
    files = [PlannedFile(p.relative_to(site_dir).as_posix(), p.stat().st_size)
             for p in site_dir.rglob("*") if p.is_file() and p.name != SITE_MARKER]
    return sorted(files, key=lambda f: f.path)


def format_plan(files: list[PlannedFile], destination: str) -> str:
    total = sum(f.size for f in files)
    lines = [f"{len(files)} files, {total:,} bytes, to {destination}:"]
    lines += [f"  {f.size:>10,}  {f.path}" for f in files]
    return "\n".join(lines)


def publish_to_folder(site_dir: str | Path, destination: str | Path, *, dry_run: bool = False) -> list[PlannedFile]:
    """Copy the site into `destination` with a .nojekyll, ready to serve from GitHub Pages.

    The destination must be new, empty, or an earlier publish (it then is replaced, except `.git`, so a
    checked-out gh-pages branch keeps working).
    """
    site_dir, destination = Path(site_dir), Path(destination)
    files = site_files(site_dir) + [PlannedFile(NOJEKYLL, 0)]
    files.sort(key=lambda f: f.path)
    if destination.resolve() == site_dir.resolve():
        raise LeaderboardError("publish --to must name a folder other than the built site itself")
    if destination.exists():
        if not destination.is_dir():
            raise LeaderboardError(f"{destination} exists and is not a folder; choose another --to")
        earlier = (destination / SITE_MARKER).is_file()
        leftovers = [p.name for p in destination.iterdir() if p.name != ".git"]
        if leftovers and not earlier:
            raise LeaderboardError(f"{destination} holds files that no earlier publish made; choose an empty or "
                                   "new folder, or remove it")
    if dry_run:
        return files
    if destination.exists():
        for entry in destination.iterdir():
            if entry.name == ".git":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    destination.mkdir(parents=True, exist_ok=True)
    for planned in files:
        target = destination / planned.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if planned.path == NOJEKYLL:
            target.write_bytes(b"")
        else:
            shutil.copyfile(site_dir / planned.path, target)
    shutil.copyfile(site_dir / SITE_MARKER, destination / SITE_MARKER)
    return files


def publish_to_hf_space(site_dir: str | Path, repo_id: str, *, dry_run: bool = False, api=None) -> list[PlannedFile]:
    """Upload the site to a static Hugging Face Space (created if missing); `api` defaults to HfApi()."""
    files = site_files(site_dir)
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise LeaderboardError(f"Space id {repo_id!r} should look like OWNER/NAME")
    if dry_run:
        return files
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, repo_type="space", space_sdk="static", exist_ok=True)
        api.upload_folder(folder_path=str(site_dir), repo_id=repo_id, repo_type="space",
                          ignore_patterns=[SITE_MARKER], commit_message="Update the Slowrun leaderboard")
    except Exception as exc:  # network and authentication errors come in many types
        raise LeaderboardError(f"could not publish to the Space {repo_id}: {exc} (check the network and "
                               "`huggingface-cli login`; --dry-run shows what would be sent)") from exc
    return files


def publish_site(site_dir: str | Path, to: list[str], *, dry_run: bool = False) -> tuple[list[PlannedFile], str]:
    """Dispatch on the command line's `--to`: `[FOLDER]` or `["hf-space", "OWNER/NAME"]`."""
    if to and to[0] == HF_SPACE:
        if len(to) != 2:
            raise LeaderboardError(f"--to {HF_SPACE} takes the Space id: --to {HF_SPACE} OWNER/NAME")
        return publish_to_hf_space(site_dir, to[1], dry_run=dry_run), f"Hugging Face Space {to[1]}"
    if len(to) != 1:
        raise LeaderboardError(f"--to takes one folder, or `{HF_SPACE} OWNER/NAME`")
    return publish_to_folder(site_dir, to[0], dry_run=dry_run), to[0]
