"""Meshes and the one table that maps the model's logical axis names to mesh axes.

Parameters carry their logical axis names in the `logical_axes` metadata of their
`nnx.Variable`; activations are constrained with `constrain`, a no-op without a mesh.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from flax import nnx

from ankh3.errors import UserError

# Logical axis -> mesh axis (None = replicated). Data parallel over `data`, tensor
# (Megatron-style) parallel over `model`: heads, the feed-forward width and the vocabulary
# are split, the model width stays whole so every matmul needs at most one all-reduce.
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("length", None),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("layers", None),
    ("relpos", None),
)

# Fully sharded data parallel: parameters (and optimizer state) also split their model
# width over `data`, for models whose state does not fit on one device.
FSDP_RULES: tuple[tuple[str, str | None], ...] = tuple(
    (name, "data") if name == "embed" else (name, axis) for name, axis in RULES
)

MESH_AXES = ("data", "model")


class ShardingError(UserError, ValueError):
    """A mesh or a sharding request that cannot be satisfied."""


def make_mesh(data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (data, model) mesh with Auto axis types (the classic automatic sharding)."""
    devices = list(jax.devices() if devices is None else devices)
    if data * model != len(devices):
        raise ShardingError(
            f"mesh data={data} x model={model} needs {data * model} devices but {len(devices)} are "
            f"available; choose data*model == {len(devices)}"
        )
    return jax.make_mesh(
        (data, model), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
    )


def logical_to_spec(axes: Iterable[str | None], rules=RULES) -> PartitionSpec:
    """The PartitionSpec for logical axis names; a mesh axis is used at most once."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in axes:
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis in used:
            mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh) -> PartitionSpec:
    """Replicate any dimension that the mesh axis does not divide (e.g. vocab 144 on 5 devices)."""
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    return PartitionSpec(
        *(axis if axis is None or dim % sizes[axis] == 0 else None for axis, dim in zip(spec, shape))
    )


def _current_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def constrain(x: jax.Array, axes: Sequence[str | None], rules=RULES) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = _current_mesh()
    if mesh is None:
        return x
    spec = _fit_spec(logical_to_spec(axes, rules), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def variable_sharding(variable: nnx.Variable, mesh, rules=RULES) -> NamedSharding:
    """The NamedSharding of one variable from its `logical_axes` metadata (replicated if none)."""
    value = variable.get_value()
    axes = variable.get_metadata().get("logical_axes")
    if axes is None or len(axes) != value.ndim:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, _fit_spec(logical_to_spec(axes, rules), value.shape, mesh))


def state_shardings(tree, mesh, rules=RULES):
    """A pytree of NamedShardings matching an nnx State / module (for jit in/out_shardings)."""
    return jax.tree.map(
        lambda v: v.replace(variable_sharding(v, mesh, rules)) if isinstance(v, nnx.Variable) else
        NamedSharding(mesh, PartitionSpec()),
        tree if isinstance(tree, nnx.State) else nnx.state(tree),
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )


def place(x, sharding):
    """jax.device_put(x, sharding), also when the sharding spans other processes' devices: every
    process then holds the same whole value (same seed) and contributes the shards it owns."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    value = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def shard_model(module, mesh, rules=RULES):
    """Place every variable of a module (model or optimizer) on the mesh, in place; returns it."""
    state = nnx.state(module)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(module, jax.tree.map(place, state, shardings))
    return module


def init_sharded(make: Callable[[], Any], mesh, rules=RULES):
    """Build `make()` (a model, or model + optimizer) directly into its shards on the mesh.

    Nothing is materialised whole on one device, so models larger than one device's memory
    can be created.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_batch(batch, mesh, rules=RULES):
    """Put a batch (dict of arrays, batch first) on the mesh, split over the batch axis.

    With several JAX processes, `batch` is this process's share (its consecutive rows of the global
    batch) and the result is the global array assembled from every process's share.
    """
    def put(x):
        if jax.process_count() > 1:
            spec = logical_to_spec(("batch",) + (None,) * (x.ndim - 1), rules)
            return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)
        spec = _fit_spec(logical_to_spec(("batch",) + (None,) * (x.ndim - 1), rules), x.shape, mesh)
        return jax.device_put(x, NamedSharding(mesh, spec))
    return jax.tree.map(put, batch)
