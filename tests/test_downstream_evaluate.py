"""Downstream driver end to end on small slices of the bundled tasks, plus probe training rules."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from ankh3.downstream import embed, evaluate, probe
from ankh3.downstream.heads import HeadConfig
from ankh3.downstream.tasks import load_task
from ankh3.model import T5, get_shape
from ankh3.tokenizer import Tokenizer

TOK = Tokenizer.default()
# d_model 28 = the one-hot width, so model, random and one-hot probes share compiled programs (test speed).
CFG = get_shape("tiny", d_model=embed.ONEHOT_DIM, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                num_decoder_layers=1)
MAX_LEN = 60  # short chains only: one bucket shape, a quick CPU run


def _short(name: str, per_split: int = 6):
    data = load_task(name)
    splits = {k: [ex for ex in v if len(ex.sequence) <= MAX_LEN][:per_split] for k, v in data.splits.items()}
    return dataclasses.replace(data, splits=splits)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("downstream")
    tasks = [_short("ssp3"), _short("contact"), _short("gb1")]
    seen = []
    res = evaluate.run_tasks(
        embed.make_model_encode_fn(T5(CFG, rngs=nnx.Rngs(0))), TOK, tasks, "[NLU]", seeds=1, epochs=2,
        cache_dir=str(out / "cache"), encoder_id="tiny-test", out_dir=str(out / "plots"),
        random_encode_fn=embed.make_random_encode_fn(CFG, seed=1), progress=False, on_result=seen.append,
        probe_config=probe.ProbeConfig(length_multiple=64))
    return res, seen, out


def test_run_tasks_returns_a_result_per_task_and_source(results):
    res, seen, _ = results
    assert [(r.name, r.source) for r in res] == [(t, s) for t in ("ssp3", "contact", "gb1")
                                                 for s in ("model", "onehot", "random")]
    assert seen == res
    by_key = {(r.name, r.source): r for r in res}
    assert 0.0 <= by_key["ssp3", "model"].metrics["test/q3_mean"] <= 1.0
    assert by_key["ssp3", "model"].metrics["test/q3_std"] == 0.0  # one seed
    assert {"test/p_l5_long_mean", "valid/p_l5_long_mean"} <= set(by_key["contact", "onehot"].metrics)
    assert np.isfinite(by_key["gb1", "random"].metrics["test/mse_mean"])
    assert by_key["gb1", "onehot"].params["embedding_dim"] == embed.ONEHOT_DIM
    assert by_key["gb1", "model"].params["seeds"] == "0"


def test_run_tasks_writes_pngs_and_caches_embeddings(results):
    res, _, out = results
    for r in res:
        assert r.artifacts and all(p.endswith(".png") for p in r.artifacts)
        for path in r.artifacts:
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Model and random encoders over the structure and GB1 splits; ssp3 and contact share chains.
    assert len(list((out / "cache").glob("*.npz"))) == 2 * (3 + 3)


def test_results_table_puts_controls_beside_the_model(results):
    table = evaluate.format_results_table(results[0])
    header, rule, *rows = table.splitlines()
    assert header.split() == ["task", "metric", "model", "onehot", "random"]
    assert [row.split()[:2] for row in rows] == [["ssp3", "test/q3"], ["contact", "test/p_l5_long"],
                                                 ["gb1", "test/spearman"]]
    assert all(row.count("±") == 3 for row in rows)


def test_seeds_are_aggregated_as_mean_and_sample_sd():
    per_seed = [{"test": {"q3": 0.5}}, {"test": {"q3": 0.7}}, {"test": {"q3": 0.6}}]
    out = evaluate.aggregate(per_seed)
    assert out["test/q3_mean"] == pytest.approx(0.6)
    assert out["test/q3_std"] == pytest.approx(0.1)


def test_random_control_needs_an_encoder():
    with pytest.raises(evaluate.EvaluateError, match="random_encode_fn"):
        evaluate.run_tasks(lambda t, m: None, TOK, [], seeds=1, controls=("random",))


def test_probe_keeps_the_best_validation_epoch():
    rng = np.random.default_rng(0)
    # The e2e fixture's width and bucket: the compiled regression step is reused.
    emb = [rng.normal(size=(20, embed.ONEHOT_DIM)).astype(np.float32) for _ in range(8)]
    split = probe.ProbeSplit(emb, [float(x[:, 0].mean()) for x in emb])
    calls = iter([0.1, 0.9, 0.3] + [0.5] * 10)  # epoch 2 wins on validation

    def score(name, predictions):
        return {"r": next(calls) if name == "valid" else 0.0}

    result = probe.train_probe("regression", {"train": split, "valid": split, "test": split}, score, "r",
                               probe.ProbeConfig(epochs=3, length_multiple=64), seed=0)
    assert result.best_epoch == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert set(result.predictions) == {"valid", "test"} and len(result.predictions["test"]) == 8


def test_contact_loss_ignores_near_diagonal_unknown_and_padded_pairs():
    labels = np.full((1, 8, 8), 1, np.int8)
    labels[0, 0, 7] = labels[0, 7, 0] = -1
    mask = np.arange(8)[None] < 7
    counted = np.asarray(probe.contact_pair_mask(labels, mask))
    i, j = np.nonzero(counted[0])
    assert (np.abs(i - j) >= probe.MIN_CONTACT_SEPARATION).all()
    assert counted[0, 0, 6] and not counted[0, 0, 5] and not counted[0, 0, 7] and not counted[0, 1, 7]


def test_training_crops_long_chains_and_their_contact_maps_alike():
    rng = np.random.default_rng(0)
    emb = [np.arange(n, dtype=np.float32)[:, None].repeat(4, 1) for n in (10, 30)]
    maps = [np.add.outer(np.arange(n), np.arange(n)).astype(np.int8) % 2 for n in (10, 30)]
    cfg = probe.ProbeConfig(batch_size=2, length_multiple=16, max_train_length=12)
    (_, batch), = probe.iterate_batches(probe.ProbeSplit(emb, maps), "contact", cfg, rng)
    assert batch["x"].shape == (2, 16, 4) and batch["mask"].sum(1).tolist() in ([10, 12], [12, 10])
    row = int(np.argmax(batch["mask"].sum(1)))
    start = int(batch["x"][row, 0, 0])  # residue index of the window's first row
    np.testing.assert_array_equal(batch["y"][row, :12, :12], maps[1][start:start + 12, start:start + 12])
    short, whole = (batch for _, batch in probe.iterate_batches(probe.ProbeSplit(emb, maps), "contact", cfg, rng=None))
    assert short["x"].shape[1] == 16 and whole["x"].shape[1] == 32  # evaluation sees whole chains, by bucket


def test_seeds_trained_together_match_seeds_trained_one_after_another():
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=(20, embed.ONEHOT_DIM)).astype(np.float32) for _ in range(8)]
    split = probe.ProbeSplit(emb, [float(x[:, 0].mean()) for x in emb])
    splits = {"train": split, "valid": split, "test": split}

    def score(name, predictions):
        return {"r": float(np.corrcoef(predictions, split.targets)[0, 1])}

    steps = []
    apart = probe.train_probes("regression", splits, score, "r", probe.ProbeConfig(epochs=2), seeds=(0, 1),
                               on_step=lambda done, total: steps.append((done, total)))
    together = probe.train_probes("regression", splits, score, "r", probe.ProbeConfig(epochs=2, seeds_together=True),
                                  seeds=(0, 1))
    for a, b in zip(apart, together, strict=True):
        assert a.best_epoch == b.best_epoch
        # Equal up to float32 rounding (batched and plain matmuls sum in other orders over 2 epochs).
        np.testing.assert_allclose(a.predictions["test"], b.predictions["test"], rtol=0.02, atol=1e-3)
    assert apart[0].metrics["test"]["r"] != apart[1].metrics["test"]["r"]  # seeds differ
    assert steps[-1] == (steps[-1][1], steps[-1][1]) and len(steps) == steps[-1][1]  # progress counts every step


def test_heads_initialised_together_have_each_seeds_own_values():
    params = probe.init_heads("regression", 16, HeadConfig(), [0, 3], label_mean=0.5)[1]
    for row, seed in enumerate((0, 3)):
        alone = nnx.split(probe.build_head("regression", 16, HeadConfig(), seed, label_mean=0.5), nnx.Param)[1]
        # Compiled and eager initialisers may differ in the last float32 bits.
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-7)
    assert float(params["out"]["bias"][0, 0]) == 0.5  # the regression head's bias starts at the label mean


def test_padded_lengths_are_multiples_of_the_bucket_unit():
    assert [probe.padded_length(n, 64) for n in (1, 64, 65, 190, 257, 399, 513, 1100)] == \
        [64, 64, 128, 192, 320, 448, 1024, 2048]
