"""The price of privacy on real data: NDCG@10 and a membership-inference gap per epsilon.

    python -m bench.privacy --data ../shared/data/ml-100k --results-md bench/RESULTS.md
    python -m bench privacy --data ../shared/data/ml-100k   (through the suite: DIR/privacy.json)

On MovieLens-100K under the field protocol (leave-last-out per user, full
ranking over the catalog, the items known before the test item masked;
``fgjax.data.split``, ``fgjax.evaluation.metrics``), the EmbeddingMLP is
trained on the *member* users only (a fixed random ``--members`` share of the
users; the others are held out entirely) with

- the non-private loop (``train`` settings of ``--config``), and
- user-level DP-SGD (``train.privacy``) at each ``--epsilons`` target
  (``inf``: the same sampled, clipped steps without noise), with the same
  settings for every epsilon (``--set`` overrides), never tuned on test.

For each run: test NDCG@10 / HitRate@10 over the member users, and a simple
membership-inference check: each user's mean loss on its own training
examples (``--mia-examples`` drawn with a fixed seed, fixed negatives),
for members and for held-out users; the gap (held-out minus members) and
the AUC of the attack "member if its loss is low" (0.5 = no better than a
coin). Writes ``--out`` JSON (device, date, versions, config, every number)
and, with ``--results-md``, replaces the privacy section of that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report

SECTION_START = "<!-- privacy:start -->"
SECTION_END = "<!-- privacy:end -->"
#: Private-run settings of the table (the same for every epsilon); --set overrides them.
DEFAULTS = ("train.privacy.users_per_step=128", "train.privacy.examples_per_user=16", "train.privacy.clip_norm=1.0",
            "train.privacy.delta=1e-5", "train.learning_rate=0.01")
SMOKE = ("train.epochs=2", "train.batch_size=64", "model.embed_dim=8", "model.hidden_dim=8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.privacy", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/ml100k.yaml", help="YAML config (data, model, train)")
    p.add_argument("--data", default=None, help="the data folder or file (= --set data.path=...)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.privacy.users_per_step=64")
    p.add_argument("--epsilons", default="1,4,8,inf", help="comma-separated target epsilons (inf = no noise)")
    p.add_argument("--private-epochs", type=int, default=30, help="epochs of each private run (users / "
                   "users_per_step steps each)")
    p.add_argument("--members", type=float, default=0.8, help="share of users trained on (the rest held out)")
    p.add_argument("--mia-examples", type=int, default=32, help="examples per user the membership check draws")
    p.add_argument("--out", default="bench/results/privacy.json", help="JSON results file")
    p.add_argument("--results-md", default=None, help="also replace the privacy section of this Markdown file")
    # The suite's flags (python -m bench privacy): --scale smoke runs tiny models for 2 epochs.
    p.add_argument("--scale", choices=_report.SCALES, default="small")
    p.add_argument("--plots", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-torch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    return p


def _members(num_users: int, share: float, seed: int) -> np.ndarray:
    """``(users,)`` bool: the users trained on, a fixed random share."""
    rng = np.random.default_rng([seed, 13])
    member = np.zeros(num_users, bool)
    member[rng.choice(num_users, int(round(share * num_users)), replace=False)] = True
    return member


def _member_split(split, log, member: np.ndarray):
    """The split with every held-out user's events out of training (its events and its item sets, which the
    training pairs come from) and its targets out of validation and evaluation."""
    from fgjax.data.split import ItemSets

    train_events = split.train_events & member[log.user]
    train_items = ItemSets.from_pairs(log.user[train_events], log.item[train_events], log.num_users)
    return dataclasses.replace(split, train_events=train_events, train_items=train_items,
                               val_target=np.where(member, split.val_target, -1),
                               test_target=np.where(member, split.test_target, -1))


def _user_losses(graphdef, params, users: np.ndarray, items: np.ndarray, num_users: int, draws: int,
                 seed: int) -> np.ndarray:
    """``(num_users,)`` each user's mean model loss over ``draws`` of its examples (with replacement, a fixed
    draw and fixed negatives for every model), NaN for users without examples."""
    import jax
    from flax import nnx

    order = np.argsort(users, kind="stable")  # examples grouped by user
    have, starts, counts = np.unique(users[order], return_index=True, return_counts=True)
    picks = np.random.default_rng([seed, 29]).integers(0, counts[:, None], size=(len(have), draws))
    idx = order[starts[:, None] + picks]  # (users with examples, draws)
    keys = jax.random.split(jax.random.key(seed), len(have))

    @jax.jit
    def losses(params, u, i, k):
        model = nnx.merge(graphdef, params)
        return jax.vmap(lambda uu, ii, kk: model.loss({"user": uu, "item": ii}, kk))(u, i, k)

    out = np.full(num_users, np.nan)
    out[have] = np.asarray(losses(params, users[idx], items[idx], keys))
    return out


def _auc(member_losses: np.ndarray, held_out_losses: np.ndarray) -> float:
    """P(a member's loss < a held-out user's loss), ties counting half: the loss-threshold attack's AUC."""
    from scipy import stats

    u = stats.mannwhitneyu(held_out_losses, member_losses, alternative="two-sided").statistic
    return float(u / (len(member_losses) * len(held_out_losses)))


def _run(name: str, config, log, split, member, owners_items, args) -> dict[str, Any]:
    from fgjax.evaluation.metrics import evaluate
    from fgjax.training import train

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        trained = train(config, log, split, Path(folder) / "checkpoint", progress=False)
    seconds = time.perf_counter() - started
    evaluation = evaluate(config, trained.graphdef, trained.params, split, log.num_items, None)
    model = evaluation["results"][config.model.name]
    users, items = owners_items
    loss = _user_losses(trained.graphdef, trained.params, users, items, log.num_users, args.mia_examples, args.seed)
    held_out = ~member & np.isfinite(loss)
    inside = member & np.isfinite(loss)
    row = {"run": name, "target_epsilon": None, "epsilon": None, "noise_multiplier": None,
           "ndcg@10": model["ndcg@10"], "hit_rate@10": model["hit_rate@10"],
           "popularity_ndcg@10": evaluation["results"]["popularity"]["ndcg@10"],
           "member_loss": float(np.mean(loss[inside])), "held_out_loss": float(np.mean(loss[held_out])),
           "steps": trained.steps, "epochs": trained.epochs, "train_seconds": round(seconds, 2)}
    row["membership_gap"] = row["held_out_loss"] - row["member_loss"]
    row["attack_auc"] = _auc(loss[inside], loss[held_out])
    if trained.privacy is not None:
        row.update(target_epsilon=trained.privacy["target_epsilon"], epsilon=trained.privacy["epsilon"],
                   noise_multiplier=trained.privacy["noise_multiplier"], privacy=trained.privacy)
    return row


def _markdown(payload: dict[str, Any]) -> str:
    c = payload["setup"]
    lines = [
        SECTION_START,
        "## The price of privacy (MovieLens-100K, EmbeddingMLP)",
        "",
        f"`{payload['command']}`: {payload['device']}, {payload['date'][:10]}, jax {payload['versions']['jax']}, "
        f"optax {payload['versions']['optax']}, dp-accounting {payload['versions'].get('dp-accounting')}; "
        f"{payload['seconds']:.0f} s wall in all.",
        "",
        f"{c['members']:,} of {c['users']:,} users (a fixed random {c['member_share']:.0%}) are trained on; the other "
        f"{c['users'] - c['members']:,} are held out entirely. Test NDCG@10 / HitRate@10 over the members under the "
        "field protocol (leave-last-out, full ranking, known items masked). Non-private: the `train` settings of "
        f"`{c['config_path']}` with this benchmark's overrides ({c['non_private']}). Private (user-level DP-SGD, "
        "`train.privacy`): "
        f"{c['private']}, {c['private_epochs']} epochs of users / users_per_step steps, Poisson sampling of users, "
        f"the {c['accountant'].upper()} accountant at delta {c['delta']:g}; the same settings at every epsilon "
        "(`inf`: the same sampled, clipped steps without noise). Membership check: each user's mean loss over "
        f"{c['mia_examples']} of its own training examples (fixed draw and negatives); gap = held-out minus members; "
        "attack AUC = chance a member's loss is below a held-out user's (0.5: the model tells nothing).",
        "",
        "| run | target epsilon | epsilon spent | noise multiplier | NDCG@10 | HitRate@10 | member loss | "
        "held-out loss | gap | attack AUC | steps | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def num(v, spec):
        if v is None:
            return "-"
        return "inf" if isinstance(v, float) and math.isinf(v) else format(v, spec)

    for r in payload["results"]:
        lines.append(f"| {r['run']} | {num(r['target_epsilon'], 'g')} | {num(r['epsilon'], '.3f')} | "
                     f"{num(r['noise_multiplier'], '.3f')} | {r['ndcg@10']:.4f} | {r['hit_rate@10']:.4f} | "
                     f"{r['member_loss']:.4f} | {r['held_out_loss']:.4f} | {r['membership_gap']:+.4f} | "
                     f"{r['attack_auc']:.3f} | {r['steps']:,} | {r['train_seconds']:.1f} |")
    lines += ["", f"Popularity on the same users: NDCG@10 {payload['results'][0]['popularity_ndcg@10']:.4f}.",
              SECTION_END]
    return "\n".join(lines) + "\n"


def _replace_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section.rstrip("\n") + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from fgjax.config import load_config
    from fgjax.data.reader import read_events
    from fgjax.data.split import leave_last_out

    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    overrides = list(DEFAULTS) + (list(SMOKE) if args.scale == "smoke" else []) + list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    base = load_config(args.config, overrides)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, name="embedding_mlp"))
    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    log = read_events(base.data)
    every_user = leave_last_out(log.user, log.item, log.timestamp, log.num_users, ties=base.data.tie_order)
    owners_items = every_user.train_pairs()  # every user's would-be training pairs: members' and held-out ones
    member = _members(log.num_users, args.members, args.seed)
    split = _member_split(every_user, log, member)
    payload: dict[str, Any] = {"benchmark": "privacy", **_report.environment(),
                               "command": "python -m bench.privacy " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:])}
    payload["versions"]["dp-accounting"] = _report.library_versions(("dp-accounting",))["dp-accounting"]
    print(f"privacy on {payload['device']}: {log.num_users:,} users ({int(member.sum()):,} members), "
          f"{log.num_items:,} items", flush=True)
    results = [_run("non-private", base, log, split, member, owners_items, args)]
    print(f"  non-private: NDCG@10 {results[-1]['ndcg@10']:.4f}, gap {results[-1]['membership_gap']:+.4f}",
          flush=True)
    epochs = 2 if args.scale == "smoke" else args.private_epochs
    for eps in epsilons:
        privacy = dataclasses.replace(base.train.privacy, enabled=True, target_epsilon=eps)
        # No early stopping in a private run: choosing the epoch on validation is a data-dependent choice the
        # accountant does not cover (train refuses it); the config's patience holds for the non-private run.
        config = dataclasses.replace(base, train=dataclasses.replace(base.train, privacy=privacy, epochs=epochs,
                                                                     patience=0))
        row = _run(f"DP eps={eps:g}", config, log, split, member, owners_items, args)
        results.append(row)
        print(f"  {row['run']}: epsilon spent {row['epsilon']:.3f}, noise {row['noise_multiplier']:.3f}, NDCG@10 "
              f"{row['ndcg@10']:.4f}, gap {row['membership_gap']:+.4f}, AUC {row['attack_auc']:.3f}", flush=True)
    t, p = base.train, base.train.privacy
    payload["setup"] = {
        "config_path": args.config, "users": log.num_users, "members": int(member.sum()),
        "member_share": args.members, "items": log.num_items, "mia_examples": args.mia_examples,
        "non_private": f"{t.epochs} epochs, batch {t.batch_size}, Adam lr {t.learning_rate:g}, "
                       f"embed {base.model.embed_dim}, hidden {base.model.hidden_dim}, {t.negatives} negatives",
        "private": f"users_per_step {p.users_per_step}, examples_per_user {p.examples_per_user}, clip_norm "
                   f"{p.clip_norm:g}, Adam lr {t.learning_rate:g}",
        "private_epochs": epochs, "accountant": p.accountant, "delta": p.delta, "overrides": overrides,
    }
    payload["results"] = results
    payload["seconds"] = time.perf_counter() - started
    payload["summary"] = {f"ndcg_{r['run'].replace(' ', '_')}": r["ndcg@10"] for r in results}
    rows = [{"run": r["run"], "eps": r["epsilon"], "ndcg": r["ndcg@10"], "gap": r["membership_gap"],
             "auc": r["attack_auc"]} for r in results]
    args_out = argparse.Namespace(out=args.out)
    _report.finish(payload, args_out, rows, [("run", "run", ""), ("eps", "epsilon", ".3g"), ("ndcg", "NDCG@10", ".4f"),
                                             ("gap", "gap", "+.4f"), ("auc", "attack AUC", ".3f")])
    if args.results_md:
        _replace_section(Path(args.results_md), _markdown(payload))
        print(f"replaced the privacy section of {args.results_md}")
    return payload


if __name__ == "__main__":
    main()
