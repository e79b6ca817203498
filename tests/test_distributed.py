"""Two processes on localhost (CPU, gloo collectives) train like one process on the whole batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fgjax.training.distributed import process_files

WORKER = textwrap.dedent(
    """
    import json, sys
    mode, pid, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import jax
    from fgjax.training import distributed
    if mode == "multi":
        distributed.initialize(f"localhost:{port}", 2, pid)
    import numpy as np, optax
    from fgjax.config import ModelConfig
    from fgjax.models import build_model, split_params
    from fgjax.training.loop import TrainState, make_mesh, make_train_step
    from jax.sharding import NamedSharding, PartitionSpec as P
    graphdef, params = split_params(build_model(ModelConfig(embed_dim=8, hidden_dim=16), 50, 30, seed=0))
    mesh = make_mesh(0)  # every device of every process
    opt = optax.adam(0.05)
    state = jax.device_put(TrainState(params, opt.init(params), jax.numpy.int32(0)), NamedSharding(mesh, P()))
    step = make_train_step(graphdef, opt, mesh, num_items=30, negatives=2, seed=1)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(4):
        users = rng.integers(0, 50, 16).astype(np.int32)
        items = rng.integers(0, 30, 16).astype(np.int32)
        if mode == "multi":  # each process holds half of the global batch
            half = slice(pid * 8, pid * 8 + 8)
            users, items = distributed.global_batch(mesh, users[half], items[half])
        state, loss = step(state, users, items)
        losses.append(float(loss))
    emb = np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(
        state.params["user_embed"]["embedding"], tiled=True))) if mode == "multi" else np.asarray(state.params["user_embed"]["embedding"])
    print("RESULT" + json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                                 "losses": losses, "emb": emb.ravel()[:40].tolist()}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_process_files_split_the_shards_between_processes():
    files = [f"part-{i}.parquet" for i in (3, 0, 2, 1, 4)]
    a, b = process_files(files, 0, 2), process_files(files, 1, 2)
    assert a == ["part-0.parquet", "part-2.parquet", "part-4.parquet"] and b == ["part-1.parquet", "part-3.parquet"]


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, "multi", str(i), port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    if any(p.returncode for p in procs):
        err = "\n".join(o[1][-1500:] for o in outs)
        if "gloo" in err.lower() and ("not" in err.lower() or "unsupported" in err.lower()):
            pytest.skip(f"this jaxlib has no CPU collectives: {err.splitlines()[-1]}")
        raise AssertionError(err)
    multi = [json.loads(o[0].split("RESULT", 1)[1]) for o in outs]
    env2 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    single = subprocess.run([sys.executable, "-c", WORKER, "single", "0", "0"], capture_output=True, text=True,
                            env=env2, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    one = json.loads(single.stdout.split("RESULT", 1)[1])
    assert [m["processes"] for m in multi] == [2, 2] and multi[0]["devices"] == 2 and one["devices"] == 2
    for m in multi:
        np.testing.assert_allclose(m["losses"], one["losses"], rtol=2e-5)
        np.testing.assert_allclose(m["emb"], one["emb"], rtol=1e-4, atol=1e-5)
