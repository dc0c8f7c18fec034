"""PURE as one estimator: mine, attribute, cluster, then apply it to new images.

:class:`PURE` chains the stages of the method for one layer of one model in the shape of a
scikit-learn estimator: configured in ``__init__``, learned in :meth:`PURE.fit`, applied with
:meth:`PURE.predict`, what it learned kept in attributes with a trailing underscore.

Training phase (:meth:`PURE.fit`, Dreyer et al. 2024, Fig. 2):

1. the ``n_ref`` most activating samples of every channel of ``layer``
   (:func:`~pure_utils.references.mine_references`), or references given;
2. the circuit vectors of the chosen neurons on them, attributed to ``lower_layer``
   (:func:`~pure_utils.circuits.circuit_attributions`, Eq. 3 or LRP);
3. k-means on each neuron's vectors: its virtual neurons
   (:class:`~pure_utils.virtual.VirtualNeurons`).

Test phase (:meth:`PURE.predict`): a new image's circuit vector, computed exactly as in training,
is assigned to the closest centroid; :meth:`PURE.virtual_activations` credits the neuron's
activation on it (its spatial maximum, as mining ranks samples) to that virtual neuron alone.
The activation baseline and the crops stage are one call each on a fitted estimator.

The free functions stay the reference: every number here is computed by them, the estimator
only keeps their arguments consistent (one layout for every stage) and their results together.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from sklearn import get_config
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

from ._progress import tqdm
from .circuits import ATTRIBUTIONS, activation_vectors, check_lower_layers, circuit_attributions
from .crops import crop_boxes, feature_heatmaps
from .data import check_dataset, iter_images
from .layers import eval_mode, forward_until, get_layer, layer_layout, resolve_layout
from .models import resolve_device
from .references import References, check_references, mine_references, neuron_ids
from .virtual import VirtualNeurons

__all__ = ["PURE"]


def _listed(values, limit: int = 20) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def _check_count(name: str, value, low: int = 1) -> None:
    """A ``ValueError`` naming ``value`` unless it is an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


class _Batch:
    """A batch of preprocessed images as a dataset of the protocol (``len``, ``ds[i]``), with the
    normalisation of the fitted dataset (the box rule of LRP reads it). No fingerprint: its
    results are never cached."""

    def __init__(self, images: torch.Tensor, like):
        self.images = images
        self.mean = getattr(like, "mean", (0.0, 0.0, 0.0))
        self.std = getattr(like, "std", (1.0, 1.0, 1.0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], -1


class PURE(BaseEstimator):
    """Purify neurons of one layer: their virtual neurons, learned and applied to new images.

    Parameters
    ----------
    model : nn.Module
        Any CNN or vision transformer (timm, torchvision, your own); never changed (evaluation
        mode and frozen parameters are restored after every stage).
    layer : str
        Module name of the layer ``L`` of the neurons (``"layer4"``, ``"blocks.10.mlp.act"``).
    lower_layer : str or list of str
        Layer ``L-1`` the circuits are attributed to (``"layer3"``); a list gives the fuller
        circuit (the per-layer vectors, each normalised, concatenated).
    attribution : str
        ``"gxa"`` (Gradient x Activation, the paper's Eq. 3) or a zennit composite name of
        :data:`~pure_utils.circuits.ATTRIBUTIONS` (LRP).
    n_clusters : int
        Virtual neurons per neuron (k of k-means), ``1 <= n_clusters <= n_ref``.
    n_ref : int
        Reference samples per neuron (the paper: 100). Given references are cut to their first
        (most activating) ``n_ref``.
    layout : None, str, Layout or dict
        How the layers' outputs are read (default: detected; see
        :func:`pure_utils.layers.layer_layout`).
    tokens : {"patches", "all"}, optional
        Token layers: the unit's positions (default ``"patches"``, class and register tokens
        left out).
    batch_size, device, cache, progress, num_workers
        The run options (see :mod:`pure_utils`); passed to every stage; the cache keeps
        references, circuits and activation vectors (not for tensors of images, which have
        no fingerprint).
    random_state : int
        Seed of k-means (10 restarts, as in the reference pipeline).
    approximate : bool
        LRP (circuits and heatmaps) on a model the canonizers do not cover, with a warning that
        reports the relevance conserved; otherwise refused.

    Attributes
    ----------
    references_ : References
        Those mined (all channels of ``layer``) or given (cut to ``n_ref``).
    neurons_ : list of int
        The fitted neurons, in the order given.
    circuits_ : Tensor[n_neurons, n_ref, C_lower]
        Circuit vectors of the fitted neurons on their references (rows follow ``neurons_``,
        columns ``references_.indices`` of the neuron).
    virtual_neurons_ : dict[int, VirtualNeurons]
        Neuron -> its fitted virtual neurons (``cluster_centers_``: the circuits).
    labels_ : dict[int, ndarray[n_ref]]
        Neuron -> the virtual neuron of each of its reference samples.
    layout_ : Layout
        How ``layer`` is read in every stage (the references' layout).
    dataset_ : Dataset
        The dataset fitted on (read by :meth:`activation_baseline` and the crops stage).

    Examples
    --------
    >>> pure = PURE(model, "layer4", "layer3", n_clusters=2).fit(data, neurons=[1929])
    >>> pure.labels_[1929]                        # ndarray[100]: each reference's circuit
    >>> pure.predict(x, neuron=1929)              # x: Tensor[B, 3, H, W] -> ndarray[B]
    >>> pure.virtual_activations(x, neuron=1929)  # ndarray[B, 2]
    """

    def __init__(self, model, layer: str = "layer4", lower_layer="layer3", *,
                 attribution: str = "gxa", n_clusters: int = 2, n_ref: int = 100, layout=None,
                 tokens: str | None = None, batch_size: int = 32, device=None, cache=None,
                 progress: bool = True, num_workers: int = 0, random_state: int = 0,
                 approximate: bool = False):
        self.model = model
        self.layer = layer
        self.lower_layer = lower_layer
        self.attribution = attribution
        self.n_clusters = n_clusters
        self.n_ref = n_ref
        self.layout = layout
        self.tokens = tokens
        self.batch_size = batch_size
        self.device = device
        self.cache = cache
        self.progress = progress
        self.num_workers = num_workers
        self.random_state = random_state
        self.approximate = approximate

    # --- scikit-learn protocol --------------------------------------------------------------
    def __sklearn_clone__(self) -> "PURE":
        """An unfitted copy with the same parameters that shares the model (PURE never changes
        its weights) where scikit-learn would deep-copy it; other parameters are cloned."""
        params = self.get_params(deep=False)
        model = params.pop("model")
        return type(self)(model, **{k: clone(v, safe=False) for k, v in params.items()})

    def __repr__(self) -> str:
        """scikit-learn's repr (the parameters that differ from their defaults, or all of them
        with ``sklearn.set_config(print_changed_only=False)``), the model named, not printed."""
        signature = inspect.signature(type(self).__init__)
        defaults = {n: p.default for n, p in signature.parameters.items()}
        changed_only = get_config()["print_changed_only"]
        name = getattr(self.model, "pure_name", None)
        shown = [f"model=<{type(self.model).__name__}{f' {name!r}' if name else ''}>"]
        for key, value in self.get_params(deep=False).items():
            default = defaults.get(key)
            same = value is default or (type(value) is type(default)
                                        and repr(value) == repr(default))
            if key != "model" and not (changed_only and same):
                shown.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # --- training ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        """Every parameter checked before anything runs (a ``ValueError`` naming the value)."""
        if not isinstance(self.model, torch.nn.Module):
            raise ValueError(f"model={type(self.model).__name__}: give a torch.nn.Module")
        get_layer(self.model, self.layer)  # lists the layers
        check_lower_layers(self.model, self.layer, self.lower_layer)
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution={self.attribution!r} not known; attributions: "
                             f"{', '.join(ATTRIBUTIONS)}")
        for name in ("n_clusters", "n_ref", "batch_size"):
            _check_count(name, getattr(self, name))
        _check_count("num_workers", self.num_workers, low=0)
        if self.n_clusters > self.n_ref:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than n_ref={self.n_ref}: "
                             f"k-means needs a reference sample per virtual neuron; use "
                             f"n_clusters in 1..{self.n_ref}")
        layer_layout(self.model, self.layer, self.layout, self.tokens)  # layout and tokens

    def _references(self, dataset, references) -> References:
        """Mined references of all channels, or the given ones checked and cut to ``n_ref``."""
        if references is None:
            return mine_references(self.model, dataset, self.layer, self.n_ref,
                                   batch_size=self.batch_size, device=self.device,
                                   cache=self.cache, progress=self.progress,
                                   num_workers=self.num_workers, layout=self.layout,
                                   tokens=self.tokens)
        if not isinstance(references, References):
            raise ValueError(f"references={type(references).__name__}: give the References of "
                             "mine_references, or None to mine them")
        if references.layer != self.layer:
            raise ValueError(f"references were mined for layer {references.layer!r}, not "
                             f"layer={self.layer!r}")
        check_references(references, model=self.model, dataset=dataset)
        if self.n_ref > references.n_ref:
            raise ValueError(f"n_ref={self.n_ref}, but the references hold {references.n_ref} "
                             f"samples per channel; use n_ref <= {references.n_ref}, or mine "
                             "them again")
        return references if self.n_ref == references.n_ref else references.head(self.n_ref)

    def _layouts(self, layout=None) -> dict:
        """The layouts of every stage, by layer name: the lower layers' as
        :func:`~pure_utils.circuits.circuit_attributions` reads them, the layer's ``layout``
        (default: the fitted ``layout_``)."""
        lowers = check_lower_layers(self.model, self.layer, self.lower_layer)
        return {**{n: layer_layout(self.model, n, self.layout) for n in lowers},
                self.layer: self.layout_ if layout is None else layout}

    def _circuits(self, dataset, references, neurons, cache, layout=None) -> torch.Tensor:
        """:func:`~pure_utils.circuits.circuit_attributions` with this estimator's settings and
        layouts (``layout``: the layer's, default the fitted one)."""
        return circuit_attributions(self.model, dataset, references, self.layer, self.lower_layer,
                                    neurons=neurons, attribution=self.attribution,
                                    batch_size=self.batch_size, device=self.device, cache=cache,
                                    progress=self.progress, approximate=self.approximate,
                                    num_workers=self.num_workers, layout=self._layouts(layout))

    def fit(self, dataset, neurons=None, *, references: References | None = None) -> "PURE":
        """Mine the references, attribute the neurons' circuits and cluster them.

        Parameters
        ----------
        dataset : Dataset
            ``len(dataset)``, ``dataset[i] -> (Tensor[3, H, W], label)`` (see
            :mod:`pure_utils.data`); its ``fingerprint`` for caching.
        neurons : int or sequence of int, optional
            Channels of ``layer`` to purify (default: every channel of the references).
        references : References, optional
            References of ``layer`` mined on this model and dataset (mining is then skipped).

        Returns
        -------
        self
        """
        self._check_params()
        check_dataset(dataset)
        if neurons is not None:
            neurons = neuron_ids(neurons)
            if not neurons:
                raise ValueError(f"neurons is empty; give at least one channel of layer "
                                 f"{self.layer!r}")
            twice = sorted({k for k in neurons if neurons.count(k) > 1})
            if twice:
                raise ValueError(f"neurons names neuron {twice[0]} twice; give each channel once")
        refs = self._references(dataset, references)
        neurons = refs.channels.tolist() if neurons is None else neurons
        refs.rows(neurons)  # a ValueError naming a channel the references do not hold
        layout = resolve_layout(self.model, self.layer, self.layout, self.tokens, refs.layout)
        R = self._circuits(dataset, refs, neurons, self.cache, layout)
        virtual = {k: VirtualNeurons(n_clusters=self.n_clusters,
                                     random_state=self.random_state).fit(R[j])
                   for j, k in enumerate(neurons)}
        # set together at the end: a fit that fails leaves the estimator as it was
        self.references_, self.neurons_, self.circuits_ = refs, neurons, R
        self.virtual_neurons_ = virtual
        self.labels_ = {k: vn.labels_ for k, vn in virtual.items()}
        self.layout_, self.dataset_ = layout, dataset
        return self

    # --- the test phase ---------------------------------------------------------------------
    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "virtual_neurons_"):
            # NotFittedError: a ValueError and an AttributeError, as scikit-learn raises it
            raise NotFittedError(f"This PURE instance is not fitted yet; call fit(dataset, "
                                 f"neurons=[...]) before {what}")

    def _neuron(self, neuron, what: str) -> int:
        """The fitted neuron ``neuron`` (``None``: the only one fitted)."""
        self._check_fitted(what)
        fitted = _listed(self.neurons_)
        if neuron is None:
            if len(self.neurons_) == 1:
                return self.neurons_[0]
            raise ValueError(f"{what} needs neuron=; fitted neurons: {fitted}")
        if isinstance(neuron, torch.Tensor) and neuron.ndim == 0:
            neuron = neuron.item()
        if isinstance(neuron, bool) or not isinstance(neuron, (int, np.integer)):
            raise ValueError(f"neuron={neuron!r}: give one channel (an int); fitted neurons: "
                             f"{fitted}")
        if int(neuron) not in self.virtual_neurons_:
            raise ValueError(f"neuron {int(neuron)} was not fitted; fitted neurons: {fitted} "
                             f"(fit with neurons=[..., {int(neuron)}] to use it)")
        return int(neuron)

    def _as_dataset(self, images):
        """``(dataset, cache)`` of new images: a batch tensor or a dataset of the protocol,
        of the input size fitted on."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
                raise ValueError(f"images of shape {tuple(images.shape)}: give a Tensor[B, 3, H, "
                                 "W] of preprocessed images (B >= 1; one image x: x[None]) or a "
                                 "dataset")
            if not images.is_floating_point():
                raise ValueError(f"images of dtype {images.dtype}: give the preprocessed float "
                                 "images the model reads (as dataset[i][0])")
            data, cache = _Batch(images, self.dataset_), None
        else:
            check_dataset(images)
            data, cache = images, self.cache
        size = tuple(torch.as_tensor(data[0][0]).shape[-2:])
        if size != self.references_.input_size:
            raise ValueError(f"images of size {size}, but PURE was fitted on images of size "
                             f"{self.references_.input_size}; preprocess them as the dataset "
                             "fitted on")
        return data, cache

    def circuit_vectors(self, images, neuron: int | None = None) -> torch.Tensor:
        """Circuit vectors of a fitted neuron on new images, computed as in training.

        Parameters
        ----------
        images : Tensor[B, 3, H, W] or Dataset
            Preprocessed images (as ``dataset[i][0]``), or a dataset of the protocol (all its
            samples, cached with ``cache``).
        neuron : int, optional
            A fitted neuron (default: the only one fitted).

        Returns
        -------
        Tensor[B, C_lower]
            Those :func:`~pure_utils.circuits.circuit_attributions` gives for these images.
        """
        k = self._neuron(neuron, "circuit_vectors")
        data, cache = self._as_dataset(images)
        return self._circuits(data, torch.arange(len(data))[None], [k], cache)[0]

    def predict(self, images, neuron: int | None = None) -> np.ndarray:
        """The virtual neuron of each new image: its circuit vector's closest centroid.

        Parameters
        ----------
        images : Tensor[B, 3, H, W] or Dataset
            As in :meth:`circuit_vectors`.
        neuron : int, optional
            A fitted neuron (default: the only one fitted).

        Returns
        -------
        ndarray[B] of int
            In ``0..n_clusters - 1``; on the neuron's reference images, its ``labels_``.
        """
        k = self._neuron(neuron, "predict")
        return self.virtual_neurons_[k].predict(self.circuit_vectors(images, k))

    def unit_activations(self, images, neurons=None) -> torch.Tensor:
        """Units' activations on new images: the spatial maximum, as mining ranks samples.

        The maximum runs over the layout's positions: a map's positions (channels first or
        last), a ViT's patch tokens (``tokens="patches"``; every token with ``"all"``).

        Parameters
        ----------
        images : Tensor[B, 3, H, W] or Dataset
            As in :meth:`circuit_vectors`.
        neurons : int or sequence of int, optional
            Channels of ``layer`` (fitted or not); default: all.

        Returns
        -------
        Tensor[B, n_channels] or Tensor[B, len(neurons)]
        """
        self._check_fitted("unit_activations")
        data, _ = self._as_dataset(images)
        device = resolve_device(self.model, self.device)
        n, lay = len(data), self.layout_
        step = self.batch_size
        batches = [list(range(s, min(n, s + step))) for s in range(0, n, step)]
        parts = []
        inputs = iter_images(data, batches, self.num_workers, pin_memory=device.type == "cuda")
        with torch.inference_mode(), eval_mode(self.model):
            for x in tqdm(inputs, total=len(batches), desc=f"activations {self.layer}",
                          disable=not self.progress):
                act = lay.check(forward_until(self.model, x.to(device), self.layer), self.layer)
                parts.append(lay.channels(act).amax(-1).float().cpu())
        acts = torch.cat(parts)  # outside inference mode: an ordinary tensor
        if neurons is None:
            return acts
        ids = neuron_ids(neurons)
        bad = [k for k in ids if not 0 <= k < acts.shape[1]]
        if bad:
            raise ValueError(f"neuron index {bad[0]} out of range for layer {self.layer!r} with "
                             f"{acts.shape[1]} channels; accepted: 0..{acts.shape[1] - 1}")
        return acts[:, ids]

    def virtual_activations(self, images, neuron: int | None = None) -> np.ndarray:
        """The neuron's activation on new images, routed to their virtual neurons.

        Parameters
        ----------
        images : Tensor[B, 3, H, W] or Dataset
            As in :meth:`circuit_vectors`.
        neuron : int, optional
            A fitted neuron (default: the only one fitted).

        Returns
        -------
        ndarray[B, n_clusters]
            Row ``i``: the neuron's activation (:meth:`unit_activations`) in the column of the
            image's virtual neuron (:meth:`predict`), 0 elsewhere.
        """
        k = self._neuron(neuron, "virtual_activations")
        R = self.circuit_vectors(images, k)
        activations = self.unit_activations(images, [k])[:, 0]
        return self.virtual_neurons_[k].virtual_activations(R, activations)

    # --- the baseline and the crops stage ---------------------------------------------------
    def activation_baseline(self, neurons=None) -> dict:
        """The paper's baseline: k-means on the activations instead of the circuits.

        The same k-means (``n_clusters``, ``random_state``) on
        :func:`~pure_utils.circuits.activation_vectors` of each neuron's references.

        Parameters
        ----------
        neurons : int or sequence of int, optional
            Channels held by ``references_`` (default: ``neurons_``).

        Returns
        -------
        dict[int, ndarray[n_ref]]
            Neuron -> the cluster of each reference sample (compare with ``labels_``).
        """
        self._check_fitted("activation_baseline")
        ids = self.neurons_ if neurons is None else neuron_ids(neurons)
        features = activation_vectors(self.model, self.dataset_, self.references_, self.layer,
                                       neurons=ids, batch_size=self.batch_size, device=self.device,
                                       cache=self.cache, progress=self.progress,
                                       num_workers=self.num_workers, layout=self._layouts())
        return {k: VirtualNeurons(n_clusters=self.n_clusters, random_state=self.random_state)
                .fit(features[j]).labels_ for j, k in enumerate(ids)}

    def heatmaps(self, neuron: int | None = None, *, composite="epsilon_plus_flat",
                 canonizers=None, n_ref: int | None = None) -> torch.Tensor:
        """Heatmaps of a fitted neuron's references (:func:`~pure_utils.crops.feature_heatmaps`).

        Parameters
        ----------
        neuron : int, optional
            A fitted neuron (default: the only one fitted).
        composite : str or zennit Composite
            ``"epsilon_plus_flat"`` (the paper's), another composite, or ``"gradient_x_input"``
            (no LRP: ConvNeXt, ViT and other models LRP does not cover).
        canonizers : list, optional
            As in :func:`~pure_utils.crops.feature_heatmaps`.
        n_ref : int, optional
            Only the first ``n_ref`` references.

        Returns
        -------
        Tensor[n_ref, H, W]
            Signed relevance per input pixel, rows aligned with ``labels_[neuron]``.
        """
        k = self._neuron(neuron, "heatmaps")
        return feature_heatmaps(self.model, self.dataset_, self.references_, self.layer, [k],
                                composite=composite, canonizers=canonizers, n_ref=n_ref,
                                batch_size=self.batch_size, device=self.device,
                                progress=self.progress, approximate=self.approximate,
                                layout=self._layouts())[0]

    def crop_boxes(self, neuron: int | None = None, *, heatmaps: torch.Tensor | None = None,
                   composite="epsilon_plus_flat", blur_kernel: int = 5, threshold: float = 0.02,
                   square: bool = True) -> torch.Tensor:
        """Crop boxes of a fitted neuron's references (:func:`~pure_utils.crops.crop_boxes`).

        Parameters
        ----------
        neuron : int, optional
            A fitted neuron (default: the only one fitted).
        heatmaps : Tensor[n_ref, H, W], optional
            The neuron's :meth:`heatmaps` (default: computed with ``composite``).
        composite : str or zennit Composite
            As in :meth:`heatmaps`.
        blur_kernel, threshold, square
            As in :func:`~pure_utils.crops.crop_boxes` (the evaluation crop: 5, 0.02, square).

        Returns
        -------
        LongTensor[n_ref, 4]
            ``(y0, x0, y1, x1)`` in input pixels, ends exclusive; rows aligned with
            ``labels_[neuron]`` (cut with :func:`~pure_utils.crops.crops_from_boxes`).
        """
        k = self._neuron(neuron, "crop_boxes")
        if heatmaps is None:
            heatmaps = self.heatmaps(k, composite=composite)
        # the module's function (a method's name is not in scope inside its body)
        return crop_boxes(heatmaps, blur_kernel=blur_kernel, threshold=threshold, square=square)
