"""Virtual neurons: clusters of a neuron's circuit vectors (PURE, Fig. 2).

Training phase: the circuit vectors of the neuron's reference samples are clustered; each
cluster centre is a *virtual neuron* - one circuit, one feature. Test phase: a new sample's
circuit vector is assigned to the nearest centre, and the neuron's activation on that sample
is credited to that virtual neuron alone.

:class:`VirtualNeurons` is a scikit-learn style estimator (``fit`` / ``predict`` /
``fit_predict`` / ``transform``, learned attributes with a trailing underscore).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import validate_data

from ._arrays import as_numpy

__all__ = ["VirtualNeurons", "ALGORITHMS"]

#: Accepted clustering algorithms (k-means is PURE's; the others are for ablations).
ALGORITHMS = ("kmeans", "agglomerative", "gmm", "spectral")


def _validated(estimator, X, *, reset: bool) -> np.ndarray:
    """``X`` (torch tensor, array or list) as a finite 2-D float array, checked by scikit-learn.

    ``reset=True`` (fit) records ``n_features_in_``; ``reset=False`` checks ``X`` against it.
    Sparse, complex, 1-D and non-finite input is refused with scikit-learn's messages.
    """
    if hasattr(X, "detach"):  # a torch tensor, possibly on a GPU
        X = as_numpy(X)
    return validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_min_samples=1)


class VirtualNeurons(ClusterMixin, TransformerMixin, BaseEstimator):
    """Split one neuron into virtual neurons by clustering its circuit vectors.

    A scikit-learn estimator: ``get_params`` / ``set_params`` / ``clone`` work, and
    ``fit_predict`` comes from ``ClusterMixin``.

    Parameters
    ----------
    n_clusters : int
        Number of virtual neurons (circuits), ``>= 1``.
    random_state : int
        Seed of the clustering (identical seeds give identical results).
    n_init : int
        Restarts of k-means / GMM; the reference pipeline uses 10.
    algorithm : {"kmeans", "agglomerative", "gmm", "spectral"}
        ``"kmeans"`` is PURE's (scikit-learn ``KMeans``). The others are for ablations;
        for them ``cluster_centers_`` are the clusters' means and ``predict`` assigns the
        nearest of those means (so ``predict`` on the training vectors may differ from
        ``labels_`` for them, unlike k-means).

    Attributes
    ----------
    labels_ : ndarray[n_samples]
        Cluster of each training vector.
    cluster_centers_ : ndarray[n_clusters, n_features]
        The virtual neurons' circuit vectors.
    n_features_in_ : int
    kmeans_ : sklearn.cluster.KMeans or None
        The fitted k-means model (``algorithm="kmeans"``), which :meth:`predict` uses.

    Examples
    --------
    >>> vn = VirtualNeurons(n_clusters=2).fit(R[0])          # R: Tensor[n_neurons, n_ref, C]
    >>> vn.predict(R_new)                                     # circuit of each new sample
    >>> vn.virtual_activations(R_new, activations)            # ndarray[n, 2]
    """

    def __init__(self, n_clusters: int = 2, random_state: int = 0, n_init: int = 10,
                 algorithm: str = "kmeans"):
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.n_init = n_init
        self.algorithm = algorithm

    def _check_params(self, n_samples: int) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} not known; algorithms: {', '.join(ALGORITHMS)}")
        if isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, (int, np.integer)) \
                or self.n_clusters < 1:
            raise ValueError(f"n_clusters={self.n_clusters!r} must be a positive integer")
        if self.n_clusters > n_samples:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of "
                             f"samples ({n_samples}); use at most {n_samples}")
        if self.n_init < 1:
            raise ValueError(f"n_init={self.n_init} must be >= 1")

    def fit(self, X, y=None) -> "VirtualNeurons":
        """Cluster the circuit vectors.

        Parameters
        ----------
        X : Tensor or ndarray[n_samples, n_features]
            Circuit vectors of one neuron's reference samples (e.g. ``R[j]`` of
            :func:`~pure_utils.circuits.circuit_attributions`).
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        ValueError
            When every row of ``X`` is zero (a channel that never activates has no circuits).
        """
        X = _validated(self, X, reset=True)
        if not np.any(X):
            raise ValueError(
                f"all {len(X)} circuit vectors are zero: nothing to cluster. The neuron does not "
                "activate on its reference samples (a dead channel: see References.dead) or its "
                "attribution vanished; leave this neuron out, or choose a layer where it fires")
        self._check_params(len(X))
        k, seed = int(self.n_clusters), self.random_state
        self.kmeans_ = None
        if self.algorithm == "kmeans":
            self.kmeans_ = KMeans(n_clusters=k, n_init=self.n_init, random_state=seed).fit(X)
            labels = self.kmeans_.labels_
            centers = self.kmeans_.cluster_centers_
        else:
            if self.algorithm == "agglomerative":
                labels = AgglomerativeClustering(n_clusters=k).fit_predict(X)
            elif self.algorithm == "gmm":
                labels = GaussianMixture(n_components=k, n_init=self.n_init, random_state=seed,
                                         covariance_type="diag").fit_predict(X)
            else:  # spectral
                with warnings.catch_warnings():
                    # a k-nearest-neighbour graph of well separated circuits is often not
                    # connected; sklearn warns and still embeds each component, which is the
                    # clustering we want
                    warnings.filterwarnings("ignore", message="Graph is not fully connected")
                    labels = SpectralClustering(n_clusters=k, n_init=self.n_init, random_state=seed,
                                                affinity="nearest_neighbors",
                                                n_neighbors=min(10, len(X) - 1) or 1
                                                ).fit_predict(X)
            labels = np.asarray(labels)
            # a cluster left empty by the algorithm gets a centre no sample is close to
            centers = np.stack([X[labels == c].mean(0) if (labels == c).any()
                                else np.full(X.shape[1], np.inf) for c in range(k)])
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.cluster_centers_ = np.asarray(centers)
        return self

    def _check_fitted(self, X) -> np.ndarray:
        if not hasattr(self, "cluster_centers_"):
            # NotFittedError is a ValueError (and an AttributeError), as scikit-learn expects
            raise NotFittedError("this VirtualNeurons is not fitted yet; call fit(X) first")
        return _validated(self, X, reset=False)

    def transform(self, X) -> np.ndarray:
        """Euclidean distances to the virtual neurons' centres.

        Parameters
        ----------
        X : Tensor or ndarray[n, n_features]

        Returns
        -------
        ndarray[n, n_clusters]
        """
        X = self._check_fitted(X)
        diff = X[:, None, :] - self.cluster_centers_[None, :, :]
        return np.sqrt((diff ** 2).sum(-1))

    def predict(self, X) -> np.ndarray:
        """Virtual neuron (closest circuit) of each sample - the test phase of PURE.

        Parameters
        ----------
        X : Tensor or ndarray[n, n_features]
            Circuit vectors of new samples, computed like the training vectors.

        Returns
        -------
        ndarray[n] of int
        """
        X = self._check_fitted(X)
        if self.kmeans_ is not None:
            return np.asarray(self.kmeans_.predict(X), dtype=np.int64)
        return np.argmin(self.transform(X), axis=1).astype(np.int64)

    def virtual_activations(self, X, activations) -> np.ndarray:
        """Route the neuron's activation to the virtual neuron of each sample.

        Parameters
        ----------
        X : Tensor or ndarray[n, n_features]
            Circuit vectors of the samples.
        activations : Tensor or ndarray[n]
            The neuron's activation on each sample (e.g. its spatial maximum).

        Returns
        -------
        ndarray[n, n_clusters]
            Row ``i`` holds ``activations[i]`` in the column of the predicted virtual neuron
            and 0 elsewhere.
        """
        labels = self.predict(X)
        activations = as_numpy(activations).reshape(-1)
        if len(activations) != len(labels):
            raise ValueError(f"{len(activations)} activations for {len(labels)} samples")
        out = np.zeros((len(labels), self.n_clusters), dtype=np.float64)
        out[np.arange(len(labels)), labels] = activations
        return out
