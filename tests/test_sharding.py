"""Tests of meshes, the logical-axis rules table, and running the model sharded on 2x2 CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from ankh3.model import T5, get_shape
from ankh3.sharding import (FSDP_RULES, ShardingError, constrain, init_sharded, logical_to_spec, make_mesh,
                            shard_batch, shard_model)

CFG = get_shape("tiny", vocab_size=64, d_model=32, d_ff=64, num_heads=2, d_kv=16, relative_buckets=16)


def _batch():
    rng = np.random.default_rng(0)
    enc = rng.integers(2, CFG.vocab_size, (4, 12)).astype(np.int32)
    enc[1, 8:] = 0
    targets = rng.integers(2, CFG.vocab_size, (4, 6)).astype(np.int32)
    dec = np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], axis=1)
    return dict(enc=enc, dec=dec, targets=targets)


def _loss(model, batch):
    logits = model(batch["enc"], batch["dec"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def test_make_mesh_has_auto_data_and_model_axes():
    mesh = make_mesh(data=2, model=2)
    assert mesh.axis_names == ("data", "model") and mesh.axis_sizes == (2, 2)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ShardingError, match="needs 6 devices but 4"):
        make_mesh(data=3, model=2)


def test_rules_table_maps_logical_axes():
    assert logical_to_spec(("layers", "embed", "heads")) == P(None, None, "model")
    assert logical_to_spec(("batch", "length", "vocab")) == P("data", None, "model")
    assert logical_to_spec(("layers", "mlp", "embed"), FSDP_RULES) == P(None, "model", "data")
    # A mesh axis is never used twice in one spec.
    assert logical_to_spec(("heads", "mlp")) == P("model", None)


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 8))
    assert constrain(x, ("batch", "embed")) is x


def test_shard_model_places_parameters_by_their_logical_axes():
    model = shard_model(T5(CFG, rngs=nnx.Rngs(0)), make_mesh(2, 2))
    assert model.encoder.attn.q[...].sharding.spec == P(None, None, "model")
    assert model.decoder.mlp.wo[...].sharding.spec == P(None, "model", None)
    assert model.lm_head[...].sharding.spec == P(None, "model")
    # A dimension the mesh axis does not divide stays whole (3 heads over 2 devices).
    odd = shard_model(T5(get_shape("tiny", num_heads=3, d_kv=8, d_model=24), rngs=nnx.Rngs(0)), make_mesh(2, 2))
    assert odd.encoder.relative_bias[...].sharding.spec == P(None, None)


def test_sharded_forward_and_gradients_equal_unsharded():
    batch = _batch()
    ref_model = T5(CFG, rngs=nnx.Rngs(0))
    ref_logits = nnx.jit(lambda m, b: m(b["enc"], b["dec"]))(ref_model, batch)
    ref_grads = nnx.state(nnx.jit(nnx.grad(_loss))(ref_model, batch), nnx.Param)

    mesh = make_mesh(2, 2)
    model = shard_model(T5(CFG, rngs=nnx.Rngs(0)), mesh)
    with jax.set_mesh(mesh):
        sharded = shard_batch(batch, mesh)
        logits = nnx.jit(lambda m, b: m(b["enc"], b["dec"]))(model, sharded)
        grads = nnx.state(nnx.jit(nnx.grad(_loss))(model, sharded), nnx.Param)
    assert logits.sharding.spec == P("data", None, "model")
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_init_sharded_builds_model_and_optimizer_in_place_on_the_mesh():
    mesh = make_mesh(2, 2)

    def make():
        model = T5(CFG, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    model, optimizer = init_sharded(make, mesh, FSDP_RULES)
    assert model.encoder.mlp.wi_0[...].sharding.spec == P(None, "data", "model")
    assert optimizer.opt_state[0].mu["encoder"]["mlp"]["wi_0"][...].sharding.spec == P(None, "data", "model")
    np.testing.assert_allclose(model.encoder.mlp.wi_0[...], T5(CFG, rngs=nnx.Rngs(0)).encoder.mlp.wi_0[...], rtol=1e-6)
