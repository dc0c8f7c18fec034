"""torch.distributed: two CPU processes (gloo) give exactly what one process gives.

Two processes are started once (``torch.multiprocessing.spawn``) and run every stage that
shares its work - mining, attribution (from the stash and without), activation features, crop
boxes, embeddings, the cache - and a mining run stopped by an unreadable image; the tests
compare what each rank returns with a single-process run of the same code: identical indices,
values and vectors, not merely close ones.
"""
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pure_utils.cache import Cache
from pure_utils.circuits import activation_vectors, circuit_attributions
from pure_utils.data import GeneratedImages, UnreadableImageError
from pure_utils.distributed import rank_and_size, shard_range
from pure_utils.embed import load_embedder
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.crops import embed_boxes, reference_boxes
from pure_utils.references import mine_references
from pure_utils.stash import ActivationStash

NEURONS = [0, 3, 5, 9, 12, 17]
N_REF = 3


class Repeated:
    """``n`` images that repeat ``m`` generated ones: equal values, so ties across the ranks."""

    def __init__(self, n=22, m=7, bad=None):
        self.base, self.n, self.bad = GeneratedImages(m, size=48, seed=3), n, bad
        self.mean, self.std, self.class_names = self.base.mean, self.base.std, ["x"]
        self.fingerprint = f"repeated-{n}-{m}-{bad}-{self.base.fingerprint}"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"image {i} is damaged")
        return self.base[i % self.base.n]

    def image(self, i):
        return self.base.image(i % self.base.n)


def _model():
    torch.manual_seed(0)
    model = build_resnet("basic", channels=(8, 16, 32, 32), stem_width=8)
    return randomize_batchnorm(model, 0).eval()


def _run_all(folder) -> dict:
    """Every shared stage, as one process or as one rank of several."""
    torch.set_num_threads(1)
    model, data = _model(), Repeated()
    quiet = dict(progress=False)
    out = {}
    refs = mine_references(model, data, "layer4", N_REF, batch_size=4, **quiet)
    out.update(indices=refs.indices, values=refs.values, positions=refs.positions)
    stash = ActivationStash("layer3", memory_bytes=1 << 30)
    mine_references(model, data, "layer4", N_REF, batch_size=4, stash=stash, **quiet)
    out["stash_held"] = torch.tensor(stash.held())
    attr = dict(neurons=NEURONS, batch_size=3, **quiet)
    out["gxa"] = circuit_attributions(model, data, refs, "layer4", "layer3", **attr)
    out["gxa_stash"] = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash,
                                            **attr)
    out["acts"] = activation_vectors(model, data, refs, "layer4", **attr)
    out["acts_stash"] = activation_vectors(model, data, refs, "layer4", stash=stash, **attr)
    out["acts_peak"] = activation_vectors(model, data, refs, "layer4", pooling="peak", **attr)
    boxes = reference_boxes(model, data, refs, "layer4", NEURONS, chunk_size=2, batch_size=3,
                            **quiet)
    out["boxes"] = boxes
    embedder = load_embedder("clip", pretrained=False)
    out["embeddings"] = embed_boxes(data, refs.indices[refs.rows(NEURONS)].reshape(-1),
                                    boxes.reshape(-1, 4), [embedder], batch_size=4, **quiet)[0]
    # the cache: written by rank 0 alone, read back by every rank
    saves = []
    original = Cache.save
    Cache.save = lambda self, key, *a, **k: (saves.append(key), original(self, key, *a, **k))[1]
    try:
        cache = Cache(os.path.join(folder, "cache"))
        out["cached_indices"] = mine_references(model, data, "layer4", N_REF, batch_size=4,
                                                cache=cache, **quiet).indices
        out["cached_gxa"] = circuit_attributions(model, data, refs, "layer4", "layer3",
                                                 cache=cache, **attr)
        out["cached_gxa_again"] = circuit_attributions(model, data, refs, "layer4", "layer3",
                                                       cache=cache, **attr)
    finally:
        Cache.save = original
    out["saves"] = len(saves)
    # an unreadable image in the second half: every rank stops with the same error
    try:
        mine_references(model, Repeated(bad=17), "layer4", N_REF, batch_size=4, **quiet)
        out["error"] = None
    except UnreadableImageError as err:
        out["error"] = str(err)
    # inputs that differ between the ranks (one image more, other weights): refused before any
    # work, by every rank, naming the rank that differs (one process: nothing to compare)
    rank = rank_and_size()[0]
    for what, run in (("dataset", lambda: mine_references(model, Repeated(n=22 + rank), "layer4",
                                                          N_REF, batch_size=4, **quiet)),
                      ("model", lambda: mine_references(randomize_batchnorm(_model(), rank), data,
                                                        "layer4", N_REF, batch_size=4, **quiet))):
        try:
            run()
            out[f"mismatch_{what}"] = None
        except ValueError as err:
            out[f"mismatch_{what}"] = str(err)
    return out


def _rank(rank, folder):
    try:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                world_size=2)
        out = _run_all(folder)
        out["rank_and_size"] = rank_and_size()
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except Exception:
        with open(os.path.join(folder, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise


@pytest.fixture(scope="session")  # once per worker: `make test` hands out single tests
def runs(tmp_path_factory):
    one = tmp_path_factory.mktemp("one")
    single = _run_all(str(one))
    folder = tmp_path_factory.mktemp("two")
    ctx = mp.spawn(_rank, args=(str(folder),), nprocs=2, join=False)
    for _ in range(240):  # a rank that waits for the other forever would hang the suite
        if ctx.join(timeout=0.5):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail("the two ranks did not finish within 120 s")
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return single, ranks, folder


@pytest.mark.parametrize("key", ["indices", "values", "positions", "cached_indices"])
def test_mining_shares_merge_into_the_single_process_result_ties_included(runs, key):
    single, ranks, _ = runs
    # 22 images repeating 7: equal values on both ranks' shares (images 0-11 and 12-21), which
    # the merge must order by index as one process does
    tied = (single["values"] == single["values"][:, :1]).all(1)
    spans = (single["indices"] < 12).any(1) & (single["indices"] >= 12).any(1)
    assert bool((tied & spans).any())
    for out in ranks:
        assert torch.equal(out[key], single[key])


@pytest.mark.parametrize("key", ["gxa", "gxa_stash", "acts", "acts_stash", "acts_peak", "boxes",
                                 "embeddings", "cached_gxa", "cached_gxa_again"])
def test_shared_stages_equal_the_single_process_bit_for_bit(runs, key):
    single, ranks, _ = runs
    for out in ranks:
        assert out[key].shape == single[key].shape
        assert torch.equal(out[key], single[key]), key


def test_each_rank_stashes_its_share_and_the_shares_make_the_single_stash(runs):
    single, ranks, _ = runs
    starts = [shard_range(22, block=4, rank=r, size=2) for r in range(2)]
    assert starts == [(0, 12), (12, 22)]
    for (start, stop), out in zip(starts, ranks):
        held = out["stash_held"]
        assert held.numel() and bool(((held >= start) & (held < stop)).all())
    both = torch.cat([out["stash_held"] for out in ranks]).sort().values
    assert torch.equal(both, single["stash_held"])


def test_the_cache_is_written_once_by_rank_0(runs):
    single, ranks, folder = runs
    assert [out["rank_and_size"] for out in ranks] == [(0, 2), (1, 2)]
    assert single["saves"] == 2                        # references and circuits, one process
    assert [out["saves"] for out in ranks] == [2, 0]   # the same two, by rank 0 only
    stored = sorted(p.suffix for p in (folder / "cache").iterdir())
    assert stored == [".json", ".json", ".safetensors", ".safetensors"]


def test_a_bad_sample_on_one_rank_stops_every_rank_with_its_error(runs):
    single, ranks, _ = runs
    assert single["error"] and "image 17 is damaged" in single["error"]
    assert [out["error"] for out in ranks] == [single["error"]] * 2


def test_ranks_with_other_data_or_weights_are_refused_naming_the_rank(runs):
    single, ranks, _ = runs
    assert single["mismatch_dataset"] is None and single["mismatch_model"] is None
    for what, differs in (("dataset", "dataset length: 23 on rank 1, 22 on rank 0"),
                          ("model", "model fingerprint: ")):
        errors = [out[f"mismatch_{what}"] for out in ranks]
        assert errors[0] is not None and errors[0] == errors[1], errors
        assert differs in errors[0] and "rank 1" in errors[0]
