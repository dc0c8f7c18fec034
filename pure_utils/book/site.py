"""Where the book lives online: its repository's buttons come from one place.

The repository, issue and Binder buttons of the HTML book point at the repository named by the
environment variable ``PURE_BOOK_REPOSITORY`` (the GitHub Actions workflow sets it to
``${{ github.server_url }}/${{ github.repository }}``). Unset, the committed ``_config.yml``
is used as it is, and it shows none of these buttons: a local build never links to a repository
that may not exist.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

__all__ = ["REPOSITORY_ENV", "repository_url", "site_config", "config_arguments"]

#: the environment variable naming the book's repository (``https://github.com/OWNER/NAME``)
REPOSITORY_ENV = "PURE_BOOK_REPOSITORY"
#: the BinderHub of the launch button (the environment: ``binder/requirements.txt``)
BINDER_URL = "https://mybinder.org"
_URL = re.compile(r"https?://[^\s/]+/[^\s/]+/[^\s/]+")


def repository_url(environ=None) -> str | None:
    """The repository URL of :data:`REPOSITORY_ENV` (trailing ``/`` and ``.git`` removed), or
    ``None`` when unset or empty; ``ValueError`` for a value that is not ``https://HOST/OWNER/NAME``."""
    text = (os.environ if environ is None else environ).get(REPOSITORY_ENV, "").strip()
    if not text:
        return None
    url = text.rstrip("/").removesuffix(".git")
    if not _URL.fullmatch(url):
        raise ValueError(f"{REPOSITORY_ENV}={text!r} is not a repository URL; give "
                         "https://HOST/OWNER/NAME (e.g. https://github.com/OWNER/NAME)")
    return url


def site_config(config: dict, repository: str | None) -> dict:
    """``config`` (the parsed ``_config.yml``) with its repository buttons for ``repository``:
    shown and pointing there (Binder: :data:`BINDER_URL`), or, for ``None``, hidden (no
    repository, issue or Binder button)."""
    out = {**config, **{k: dict(config.get(k) or {}) for k in ("repository", "html", "launch_buttons")}}
    out["repository"]["url"] = repository or ""  # "": not jupyter-book's default repository
    out["launch_buttons"]["binderhub_url"] = BINDER_URL if repository else ""
    for button in ("use_repository_button", "use_issues_button"):
        out["html"][button] = repository is not None
    return out


def config_arguments(root: Path, environ=None) -> list[str]:
    """Extra ``jupyter-book build`` arguments: none without a repository; else ``--config`` and
    a copy of ``_config.yml`` with the repository's buttons, written to ``_build/_config.yml``."""
    url = repository_url(environ)
    if url is None:
        return []
    config = yaml.safe_load((Path(root) / "_config.yml").read_text())
    path = Path(root) / "_build" / "_config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(site_config(config, url), sort_keys=False, allow_unicode=True))
    return ["--config", str(path)]
