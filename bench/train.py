"""Training throughput: EmbeddingMLP steps vs PyTorch on the same batch; large tables, dense vs row optimizers.

    python -m bench train --scale small|large

``mlp``: the step of ``fgjax.training.loop`` (``make_train_step``: jitted, state donated, Adam; B
positives + B·n sampled negatives per step) against the same model, loss and
Adam in PyTorch eager and with ``torch.compile`` (loss compiled, optimizer
step eager) on the same sizes. examples/s counts scored (user, item) pairs.

``tables``: one step with 64-wide tables (small: 100k users x 20k items;
large: 10M users x 1M items) and dense Adam on everything
(``train.table_optimizer: dense``) vs row-wise Adagrad / lazy Adam
(``train.table_optimizer: row_adagrad | lazy_adam``, ``fgjax.training.sparse``) that
touch only the batch's rows, row-sharded: the same loop step with another optimizer state.

``dp``: the EmbeddingMLP step under ``train.privacy`` (user-level DP-SGD,
``fgjax.training.privacy``) beside the non-private step on the same model
and the same number of positives per step (``batch / examples_per_user``
expected users with ``examples_per_user`` positives each; the step holds
``capacity`` users, padding masked): per-user gradients (``jax.vmap`` over
users, each the size of every parameter, tables included), per-user
clipping and Gaussian noise, then Adam. Not run at ``large``: per-user dense
table gradients grow with capacity x table size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import _report

SIZES = {
    "smoke": {"mlp": {"users": 2_000, "items": 1_000, "batch": 512, "negatives": 4, "embed": 32, "hidden": 64},
              "tables": {"users": 20_000, "items": 5_000, "batch": 512, "negatives": 4, "embed": 64, "hidden": 64}},
    "small": {"mlp": {"users": 10_000, "items": 2_000, "batch": 1024, "negatives": 4, "embed": 32, "hidden": 64},
              "tables": {"users": 100_000, "items": 20_000, "batch": 1024, "negatives": 4, "embed": 64, "hidden": 64}},
    "large": {"mlp": {"users": 1_000_000, "items": 100_000, "batch": 65_536, "negatives": 4, "embed": 32, "hidden": 64},
              "tables": {"users": 10_000_000, "items": 1_000_000, "batch": 65_536, "negatives": 4, "embed": 64,
                         "hidden": 64}},
}


def _batch(rng, s):
    return rng.integers(0, s["users"], s["batch"]).astype(np.int32), rng.integers(0, s["items"], s["batch"]).astype(np.int32)


def _jax_steps(s, timing, seed, kinds=("dense",)):
    import dataclasses

    import jax

    from fgjax.config import Config, ModelConfig
    from fgjax.models import build_model, split_params
    from fgjax.training.loop import init_state, make_mesh, make_optimizer, make_train_step, state_shardings, table_optimizer

    mesh = make_mesh(1)
    users, items = _batch(np.random.default_rng(seed), s)
    out = {}
    for kind in kinds:
        config = dataclasses.replace(
            Config(), model=ModelConfig(embed_dim=s["embed"], hidden_dim=s["hidden"]),
            train=dataclasses.replace(Config().train, learning_rate=1e-3, negatives=s["negatives"], table_optimizer=kind))
        graphdef, params = split_params(build_model(config, s["users"], s["items"], seed=seed))
        adam, rows = make_optimizer(config), table_optimizer(config)
        state = init_state(params, adam, rows)
        shardings = state_shardings(state, mesh)
        state = jax.device_put(state, shardings)
        step = make_train_step(graphdef, adam, mesh, shardings, seed=seed, table_opt=rows)
        del params
        box = [state]

        def run():
            box[0], loss = step(box[0], {"user": users, "item": items})
            return loss

        out[kind] = _report.time_call(run, **timing)
        box.clear()  # drop the state before the next kind allocates its own
        del state
    return out


#: The dp case: positives per user per step, and each user's examples to draw them from.
DP = {"smoke": {"examples_per_user": 8, "user_examples": 20}, "small": {"examples_per_user": 8, "user_examples": 20}}


def _dp_steps(s, dp, timing, seed):
    """The non-private step and the private one (``train.privacy``) on the same model and positives per step."""
    import dataclasses

    import jax

    from fgjax.config import Config, ModelConfig, PrivacyConfig
    from fgjax.models import build_model, split_params
    from fgjax.training import privacy
    from fgjax.training.loop import init_state, make_mesh, make_optimizer, make_train_step, state_shardings

    mesh = make_mesh(1)
    m = dp["examples_per_user"]
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(s["users"], dtype=np.int32), dp["user_examples"])
    items = rng.integers(0, s["items"], len(owners)).astype(np.int32)
    private = PrivacyConfig(enabled=True, target_epsilon=8.0, users_per_step=s["batch"] // m, examples_per_user=m)
    config = dataclasses.replace(
        Config(), model=ModelConfig(embed_dim=s["embed"], hidden_dim=s["hidden"]),
        train=dataclasses.replace(Config().train, learning_rate=1e-3, negatives=s["negatives"], privacy=private))
    plan = privacy.plan_privacy(private, s["users"], steps=1000)
    sampler = privacy.UserSampler(owners, sampling_rate=plan.sampling_rate, capacity=plan.capacity,
                                  examples_per_user=m, seed=seed)
    idx, mask = sampler.indices(0)
    batches = {"non_private": {"user": owners[:s["batch"]], "item": items[:s["batch"]]},
               "dp": {"user": owners[idx], "item": items[idx], "mask": mask}}
    out = {}
    for kind, batch in batches.items():
        graphdef, params = split_params(build_model(config, s["users"], s["items"], seed=seed))
        adam = make_optimizer(config)
        state = init_state(params, adam)
        shardings = state_shardings(state, mesh)
        box = [jax.device_put(state, shardings)]
        step = make_train_step(graphdef, adam, mesh, shardings, seed=seed,
                               privacy_plan=plan if kind == "dp" else None)

        def run():
            box[0], loss = step(box[0], batch)
            return loss

        out[kind] = _report.time_call(run, **timing)
        box.clear()
    out["plan"] = {"capacity": plan.capacity, "expected_users": plan.expected_users,
                   "sampled_users": int(mask.sum()), "noise_multiplier": plan.noise_multiplier,
                   "examples_per_user": m, "positives_per_step": s["batch"]}
    return out


def _torch_mlp(torch, s, timing, seed):
    dev = _report.torch_device(torch)
    nn = torch.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.user = nn.Embedding(s["users"], s["embed"])
            self.item = nn.Embedding(s["items"], s["embed"])
            self.hidden = nn.Linear(2 * s["embed"], s["hidden"])
            self.out = nn.Linear(s["hidden"], 1)

        def forward(self, u, i):
            return self.out(torch.relu(self.hidden(torch.cat([self.user(u), self.item(i)], -1))))[..., 0]

    users, items = (torch.from_numpy(x.astype(np.int64)).to(dev) for x in _batch(np.random.default_rng(seed), s))
    n, b = s["negatives"], s["batch"]
    labels = torch.cat([torch.ones(b), torch.zeros(b * n)]).to(dev)
    results = {}
    for name in ("torch", "torch_compile"):
        model = MLP().to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss_fn(u, i, negs):
            all_u = torch.cat([u, u.repeat_interleave(n)])
            all_i = torch.cat([i, negs.reshape(-1)])
            return torch.nn.functional.binary_cross_entropy_with_logits(model(all_u, all_i), labels)

        fn = loss_fn
        if name == "torch_compile":
            fn, error = _report.torch_compiled(torch, loss_fn)
            if fn is None:
                results["torch_compile_error"] = error
                continue

        def step():
            negs = torch.randint(0, s["items"], (b, n), device=dev)
            opt.zero_grad(set_to_none=True)
            loss = fn(users, items, negs)
            loss.backward()
            opt.step()
            return loss

        try:
            results[name] = _report.time_call(step, sync=_report.torch_sync(torch), **timing)
        except Exception as exc:  # inductor without a toolchain
            results[f"{name}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _report.suite_parser("python -m bench train", __doc__.split("\n\n")[0]).parse_args(argv)
    size = SIZES[args.scale]
    timing = {"repeats": args.repeats or 3, "warmup": 2, "min_time": 0.0 if args.scale != "large" else 0.2}
    payload: dict[str, Any] = {"benchmark": "train", **_report.environment(),
                               "config": {**size, "scale": args.scale}}
    print(f"train on {payload['device']}", flush=True)
    rows = []
    m = size["mlp"]
    pairs = m["batch"] * (1 + m["negatives"])
    mlp = _jax_steps(m, timing, args.seed)
    torch = _report.import_torch() if not args.no_torch else None
    if torch is not None:
        mlp.update(_torch_mlp(torch, m, timing, args.seed))
        mlp["torch_device"] = _report.torch_device(torch)
    t = {k: v["median_s"] for k, v in mlp.items() if isinstance(v, dict)}
    payload["mlp"] = {"timings": mlp, "examples_per_s": pairs / t["dense"]}
    for ref in ("torch", "torch_compile"):
        if ref in t:
            payload["mlp"][f"speedup_vs_{ref}"] = t[ref] / t["dense"]
    for name, sec in t.items():
        rows.append({"what": f"EmbeddingMLP {name if name != 'dense' else 'fgjax'}", "ms": sec * 1e3,
                     "examples_per_s": pairs / sec})
    tb = size["tables"]
    tpairs = tb["batch"] * (1 + tb["negatives"])
    tables = _jax_steps(tb, timing, args.seed, kinds=("dense", "row_adagrad", "lazy_adam"))
    tt = {k: v["median_s"] for k, v in tables.items()}
    payload["tables"] = {"timings": tables, "row_adagrad_speedup_vs_dense_adam": tt["dense"] / tt["row_adagrad"],
                         "lazy_adam_speedup_vs_dense_adam": tt["dense"] / tt["lazy_adam"],
                         "table_bytes": (tb["users"] + tb["items"]) * tb["embed"] * 4}
    for name, sec in tt.items():
        rows.append({"what": f"tables {tb['users']:,}x{tb['embed']} {name}", "ms": sec * 1e3,
                     "examples_per_s": tpairs / sec})
    payload["summary"] = {"mlp_examples_per_s": payload["mlp"]["examples_per_s"],
                          "mlp_speedup_vs_torch": payload["mlp"].get("speedup_vs_torch"),
                          "row_adagrad_speedup_vs_dense_adam": payload["tables"]["row_adagrad_speedup_vs_dense_adam"]}
    if args.scale in DP:
        dp = _dp_steps(m, DP[args.scale], timing, args.seed)
        td = {k: dp[k]["median_s"] for k in ("non_private", "dp")}
        payload["dp"] = {"timings": {k: dp[k] for k in td}, "plan": dp["plan"],
                         "dp_step_cost_vs_non_private": td["dp"] / td["non_private"]}
        # The private step scores capacity x examples_per_user positives (padding included) with their negatives.
        dp_pairs = dp["plan"]["capacity"] * dp["plan"]["examples_per_user"] * (1 + m["negatives"])
        for name, sec in td.items():
            rows.append({"what": f"EmbeddingMLP step {name.replace('_', '-')}", "ms": sec * 1e3,
                         "examples_per_s": (pairs if name == "non_private" else dp_pairs) / sec})
        payload["summary"]["dp_step_cost_vs_non_private"] = payload["dp"]["dp_step_cost_vs_non_private"]
    cols = [("what", "step", ""), ("ms", "ms", ".3f"), ("examples_per_s", "examples/s", ".3g")]
    return _report.finish(payload, args, rows, cols)


if __name__ == "__main__":
    main()
