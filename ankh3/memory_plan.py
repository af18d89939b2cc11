"""How much memory a run needs per device, before launching it: an ahead-of-time compile of the train step.

    from ankh3.memory_plan import plan_for_config
    print(plan_for_config(config, devices=8).report())

The train step is lowered and compiled for a virtual mesh of the configured size (CPU devices,
forced to the count in a subprocess when this process has fewer) from `jax.ShapeDtypeStruct`
inputs: nothing is allocated. Parameters and optimizer state are counted from their shardings; the
step's temporaries (activations kept for the backward pass, gradients, workspace) come from the
compiler's memory analysis. It is an estimate from the CPU compiler: an accelerator's compiler fuses
and schedules differently (typically within tens of percent), and its runtime reserves some memory.

    python -m ankh3.memory_plan < config.json      # the subprocess form: a config as JSON in, the plan as JSON out
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

GIB = 1024 ** 3
# Memory per chip of the accelerators the platform runs on (GiB).
ACCELERATORS = {"TPU v4": 32, "TPU v5e": 16, "TPU v5p": 95, "H100": 80, "H200": 141}


@dataclasses.dataclass
class MemoryPlan:
    """Bytes per device of one training step on a (data, model) mesh."""

    shape: str
    data: int
    model: int
    fsdp: bool
    dtype: str
    batch_size: int
    params: int
    optimizer: int
    temporaries: int
    total: int                 # arguments + outputs (not donated) + temporaries, per the compiler
    device_memory_gb: float = 0.0

    @property
    def devices(self) -> int:
        return self.data * self.model

    def fits(self, gib: float) -> bool:
        return self.total <= gib * GIB

    def report(self) -> str:
        """The plan's lines; the first contains 'per device' and the total in GiB."""
        layout = f"data={self.data} x model={self.model}{' (fsdp)' if self.fsdp else ''}"
        lines = [
            f"memory plan: {self.total / GIB:.2f} GiB per device for {self.shape} on a {layout} mesh "
            f"(global batch {self.batch_size}, compute {self.dtype}; estimate from the CPU compiler)",
            f"  parameters {self.params / GIB:.2f} GiB, optimizer state {self.optimizer / GIB:.2f} GiB, "
            f"step temporaries {self.temporaries / GIB:.2f} GiB",
            "  fits: " + ", ".join(f"{name} {gib} GiB {'yes' if self.fits(gib) else 'no'}"
                                   for name, gib in ACCELERATORS.items()),
        ]
        if self.device_memory_gb > 0:
            verdict = "fits" if self.fits(self.device_memory_gb) else "does NOT fit"
            lines.append(f"  {verdict} config.mesh.device_memory_gb={self.device_memory_gb:g} GiB")
        return "\n".join(lines)


def planned_devices(config, devices: int | None = None) -> int:
    """The mesh size to plan for: `devices`, else config.mesh.devices, else this machine's (at least model)."""
    import jax

    count = devices or int(config.mesh.get("devices", 0)) or jax.device_count()
    return max(count, int(config.mesh.model))


def plan_for_config(config, devices: int | None = None) -> MemoryPlan:
    """The plan of `config` on `devices` devices; compiled here when this process has that many CPU
    devices, else in a subprocess with that many forced."""
    import jax

    count = planned_devices(config, devices)
    if len(jax.devices("cpu")) >= count:
        return compile_plan(config, count)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "ankh3.memory_plan", str(count)], input=config.to_json(),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        from ankh3.config import ConfigError

        lines = done.stderr.strip().splitlines()
        raise ConfigError(f"the memory plan could not be compiled: {lines[-1] if lines else done.returncode}")
    return MemoryPlan(**json.loads(done.stdout.strip().splitlines()[-1]))


def _bytes_per_device(tree) -> int:
    """Sum over leaves (ShapeDtypeStructs with shardings) of one device's shard."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def compile_plan(config, devices: int) -> MemoryPlan:
    """Lowers and compiles the train step on the first `devices` CPU devices; nothing is allocated."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from ankh3.assembly import sharding_rules
    from ankh3.config import ConfigError, build_mixture, model_config
    from ankh3.model import T5
    from ankh3.optimizer import OptimizerSpec, make_optimizer
    from ankh3.sharding import logical_to_spec, make_mesh, state_shardings
    from ankh3.train import make_train_step

    model_axis = int(config.mesh.model)
    if devices % model_axis:
        raise ConfigError(f"config.mesh.model={model_axis} must divide the {devices} devices planned for")
    mesh = make_mesh(devices // model_axis, model_axis, devices=jax.devices("cpu")[:devices])
    rules = sharding_rules(config)
    cfg = model_config(config.model, "tpu")  # dtype 'auto' as on an accelerator (bfloat16)
    tasks = len(build_mixture(config.objectives, config.mixture_granularity).task_names)
    tx, _ = make_optimizer(OptimizerSpec.from_config(config.optimizer, config.train.steps))

    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)

    def placed(tree):
        shardings = state_shardings(tree, mesh, rules)
        return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), tree, shardings)

    params, rest = placed(params), placed(rest)
    replicated = NamedSharding(mesh, PartitionSpec())
    with jax.set_mesh(mesh):
        init = jax.jit(tx.init).lower(params).compile()
    opt_state = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                             init.out_info, init.output_shardings)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), "params": params,
             "rest": rest,
             "opt_state": opt_state}
    data = config.data
    batch_spec = NamedSharding(mesh, logical_to_spec(("batch", None), rules))
    b, le, ld = int(data.batch_size), int(data.encoder_length), int(data.decoder_length)
    batch = {"encoder_tokens": jax.ShapeDtypeStruct((b, le), jnp.int32, sharding=batch_spec),
             "decoder_inputs": jax.ShapeDtypeStruct((b, ld), jnp.int32, sharding=batch_spec),
             "decoder_targets": jax.ShapeDtypeStruct((b, ld), jnp.int32, sharding=batch_spec),
             "decoder_weights": jax.ShapeDtypeStruct((b, ld), jnp.float32, sharding=batch_spec),
             "task": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=NamedSharding(mesh, logical_to_spec(("batch",), rules)))}
    step = make_train_step(graphdef, tx, tasks, cfg.dropout_rate > 0)
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes)
    return MemoryPlan(shape=str(config.model.shape), data=devices // model_axis, model=model_axis,
                      fsdp=bool(config.mesh.get("fsdp", False)), dtype=cfg.dtype, batch_size=b,
                      params=_bytes_per_device(params), optimizer=_bytes_per_device(opt_state),
                      temporaries=int(memory.temp_size_in_bytes), total=int(total),
                      device_memory_gb=float(config.mesh.get("device_memory_gb", 0.0)))


def main() -> None:
    import ml_collections

    config = ml_collections.ConfigDict(json.loads(sys.stdin.read()))
    plan = compile_plan(config, int(sys.argv[1]))
    print(json.dumps(dataclasses.asdict(plan)))


if __name__ == "__main__":
    main()
