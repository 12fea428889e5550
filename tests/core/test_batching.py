import numpy as np
import pytest

from ecif.core.batching import BatchingProtocol


def test_from_seed_is_a_deterministic_partition():
    a = BatchingProtocol.from_seed(103, 16, seed=4)
    b = BatchingProtocol.from_seed(103, 16, seed=4)
    c = BatchingProtocol.from_seed(103, 16, seed=5)
    np.testing.assert_array_equal(a.batch_ids, b.batch_ids)
    assert not np.array_equal(a.batch_ids, c.batch_ids)
    batches = a.batches()
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert a.n_batches == 7 and a.batch_sizes.tolist() == [16] * 6 + [7]


def test_lone_remainder_is_merged():
    p = BatchingProtocol.from_seed(33, 16, seed=0)
    assert p.batch_sizes.min() >= 2 and p.batch_sizes.sum() == 33


def test_full_batch_and_rebuild_from_saved_ids(tmp_path):
    p = BatchingProtocol.from_seed(10, None, seed=0)
    assert p.n_batches == 1
    q = BatchingProtocol.from_seed(50, 8, seed=1)
    np.save(tmp_path / "b.npy", q.batch_ids, allow_pickle=False)
    r = BatchingProtocol(np.load(tmp_path / "b.npy", allow_pickle=False))
    np.testing.assert_array_equal(r.batch_ids, q.batch_ids)
    assert r.batch_ids.dtype == np.int64 and [b.tolist() for b in r.batches()] == [b.tolist() for b in q.batches()]


def test_padded_matches_batches():
    p = BatchingProtocol.from_seed(37, 10, seed=2)
    index, valid = p.padded()
    assert index.shape == (p.n_batches, 10)
    for m, batch in enumerate(p.batches()):
        assert index[m][valid[m]].tolist() == batch.tolist()
    assert int(valid.sum()) == 37


@pytest.mark.parametrize("ids, msg", [([0, 2, 2], "0..M-1"), ([], "non-empty"), ([0.0, 1.0], "integers")])
def test_bad_ids(ids, msg):
    with pytest.raises(ValueError, match=msg):
        BatchingProtocol(np.array(ids))


def test_bad_sizes():
    with pytest.raises(ValueError, match="at least 2"):
        BatchingProtocol.from_seed(1, None, 0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchingProtocol.from_seed(10, 1, 0)


# ------------------------------------------------------------------ hard-negative batching

from ecif.core.batching import within_batch_mean  # noqa: E402


def _planted(n_groups=6, group=8, m=5, seed=0):
    """A planted structure: pairs in the same hidden group are similar (1), others not (0, plus
    noise); the hard negatives are the top-m others by that similarity."""
    rng = np.random.default_rng(seed)
    n = n_groups * group
    hidden = rng.permutation(np.repeat(np.arange(n_groups), group))
    sim = (hidden[:, None] == hidden[None, :]).astype(float) + 0.1 * rng.random((n, n))
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argsort(-sim, axis=1, kind="stable")[:, :m]
    np.fill_diagonal(sim, 0.0)
    return sim, neighbours, hidden


def test_hard_negative_batching_is_a_valid_partition_within_the_size_limit():
    for n, b in [(48, 8), (49, 8), (50, 8), (41, 2), (40, 2), (30, 7)]:
        rng = np.random.default_rng(n + b)
        nb = np.stack([rng.choice(np.delete(np.arange(n), k), 4, replace=False) for k in range(n)])
        p = BatchingProtocol.from_hard_negatives(nb, b, seed=3)
        assert sorted(np.concatenate(p.batches()).tolist()) == list(range(n))
        sizes = p.batch_sizes
        assert sizes.min() >= 2 and sizes.sum() == n
        if b > 2 or n % 2 == 0:
            assert sizes.max() <= b
        else:
            assert sorted(sizes.tolist())[-1] == 3 and (sizes == 2).sum() == p.n_batches - 1
        assert (sizes == b).sum() >= p.n_batches - 2  # all full but the last one or two
    assert BatchingProtocol.from_hard_negatives(nb, None, seed=0).n_batches == 1


def test_lone_remainder_takes_one_pair_from_the_previous_batch():
    _, nb, _ = _planted(n_groups=7, group=7)  # n = 49, batches of 8: 6 full + 1 lone pair
    p = BatchingProtocol.from_hard_negatives(nb, 8, seed=0)
    assert sorted(p.batch_sizes.tolist()) == [2, 7, 8, 8, 8, 8, 8]


def test_hard_negative_batches_are_more_similar_than_random_ones():
    sim, nb, hidden = _planted()
    hard = BatchingProtocol.from_hard_negatives(nb, 8, seed=0)
    rand = BatchingProtocol.from_seed(48, 8, seed=0)
    # batches of 8 grown along the planted groups of 8 recover them exactly
    purity = np.mean([len(np.unique(hidden[b])) == 1 for b in hard.batches()])
    assert purity == 1.0
    h, r = within_batch_mean(sim, hard), within_batch_mean(sim, rand)
    assert h > 1.0 > 0.5 > r  # same-group similarity is >= 1, a random batch mate is one of 6 groups


def test_hard_negative_batching_is_deterministic_from_the_seed():
    rng = np.random.default_rng(1)
    nb = np.stack([rng.choice(np.delete(np.arange(60), k), 3, replace=False) for k in range(60)])
    a = BatchingProtocol.from_hard_negatives(nb, 10, seed=4)
    b = BatchingProtocol.from_hard_negatives(nb.copy(), 10, seed=4)
    c = BatchingProtocol.from_hard_negatives(nb, 10, seed=5)
    np.testing.assert_array_equal(a.batch_ids, b.batch_ids)
    assert not np.array_equal(a.batch_ids, c.batch_ids)


def test_within_batch_mean_matches_a_loop():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(20, 20))
    p = BatchingProtocol.from_seed(20, 6, seed=1)
    ref = np.mean([sim[a, c] for bt in p.batches() for a in bt for c in bt if a != c])
    assert within_batch_mean(sim, p) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="similarity must be"):
        within_batch_mean(sim[:5, :5], p)


@pytest.mark.parametrize("nb, batch_size, match", [
    (np.array([1, 0, 1]), 2, "2-D array"),
    (np.zeros((4, 0), dtype=int), 2, "m >= 1"),
    (np.array([[1.0], [0.0], [1.0]]), 2, "integer"),
    (np.array([[1], [0], [7]]), 2, "outside 0..2"),
    (np.array([[1], [1], [0]]), 2, "pair 1 lists itself"),
    (np.array([[1], [0], [0]]), 1, "batch_size must be >= 2"),
    (np.array([[0]]), 2, "at least 2 pairs"),
])
def test_hard_negative_batching_errors(nb, batch_size, match):
    with pytest.raises(ValueError, match=match):
        BatchingProtocol.from_hard_negatives(nb, batch_size, seed=0)
