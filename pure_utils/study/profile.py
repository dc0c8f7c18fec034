"""Profiles: named sets of parameters shared by all notebooks.

A profile is a :class:`Profile`: a frozen dataclass whose fields are the keys every notebook
reads, each with its type, its meaning and its default - the default profile, ``offline`` (the
controlled benchmark). A YAML file in ``notebooks/profiles/`` (``offline``, ``paper``,
``smoke``) or any YAML path lists the keys it sets; every other key keeps its default, so
``paper.yaml`` and ``smoke.yaml`` list only what differs from ``offline.yaml``. Switching from
the controlled benchmark to the paper's ImageNet setting is one word::

    profile = load_profile("paper", {"dataset_kwargs": {"root": "/data/imagenet/val"}})
    profile.n_ref, profile["n_ref"]      # 100, as attribute or as mapping key

Every value is checked when a profile is built (from a file, a mapping, ``dataclasses.replace``
or the notebook's parameters): an unknown key is refused with the closest known keys, a value
of the wrong type with the file, the key, the value and the type expected (see
:class:`Profile` for the few conversions). Strings may use environment variables
(``${PURE_IMAGENET_VAL}``); :func:`check_profile` stops with an actionable message when one is
unset or a required folder is missing.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..paths import PROFILES_DIR

__all__ = ["Profile", "ProfileError", "load_profile", "as_profile", "read_profile", "profile_path",
           "check_profile", "profile_names", "profile_keys", "closest_keys", "from_parameters",
           "load_yaml", "profile_device", "PROFILES_DIR", "PROFILE_KEYS", "DEFAULT_PROFILE"]

#: The default profile: the defaults of :class:`Profile`, written out key by key.
DEFAULT_PROFILE = "offline"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProfileError(ValueError):
    """A profile key that does not exist, or a value of the wrong type."""


def _key(default, doc: str):
    """A profile key: its default (the value of ``offline.yaml``) and its meaning."""
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.deepcopy, default),
                     metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Profile(Mapping):
    """The parameters every notebook shares; the defaults are those of ``offline.yaml``.

    Each field's meaning is in its ``metadata["doc"]`` (and beside the key in
    ``notebooks/profiles/offline.yaml``). A profile is frozen: change it with
    ``dataclasses.replace(p, n_ref=50)`` (checked again) or :func:`load_profile`'s
    ``overrides``. It is also a read-only mapping, as profiles were plain dicts before:
    ``p["n_ref"]``, ``p.get("n_ref", 100)``, ``"n_ref" in p``, ``dict(p)``, ``{**p}``,
    :meth:`to_dict`. Its lists and dicts are returned as they are: do not mutate them.

    Types are checked when a profile is built; the only conversions are

    - a boolean given as the text ``"true"`` / ``"false"`` (any case; what ``papermill -p cache
      false`` or a quoted YAML value gives) becomes ``True`` / ``False``; any other text, and
      the numbers 0 and 1, are refused;
    - an integer where a float is expected becomes that float (``ci_level: 1`` is 1.0);
    - a tuple where a list is expected becomes a list, a path (``os.PathLike``) where text is
      expected its text (``cache``, ``checkpoint``).

    A float where an integer is expected (``n_ref: 2.5``, even ``2.0``) is refused, and lists of
    integers are checked element by element. :class:`ProfileError` (a ``ValueError``) names the
    source, the key, the value and the type expected.
    """

    name: str = _key("offline", "the profile's name, shown in the book (default: the file's name)")

    # --- model ---------------------------------------------------------------------------------
    model_name: str = _key("synthetic_resnet_bottleneck",
                           "model studied by single-model notebooks (a load_model name)")
    model_names: list[str] = _key(["synthetic_resnet_basic", "synthetic_resnet_bottleneck"],
                                  "models compared across architectures")
    pretrained: bool = _key(False, "timm names only: load timm's pretrained weights (shipped "
                            "models always load theirs)")
    checkpoint: str | None = _key(None, "optional local state dict loaded after building the model")
    randomize_batchnorm: bool = _key(False, "re-randomise BatchNorm (only for random-init models, "
                                     "e.g. smoke)")

    # --- data ----------------------------------------------------------------------------------
    dataset: str = _key("synthetic", "load_dataset name")
    dataset_kwargs: dict | None = _key({"split": "test", "n": 3000, "seed": 0},
                                       "keywords of load_dataset: the split the references are "
                                       "mined on")
    heldout_dataset_kwargs: dict | None = _key({"split": "val", "n": 2000, "seed": 0},
                                               "held-out images for the test phase (null: skip)")
    has_concepts: bool = _key(True, "the dataset can be edited and annotated: ground truth by "
                              "intervention")
    own_distribution: bool = _key(True, "a shipped model whose card records its generator settings "
                                  "is evaluated on images of those settings (same split, size and "
                                  "seed); false: every model on the profile's dataset")

    # --- neurons and circuits ------------------------------------------------------------------
    layer: str = _key("layer4", "layer L of the studied neurons")
    lower_layer: str | list[str] = _key("layer3", "layer L-1 of the circuits (a list: "
                                        "concatenated, a \"fuller circuit\")")
    n_ref: int = _key(100, "reference samples per neuron (most activating, spatial max)")
    n_neurons: int | None = _key(None, "null: evaluate all neurons of the layer; an int: a "
                                 "seeded random subset")
    neuron_seed: int = _key(0, "seed of that subset")
    attribution: str = _key("gxa", "PURE attribution: Gradient x Activation (Eq. 3)")
    attributions: list[str] = _key(["gxa", "epsilon_plus_flat"], "attributions compared in the "
                                   "ground-truth scores and ablations (gxa + LRP)")
    batch_size: int = _key(64, "images per forward / backward pass")
    device: str | None = _key("cpu", "cpu, cuda, or auto (null too: cuda when available)")
    cache: bool | str | None = _key(True, "keep references, circuits, crops, embeddings in "
                                    "$PURE_CACHE_DIR (.cache/pure), or in this folder")

    # --- clustering ----------------------------------------------------------------------------
    ks: list[int] = _key([2, 3, 4, 5], "numbers of virtual neurons compared (k = 2 is the paper's "
                         "main setting)")
    random_state: int = _key(0, "k-means seed (scikit-learn, as in the reference pipeline)")
    n_init: int = _key(10, "k-means restarts")

    # --- feature visualisations (Appendix A.1) -------------------------------------------------
    composite: str = _key("epsilon_plus_flat", "zennit composite of the heatmaps (with "
                          "canonizers_for(model))")
    crop_blur_kernel: int = _key(5, "evaluation crop: Gaussian blur kernel")
    crop_threshold: float = _key(0.02, "evaluation crop: relative relevance of the bounding box")
    display_blur_kernel: int = _key(51, "display crop: Gaussian blur kernel")
    display_threshold: float = _key(0.01, "display crop: relative relevance of the bounding box")
    display_dim_threshold: float = _key(0.02, "display crop: relevance below which pixels are "
                                        "dimmed")
    display_alpha: float = _key(0.4, "display crop: opacity of dimmed pixels")

    # --- embedders (Eq. 4-5) -------------------------------------------------------------------
    embedder: str = _key("attributes", "the embedder in CLIP's role (load_embedder name; "
                         "attributes: a reader of the colours and shapes inside each crop)")
    embedder_pretrained: bool = _key(False, "load the pretrained weights of that embedder")
    embedder_kwargs: dict | None = _key({}, "keywords of load_embedder for that embedder")
    embedder_label: str = _key("attribute reader", "name of the CLIP role in tables and figures")
    visual_embedder: str | None = _key("dinov2", "the embedder in DINOv2's role (null: none)")
    visual_embedder_pretrained: bool = _key(False, "load the pretrained weights of that embedder")
    visual_embedder_kwargs: dict | None = _key(
        {"image_size": 64, "config": {"hidden_size": 64, "num_hidden_layers": 4,
                                      "num_attention_heads": 4, "intermediate_size": 128}},
        "keywords of load_embedder for that embedder")
    visual_embedder_label: str | None = _key("DINOv2 (random init)", "name of the DINOv2 role in "
                                             "tables and figures")
    embedder_note: str | None = _key(
        "Offline, a reader of the annotated colours and shapes inside each crop plays the role "
        "of CLIP (crops of red objects are close, a crop holding two objects lies between them), "
        "and a DINOv2 with random weights embeds the crops in the role of DINOv2: it measures "
        "low-level visual similarity only, so it is a lower reference.",
        "what the two embedders are, in a sentence of the book")

    # --- distance correlation (Fig. 4 bottom) --------------------------------------------------
    correlation_n_samples: int = _key(50, "reference samples per neuron")
    correlation_n_subsets: int = _key(8, "random groups of neurons (the paper: 30)")
    correlation_seed: int = _key(0, "seed of the grouping")

    # --- summaries -----------------------------------------------------------------------------
    n_boot: int = _key(1000, "bootstrap resamples of the 95% intervals")
    ci_level: float = _key(0.95, "interval coverage")
    polysemantic_min_share: float = _key(0.2, "ground truth: a unit's true features each hold "
                                         "this share of its references; >= 2: polysemantic")
    strong_polysemanticity: float = _key(1.5, "without ground truth: strongly polysemantic = "
                                         "CLIP-role gap above this (the paper's 1.5)")
    n_divergence: int = _key(4, "divergence examples shown (Fig. 4 right)")

    # --- the model family ("When do circuits beat activations?") -------------------------------
    family_models: list[str] = _key(
        ["family_distractors_0", "family_distractors_1-3", "family_distractors_4-6",
         "family_large_1-3", "family_large_4-6", "family_width_16", "family_width_64",
         "family_background", "family_planted"], "shipped models trained by `make family`")
    family_planted: str | None = _key("family_planted", "the model with planted units (the "
                                      "controls), or null")
    graft_model: str | None = _key("synthetic_resnet_bottleneck", "the model the grafted units "
                                   "of 'When do circuits beat activations?' are built on (null: "
                                   "no grafted units)")

    # --- other architecture families ("PURE beyond ResNets") -----------------------------------
    architecture_models: list[str] = _key(
        ["synthetic_resnet_basic", "synthetic_resnet_bottleneck", "synthetic_convnext"],
        "models of several architecture families, scored side by side")
    model_layers: dict | None = _key(
        {"synthetic_convnext": {"layer": "stages.3", "lower_layer": "stages.2"}},
        "per model: layers that replace layer / lower_layer")

    # --- the figures' own settings (null neurons: chosen by the code, rank_neurons) ------------
    fig1_model: str = _key("synthetic_resnet_bottleneck", "Fig. 1 (one unit, two virtual neurons)")
    fig1_neuron: int | None = _key(None, "Fig. 1's unit (null: chosen by the code)")
    fig2_model: str = _key("synthetic_resnet_bottleneck", "Fig. 2 (the method step by step)")
    fig2_neuron: int | None = _key(None, "Fig. 2's unit (null: chosen by the code)")
    fig3_model: str = _key("synthetic_resnet_bottleneck", "Fig. 3 (units of varying "
                           "polysemanticity)")
    fig3_neurons: list[int] | None = _key(None, "Fig. 3's units (null: the 2 most and the 2 "
                                          "least polysemantic)")
    fig4_model: str = _key("synthetic_resnet_bottleneck", "Fig. 4 (PURE against activations)")
    fig4_divergence_neuron: int | None = _key(None, "Fig. 4 right (null: the largest divergence)")

    def __post_init__(self):
        for key, tp in _types().items():
            value = getattr(self, key)
            try:
                converted = _convert(value, tp, key)
            except _Mismatch as bad:
                text = str(bad) if bad.where == key else f"{key} = {value!r}: {bad}"
                raise ProfileError(text) from None
            object.__setattr__(self, key, converted)

    # --- keys that travel together, as the keywords of the functions that take them -------------
    @property
    def clustering(self) -> dict:
        """k-means' keywords: ``{"random_state": ..., "n_init": ...}`` (``VirtualNeurons``, the
        tables of :mod:`pure_utils.study.tables` and :mod:`~pure_utils.study.ablations`)."""
        return {"random_state": self.random_state, "n_init": self.n_init}

    @property
    def intervals(self) -> dict:
        """The intervals' keywords: ``{"n_boot": ..., "level": ...}`` (``ci_level`` as
        ``level``)."""
        return {"n_boot": self.n_boot, "level": self.ci_level}

    @property
    def evaluation_crop(self) -> dict:
        """The evaluation crop's keywords: ``{"blur_kernel": ..., "threshold": ...}``
        (:func:`~pure_utils.crops.crop_boxes`, :func:`~pure_utils.crops.feature_crops`)."""
        return {"blur_kernel": self.crop_blur_kernel, "threshold": self.crop_threshold}

    @property
    def display_crop(self) -> dict:
        """The display crop's keywords (:func:`~pure_utils.crops.display_crops`):
        ``blur_kernel``, ``threshold``, ``dim_threshold`` and ``alpha``."""
        return {"blur_kernel": self.display_blur_kernel, "threshold": self.display_threshold,
                "dim_threshold": self.display_dim_threshold, "alpha": self.display_alpha}

    # --- the read-only mapping -----------------------------------------------------------------
    def __getitem__(self, key):
        if key not in self:
            raise KeyError(f"{key!r} is not a profile key{_suggestion(key)}")
        return getattr(self, key)

    def __iter__(self):
        return iter(PROFILE_KEYS)

    def __len__(self) -> int:
        return len(PROFILE_KEYS)

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key in _KEY_SET

    def to_dict(self) -> dict:
        """Every key and its value, as a plain dict (a deep copy, in the order of the fields)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in PROFILE_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "(a mapping)") -> "Profile":
        """A profile from a mapping of some keys; every other key keeps its default.

        Parameters
        ----------
        data : mapping
            Keys of :class:`Profile` and their values (replacing the defaults as a whole).
        source : str
            Where ``data`` comes from (a file's path): named by the errors.

        Raises
        ------
        ProfileError
            For an unknown key (with the closest known keys) or a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ProfileError(f"profile {source} must hold a mapping of keys, got "
                               f"{type(data).__name__}")
        unknown = [k for k in data if k not in _KEY_SET]
        if unknown:
            raise ProfileError(f"profile {source}: " + "; ".join(
                f"unknown key {k!r}{_suggestion(k)}" for k in unknown)
                + f" (every key is listed in {PROFILES_DIR / (DEFAULT_PROFILE + '.yaml')})")
        try:
            return cls(**copy.deepcopy(dict(data)))
        except ProfileError as err:
            raise ProfileError(f"profile {source}: {err}") from None


#: The keys of a profile, in the order of ``offline.yaml``.
PROFILE_KEYS = tuple(f.name for f in dataclasses.fields(Profile))
_KEY_SET = frozenset(PROFILE_KEYS)


class _Mismatch(Exception):
    """A value (or one element of it, at ``where``) of the wrong type."""

    def __init__(self, where: str, value, expected):
        super().__init__(f"{where} = {value!r} is {_kind(value)}, expected {_describe(expected)}")
        self.where = where


@functools.cache
def _types() -> dict:
    """key -> its type (the annotations of :class:`Profile`, evaluated)."""
    hints = typing.get_type_hints(Profile)
    return {k: hints[k] for k in PROFILE_KEYS}


def _kind(value) -> str:
    kinds = {type(None): "null", bool: "a boolean", int: "an integer", float: "a float",
             str: "text", list: "a list", tuple: "a tuple", dict: "a mapping"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _describe(tp) -> str:
    """The type ``tp`` in words: ``"a list of integers"``, ``"null or text"``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return "a list of " + {int: "integers", str: "texts"}.get(item, _describe(item))
    words = {type(None): "null", bool: "true or false (or the text 'true' / 'false')",
             int: "an integer", float: "a number", str: "text", dict: "a mapping"}
    return words.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, where: str):
    """``value`` checked against the type ``tp`` (and converted as :class:`Profile` says)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        others = [t for t in options if t is not type(None)]
        if len(others) == 1:  # one type besides null: its own, more precise, message
            return _convert(value, others[0], where)
        for option in others:
            try:
                return _convert(value, option, where)
            except _Mismatch:
                continue
        raise _Mismatch(where, value, tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(where, value, tp)
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict and isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise _Mismatch(where, value, tp)


def closest_keys(key, n: int = 3) -> list[str]:
    """The profile keys closest in spelling to ``key`` (:func:`difflib.get_close_matches`)."""
    return difflib.get_close_matches(str(key), PROFILE_KEYS, n=n, cutoff=0.6)


def _suggestion(key) -> str:
    close = closest_keys(key)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def profile_keys() -> set[str]:
    """The keys a profile may set: the fields of :class:`Profile`."""
    return set(PROFILE_KEYS)


def as_profile(profile, *, source: str = "(a mapping)") -> Profile:
    """``profile`` as a :class:`Profile`: itself, or a mapping checked (missing keys: defaults).

    Raises
    ------
    ProfileError
        For an unknown key or a value of the wrong type; ``TypeError`` for neither a profile
        nor a mapping.
    """
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        return Profile.from_dict(profile, source=source)
    raise TypeError(f"a profile is a Profile or a mapping of its keys, got {type(profile).__name__}")


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
    """The keys a profile's YAML file sets, as written (no defaults, no ``${VAR}`` expansion,
    no checks: :func:`load_profile` gives the whole, checked profile).

    A malformed file gives a ``ValueError`` naming the file and the line.
    """
    path = profile_path(name_or_path, profiles_dir)
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"profile {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _expand(value):
    """Replace ``${VAR}`` by the environment variable's value (left as is when unset)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_profile(name_or_path: str | os.PathLike | None = None, overrides: Mapping | None = None,
                 *, expand: bool = True, profiles_dir: Path = PROFILES_DIR, **more) -> Profile:
    """Read a profile: the keys its file sets, every other key at its default.

    Parameters
    ----------
    name_or_path : str or path, optional
        A shipped profile name (``"offline"``, ``"paper"``, ``"smoke"``, looked up in
        ``profiles_dir``) or a YAML file path. Default: ``$PURE_PROFILE`` or ``"offline"``.
    overrides : mapping, optional
        Keys replacing the file's values; a mapping value (``dataset_kwargs``) is merged into
        the file's, key by key. Keyword arguments (``n_ref=10``) are overrides too.
    expand : bool
        Replace ``${VAR}`` by the environment variable's value (``False``: as written, what the
        book passes to its notebooks, which expand them).
    profiles_dir : path
        Where profile names are looked up.

    Returns
    -------
    Profile
        ``name`` is the file's name unless the file sets it.

    Raises
    ------
    ProfileError
        An unknown key or a value of the wrong type, naming the file (or the overrides), the
        key, the value and the type expected; ``ValueError`` for a missing or malformed file.
    """
    if name_or_path is None:
        name_or_path = os.environ.get("PURE_PROFILE", DEFAULT_PROFILE)
    path = profile_path(name_or_path, profiles_dir)
    data = {"name": path.stem, **read_profile(path)}
    profile = Profile.from_dict(_expand(data) if expand else data, source=str(path))
    changes = {**(overrides or {}), **more}
    if changes:
        data = _merge(profile.to_dict(), changes)
        profile = Profile.from_dict(_expand(data) if expand else data,
                                    source=f"{path} with the overrides of {', '.join(changes)}")
    return profile


def check_profile(profile) -> Profile:
    """Check that a profile can run here; raise an actionable error otherwise.

    Checks the keys and their types (:func:`as_profile`: a mapping becomes a
    :class:`Profile`), that no unset ``${VAR}`` is left, and that the image folder of an
    ImageNet / image-folder dataset exists. Model and embedder weights are checked when they
    load (``load_model`` / ``load_embedder`` say how to get them).

    Returns
    -------
    Profile
        The profile itself (a mapping: the checked :class:`Profile` of its keys).
    """
    profile = as_profile(profile)

    def unset(value, where):
        if isinstance(value, str):
            for var in _VAR.findall(value):
                raise ValueError(
                    f"profile {profile.name!r}: {where} uses the environment variable "
                    f"${{{var}}}, which is not set. Set it (export {var}=...) or give the value "
                    f"directly, e.g. load_profile({profile.name!r}, "
                    f"{where.split('.')[0]}=...)")
        elif isinstance(value, dict):
            for k, v in value.items():
                unset(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                unset(v, f"{where}[{i}]")

    for key, value in profile.items():
        unset(value, key)
    if profile.dataset.lower() in ("imagenet", "imagefolder"):
        for key in ("dataset_kwargs", "heldout_dataset_kwargs"):
            kwargs = profile[key] or {}
            if key == "heldout_dataset_kwargs" and not kwargs:
                continue  # no held-out split: the test phase says so where it is needed
            root = kwargs.get("root")
            if not root or not Path(root).is_dir():
                what = "no ImageNet folder given" if not root else f"the folder {root} does not exist"
                raise FileNotFoundError(
                    f"profile {profile.name!r}: {key}.root: {what}. The paper's setting "
                    "needs the ImageNet validation images (50 000 JPEGs in 1000 class folders, as "
                    "made by the usual valprep script; obtain them from https://image-net.org "
                    f"after registering). Set {key}.root in notebooks/profiles/paper.yaml, export "
                    f"PURE_IMAGENET_VAL, or pass load_profile('paper', {key}={{'root': "
                    "'/path/to/val'}).")
    return profile


def profile_device(device=None) -> str:
    """``None`` / ``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values unchanged."""
    if device in (None, "auto"):
        import torch  # heavy: the book engine reads profiles without ever loading torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def from_parameters(namespace: Mapping) -> Profile:
    """The profile a notebook runs on, built from its parameters.

    ``namespace["profile"]`` (the notebook's ``profile`` parameter, ``offline`` unless set)
    names the base profile. Every profile key found in ``namespace`` replaces the base value
    as a whole: this is how ``papermill -f notebooks/profiles/paper.yaml`` and ``-p n_ref 50``
    (which inject variables) and ``make book`` (which injects every key of the profile) reach
    the notebook. ``paper.yaml`` and ``smoke.yaml`` list only their differences from the
    defaults (``offline.yaml``), so ``papermill -f paper.yaml`` on the base ``offline`` gives
    exactly ``load_profile("paper")``; leave ``profile`` at ``offline`` with ``-f`` (another
    base would keep its own values for the keys the file leaves out).

    Parameters
    ----------
    namespace : mapping
        The notebook's ``globals()`` right after its parameters cell.

    Returns
    -------
    Profile
        Checked with :func:`check_profile`; an injected value of the wrong type is refused.
    """
    base = load_profile(namespace.get("profile") or None)
    injected = {k: _expand(copy.deepcopy(namespace[k])) for k in PROFILE_KEYS if k in namespace}
    if injected:
        base = Profile.from_dict({**base.to_dict(), **injected},
                                 source=f"{base.name!r} with the notebook's parameters")
    return check_profile(base)
