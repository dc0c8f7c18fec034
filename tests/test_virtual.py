"""Tests of pure_utils.virtual: virtual neurons as a scikit-learn style estimator."""
import numpy as np
import pytest
import torch

from pure_utils.virtual import ALGORITHMS, VirtualNeurons


def blobs(seed=0, n=30, d=5):
    """Two well separated groups of circuit vectors, interleaved."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.05, (n, d)) + np.eye(d)[0]
    b = rng.normal(0, 0.05, (n, d)) + np.eye(d)[1]
    X = np.empty((2 * n, d))
    X[0::2], X[1::2] = a, b
    return X, np.tile([0, 1], n)


def same_partition(a, b):
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


def test_predict_on_fitted_samples_returns_labels_and_is_seeded():
    X, truth = blobs()
    X = X + np.random.default_rng(1).normal(0, 0.3, X.shape)  # overlapping: k-means must choose
    vn = VirtualNeurons(n_clusters=3, random_state=0).fit(X)
    assert np.array_equal(vn.predict(X), vn.labels_)
    again = VirtualNeurons(n_clusters=3, random_state=0).fit(X)
    assert np.array_equal(again.labels_, vn.labels_)
    assert np.array_equal(again.cluster_centers_, vn.cluster_centers_)
    assert vn.cluster_centers_.shape == (3, 5)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_algorithms_recover_separated_circuits(algorithm):
    X, truth = blobs()
    vn = VirtualNeurons(n_clusters=2, algorithm=algorithm).fit(torch.tensor(X))  # tensors accepted
    assert same_partition(vn.labels_, truth)
    # centres are the cluster means (k-means converges to them too)
    for c in range(2):
        assert np.allclose(vn.cluster_centers_[c], X[vn.labels_ == c].mean(0), atol=1e-8)
    assert np.array_equal(vn.fit_predict(X), vn.labels_)


def test_predict_nearest_centre_and_virtual_activations():
    X, _ = blobs()
    vn = VirtualNeurons(n_clusters=2).fit(X)
    c0 = vn.predict(np.eye(5)[[0]])[0]
    c1 = vn.predict(np.eye(5)[[1]])[0]
    assert c0 != c1
    new = np.eye(5)[[0, 1, 0]] + 0.01
    act = torch.tensor([2.0, 3.0, 0.5])
    out = vn.virtual_activations(new, act)
    expected = np.zeros((3, 2))
    expected[0, c0], expected[1, c1], expected[2, c0] = 2.0, 3.0, 0.5
    assert np.array_equal(out, expected)
    # routing keeps the activation: virtual activations sum to the neuron's
    assert np.allclose(out.sum(1), act.numpy())
    d = vn.transform(new)
    assert d.shape == (3, 2) and np.array_equal(d.argmin(1), vn.predict(new))


def test_bad_input():
    X, _ = blobs(n=2)
    with pytest.raises(ValueError, match="n_clusters=5 is larger than the number of samples \\(4\\)"):
        VirtualNeurons(n_clusters=5).fit(X)
    with pytest.raises(ValueError, match="algorithm 'dbscan' not known"):
        VirtualNeurons(algorithm="dbscan").fit(X)
    with pytest.raises(ValueError, match="not fitted"):
        VirtualNeurons().predict(X)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        VirtualNeurons().fit(X[0])
    vn = VirtualNeurons().fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but VirtualNeurons is expecting 5"):
        vn.predict(X[:, :3])
    with pytest.raises(ValueError, match="activations"):
        vn.virtual_activations(X, [1.0])
    with pytest.raises(ValueError, match="NaN"):
        VirtualNeurons().fit(np.full((3, 2), np.nan))


def test_sklearn_params():
    vn = VirtualNeurons(n_clusters=4, random_state=3)
    assert vn.get_params() == {"n_clusters": 4, "random_state": 3, "n_init": 10, "algorithm": "kmeans"}
    assert vn.set_params(n_clusters=2).n_clusters == 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_scikit_learn_estimator_checks(algorithm):
    """scikit-learn's own checks of estimators, for every algorithm.

    All apply and must pass except one, which is skipped: ``check_array_api_input`` runs only
    with ``SCIPY_ARRAY_API=1`` and array-API libraries, which PURE does not use (circuit vectors
    arrive as torch tensors or NumPy arrays and are converted to NumPy).
    """
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks feed degenerate data on purpose
        results = check_estimator(VirtualNeurons(algorithm=algorithm), on_fail=None, on_skip=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed
    assert skipped <= {"check_array_api_input"}
    assert sum(r["status"] == "passed" for r in results) >= 40


def test_all_zero_vectors_are_refused_with_what_to_do():
    X = np.zeros((6, 4))
    for algorithm in ("kmeans", "agglomerative"):
        with pytest.raises(ValueError, match=r"all 6 circuit vectors are zero.*References\.dead"):
            VirtualNeurons(n_clusters=2, algorithm=algorithm).fit(X)
    X[3, 1] = 1e-6  # one non-zero row is something to cluster
    assert VirtualNeurons(n_clusters=2, random_state=0).fit(X).labels_[3] != \
        VirtualNeurons(n_clusters=2, random_state=0).fit(X).labels_[0]
