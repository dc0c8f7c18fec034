"""Profiles: named sets of parameters shared by all notebooks.

A profile is a YAML file in ``notebooks/profiles/`` (``offline`` - the default -, ``paper``,
``smoke``) or any YAML path. Every notebook reads its knobs from one, so switching from the
controlled benchmark to the paper's ImageNet setting is one word::

    profile = load_profile("paper", dataset_kwargs={"root": "/data/imagenet/val"})

Strings may use environment variables (``${PURE_IMAGENET_VAL}``); :func:`check_profile` stops
with an actionable message when one is unset or a required value is missing.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from ..paths import PROFILES_DIR

__all__ = ["load_profile", "read_profile", "profile_path", "check_profile", "profile_names",
           "profile_keys", "from_parameters", "load_yaml", "PROFILES_DIR", "REQUIRED_KEYS",
           "resolve_device"]

#: The default profile: its keys are the keys every profile defines.
DEFAULT_PROFILE = "offline"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def profile_names(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    """Names of the profiles shipped in ``notebooks/profiles/`` (or ``profiles_dir``)."""
    return sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))


def profile_path(name_or_path, profiles_dir: Path = PROFILES_DIR) -> Path:
    """The YAML file of a profile given by name (``"offline"``) or path.

    A name is looked up in ``profiles_dir`` (default: the repository's
    ``notebooks/profiles``).

    Raises
    ------
    ValueError
        Naming the shipped profiles, when neither a file nor a shipped name matches.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ValueError(f"profile file {path} does not exist; profiles: "
                             f"{', '.join(profile_names(profiles_dir))} (or give the path of a "
                             "YAML file)")
        return path
    path = Path(profiles_dir) / f"{text}.yaml"
    if not path.exists():
        raise ValueError(f"profile {text!r} not found; profiles: "
                         f"{', '.join(profile_names(profiles_dir))} (or give the path of a YAML file)")
    return path


def load_yaml(path) -> object:
    """The content of a YAML file; a ``ValueError`` names the file and line of a syntax error."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context, problem = getattr(err, "context", None), getattr(err, "problem", None)
        start = getattr(err, "context_mark", None)
        if context and start is not None:
            context = f"{context} started on line {start.line + 1}"
        what = ": ".join(str(p) for p in (context, problem) if p) or str(err)
        raise ValueError(f"{path}{where}: malformed YAML ({what})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text (YAML) file: {err}") from None


def read_profile(name_or_path, profiles_dir: Path = PROFILES_DIR) -> dict:
    """A profile's keys as written in its YAML file (no defaults, no ``${VAR}`` expansion).

    A malformed file gives a ``ValueError`` naming the file and the line.
    """
    path = profile_path(name_or_path, profiles_dir)
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"profile {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def profile_keys(profiles_dir: Path = PROFILES_DIR) -> set[str]:
    """The keys a profile may (and must) set: those of the default profile, ``offline.yaml``."""
    return set(read_profile(DEFAULT_PROFILE, profiles_dir))


#: Keys every profile must define (notebooks rely on all of them; ``name`` defaults to the
#: file's name).
REQUIRED_KEYS = tuple(sorted(profile_keys() - {"name"}))


def _expand(value):
    """Replace ``${VAR}`` by the environment variable's value (left as is when unset)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_profile(name_or_path: str | os.PathLike | None = None, **overrides) -> dict:
    """Read a profile.

    Parameters
    ----------
    name_or_path : str or path, optional
        A shipped profile name (``"offline"``, ``"paper"``, ``"smoke"``) or a YAML file path.
        Default: ``$PURE_PROFILE`` or ``"offline"``.
    **overrides
        Keys replacing the file's values (nested dicts such as ``dataset_kwargs`` are merged).

    Returns
    -------
    dict
        The profile's keys (see the YAML files for their meaning), with ``name`` set and
        ``${VAR}`` environment references expanded.
    """
    if name_or_path is None:
        name_or_path = os.environ.get("PURE_PROFILE", DEFAULT_PROFILE)
    path = profile_path(name_or_path)
    data = read_profile(path)
    data.setdefault("name", path.stem)
    data = _merge(data, overrides)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"profile {path} lacks the keys {', '.join(missing)} (every key of "
                         f"{profile_path(DEFAULT_PROFILE)} is needed; copy that file to start)")
    return _expand(data)


def check_profile(profile: dict) -> dict:
    """Check that a profile can run here; raise an actionable error otherwise.

    Checks: no unset ``${VAR}`` left, an image folder for ImageNet / image-folder datasets that
    exists. Model and embedder weights are checked when they load (``load_model`` /
    ``load_embedder`` say how to get them).

    Returns
    -------
    dict
        The profile itself.
    """
    def unset(value, where):
        if isinstance(value, str):
            for var in _VAR.findall(value):
                raise ValueError(
                    f"profile {profile.get('name')!r}: {where} uses the environment variable "
                    f"${{{var}}}, which is not set. Set it (export {var}=...) or give the value "
                    f"directly, e.g. load_profile({profile.get('name')!r}, "
                    f"{where.split('.')[0]}=...)")
        elif isinstance(value, dict):
            for k, v in value.items():
                unset(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                unset(v, f"{where}[{i}]")

    for key, value in profile.items():
        unset(value, key)
    if str(profile["dataset"]).lower() in ("imagenet", "imagefolder"):
        for key in ("dataset_kwargs", "heldout_dataset_kwargs"):
            kwargs = profile.get(key) or {}
            if key == "heldout_dataset_kwargs" and not kwargs:
                continue  # no held-out split: the test phase says so where it is needed
            root = kwargs.get("root")
            if not root or not Path(root).is_dir():
                what = "no ImageNet folder given" if not root else f"the folder {root} does not exist"
                raise FileNotFoundError(
                    f"profile {profile.get('name')!r}: {key}.root: {what}. The paper's setting "
                    "needs the ImageNet validation images (50 000 JPEGs in 1000 class folders, as "
                    "made by the usual valprep script; obtain them from https://image-net.org "
                    f"after registering). Set {key}.root in notebooks/profiles/paper.yaml, export "
                    f"PURE_IMAGENET_VAL, or pass load_profile('paper', {key}={{'root': "
                    "'/path/to/val'}).")
    return profile


def resolve_device(device=None) -> str:
    """``None`` / ``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values unchanged."""
    if device in (None, "auto"):
        import torch  # heavy: the book engine reads profiles without ever loading torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def from_parameters(namespace: dict) -> dict:
    """The profile a notebook runs on, built from its parameters.

    ``namespace["profile"]`` (the notebook's ``profile`` parameter) names the base profile.
    Every profile key found in ``namespace`` replaces the base value as a whole: this is how
    ``papermill -f notebooks/profiles/paper.yaml`` and ``-p n_ref 50`` (which inject variables)
    and ``make book`` (which injects the whole profile) reach the notebook.

    Parameters
    ----------
    namespace : dict
        The notebook's ``globals()`` right after its parameters cell.

    Returns
    -------
    dict
        The profile, checked with :func:`check_profile`.
    """
    base = load_profile(namespace.get("profile") or None)
    for key in sorted(profile_keys() & set(namespace)):
        base[key] = _expand(copy.deepcopy(namespace[key]))
    missing = [k for k in REQUIRED_KEYS if k not in base]
    if missing:
        raise ValueError(f"profile lacks the keys {', '.join(missing)}")
    return check_profile(base)
