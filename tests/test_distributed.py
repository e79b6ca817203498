"""Two processes on localhost (CPU, gloo collectives) run the training loop like one process on the whole batch."""

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
    mode, pid, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jax
    from fgjax.training import distributed
    if mode == "multi":
        distributed.initialize(f"localhost:{port}", 2, pid)
    import numpy as np
    from fgjax.config import load_config
    from fgjax.training.loop import Validation, train_examples
    # The loop itself: train.distributed (initialize is then a no-op), each process feeds
    # its half of every global batch; a mesh over every device of every process.
    config = load_config(None, ["model.embed_dim=8", "model.hidden_dim=16", "train.batch_size=16", "train.epochs=2",
                                "train.learning_rate=0.05", "train.negatives=2", "train.seed=1",
                                f"train.distributed={str(mode == 'multi').lower()}"])
    rng = np.random.default_rng(0)
    examples = {"user": rng.integers(0, 50, 64).astype(np.int32), "item": rng.integers(0, 30, 64).astype(np.int32)}
    validation = Validation(np.arange(20, dtype=np.int32), examples["item"][:20, None], None)
    result = train_examples(config, examples, validation, num_users=50, num_items=30, checkpoint_dir=out,
                            progress=False)
    emb = np.asarray(result.params["user_embed"]["embedding"])
    print("RESULT" + json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                                 "losses": result.step_losses.tolist(), "emb": emb.ravel()[:40].tolist(),
                                 "history": result.history, "steps": result.steps}))
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
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, "multi", str(i), port, str(tmp_path / "multi")],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    if any(p.returncode for p in procs):
        err = "\n".join(o[1][-1500:] for o in outs)
        if "gloo" in err.lower() and ("not" in err.lower() or "unsupported" in err.lower()):
            pytest.skip(f"this jaxlib has no CPU collectives: {err.splitlines()[-1]}")
        raise AssertionError(err)
    multi = [json.loads(o[0].split("RESULT", 1)[1]) for o in outs]
    env2 = dict(env, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    single = subprocess.run([sys.executable, "-c", WORKER, "single", "0", "0", str(tmp_path / "single")],
                            capture_output=True, text=True,
                            env=env2, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    one = json.loads(single.stdout.split("RESULT", 1)[1])
    assert [m["processes"] for m in multi] == [2, 2] and multi[0]["devices"] == 2 and one["devices"] == 2
    assert one["steps"] == 8 and len(one["losses"]) == 8
    for m in multi:
        assert m["steps"] == one["steps"]
        np.testing.assert_allclose(m["losses"], one["losses"], rtol=2e-5)
        np.testing.assert_allclose(m["emb"], one["emb"], rtol=1e-4, atol=1e-5)
        for a, b in zip(m["history"], one["history"]):
            assert a["val_ndcg@10"] == pytest.approx(b["val_ndcg@10"], abs=1e-6)
    # Both processes wrote one checkpoint directory together; it holds the last step.
    steps = sorted(int(p.name) for p in (tmp_path / "multi" / "train").iterdir() if p.name.isdigit())
    assert steps[-1] == 8
