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
