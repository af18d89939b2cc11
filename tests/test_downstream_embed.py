"""Frozen-encoder embeddings: row i is residue i, bucketing is invisible, the cache is reused."""
import numpy as np
import pytest
from flax import nnx

from ankh3.downstream import embed
from ankh3.model import T5, get_shape
from ankh3.tokenizer import Tokenizer

TOK = Tokenizer.default()
SEQS = ["MKTAYIAKQR", "GS", "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQ", "WWLLKK"]


@pytest.fixture(scope="module")
def model():
    return T5(get_shape("tiny", d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=1,
                        num_decoder_layers=1), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def encode_fn(model):
    return embed.make_model_encode_fn(model)


def _direct(model, seq, prefix):
    ids = np.concatenate([[TOK.task_id(prefix)], TOK.encode(seq), [TOK.eos_id]])[None].astype(np.int32)
    return np.asarray(model.encode(ids, ids != 0))[0]


@pytest.mark.parametrize("prefix", ["[NLU]", "[S2S]"])
def test_row_i_is_residue_i(model, encode_fn, prefix):
    out = embed.extract_embeddings(encode_fn, TOK, SEQS, prefix, progress=False)
    for seq, emb in zip(SEQS, out):
        assert emb.shape == (len(seq), 32)
        np.testing.assert_allclose(emb, _direct(model, seq, prefix)[1:-1], atol=1e-5)


def test_prefix_changes_embeddings(encode_fn):
    nlu = embed.extract_embeddings(encode_fn, TOK, SEQS[:1], "[NLU]", progress=False)[0]
    s2s = embed.extract_embeddings(encode_fn, TOK, SEQS[:1], "[S2S]", progress=False)[0]
    assert not np.allclose(nlu, s2s)


def test_bucketing_and_batch_size_do_not_change_embeddings(encode_fn):
    one_by_one = [embed.extract_embeddings(encode_fn, TOK, [s], progress=False)[0] for s in SEQS]
    bucketed = embed.extract_embeddings(encode_fn, TOK, SEQS, token_budget=256, multiple=16, progress=True)
    for a, b in zip(one_by_one, bucketed):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_pooling_mean_and_max(encode_fn):
    per_residue = embed.extract_embeddings(encode_fn, TOK, SEQS, progress=False)
    mean = embed.extract_embeddings(encode_fn, TOK, SEQS, pooling="mean", progress=False)
    top = embed.extract_embeddings(encode_fn, TOK, SEQS, pooling="max", progress=False)
    assert mean.shape == top.shape == (len(SEQS), 32)
    np.testing.assert_allclose(mean, np.stack([e.mean(0) for e in per_residue]), atol=1e-6)
    np.testing.assert_allclose(top, np.stack([e.max(0) for e in per_residue]), atol=1e-6)


def test_batches_use_a_handful_of_shapes_and_cover_every_sequence():
    lengths = np.random.default_rng(0).integers(10, 1000, 500)
    plan = embed.plan_batches(lengths, token_budget=16384)
    rows = sorted(i for members, _ in plan for i in members)
    assert rows == list(range(500))
    shapes = {shape for _, shape in plan}
    assert len(shapes) <= 12
    for members, (batch, length) in plan:
        assert len(members) <= batch and max(lengths[members]) <= length and batch * length <= 16384


def test_cache_hit_returns_identical_arrays_without_calling_the_encoder(encode_fn, tmp_path):
    calls = []

    def counting(tokens, mask):
        calls.append(tokens.shape)
        return encode_fn(tokens, mask)

    kwargs = dict(cache_dir=str(tmp_path), encoder_id="tiny:seed0", dataset_id="toy", progress=False)
    first = embed.cached_embeddings(counting, TOK, SEQS, "[NLU]", **kwargs)
    n_calls = len(calls)
    assert n_calls > 0
    second = embed.cached_embeddings(counting, TOK, SEQS, "[NLU]", **kwargs)
    assert len(calls) == n_calls
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # Another prefix, pooling or dataset is another entry.
    embed.cached_embeddings(counting, TOK, SEQS, "[S2S]", **kwargs)
    assert len(calls) > n_calls
    pooled = embed.cached_embeddings(counting, TOK, SEQS, "[NLU]", pooling="mean", **kwargs)
    assert pooled.shape == (len(SEQS), 32)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_cache_without_encoder_identity_is_refused(encode_fn, tmp_path):
    with pytest.raises(embed.EmbedError, match="encoder_id"):
        embed.cached_embeddings(encode_fn, TOK, SEQS, "[NLU]", cache_dir=str(tmp_path), encoder_id=None)


def test_onehot_control_shape_and_values():
    out = embed.onehot_embeddings(["ACx", "W"])
    assert [e.shape for e in out] == [(3, embed.ONEHOT_DIM), (1, embed.ONEHOT_DIM)]
    np.testing.assert_array_equal(out[0].sum(1), 1.0)
    assert out[0][2].argmax() == "ACDEFGHIKLMNPQRSTVWYXBZUO".index("X")
    assert out[0][0].argmax() != out[0][1].argmax()


def test_unknown_prefix_is_refused(encode_fn):
    with pytest.raises(embed.EmbedError, match="prefix"):
        embed.extract_embeddings(encode_fn, TOK, SEQS, "[XYZ]", progress=False)
