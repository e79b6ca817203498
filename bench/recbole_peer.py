"""A measured peer: RecBole's SASRec (PyTorch) under fgjax's exact protocol.

Two steps, two environments (RecBole needs torch; fgjax needs jax):

    python -m bench.recbole_peer export --config configs/ml100k.yaml --out runs/peer        # fgjax env
    PEER_PYTHON bench/recbole_peer.py run --dir runs/peer [--threads 2]                     # torch + recbole==1.2.1

``export`` writes fgjax's leave-last-out split as a RecBole atomic dataset in
which each user's training items come in fgjax's order followed by the
validation and the test item (timestamps = positions), so RecBole's own
leave-one-out (``LS: valid_and_test``, ``order: TO``) holds out exactly
fgjax's targets and trains on exactly fgjax's training sequences. It also
writes the validation and test inputs and the items to mask.

``run`` trains RecBole's SASRec (its defaults: 2 layers, 2 heads, 64 dims,
CE loss, L = 50; early stopping on its validation NDCG@10), then ranks the
full catalog for fgjax's validation and test inputs with fgjax's masks, and
writes the top-20 lists to ``DIR/topk.npz``. ``bench/quality.py --peer DIR``
scores them with fgjax's metric kernels, beside fgjax's models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATASET = "fgsplit"


def export(config_path: str, out: str, overrides: list[str]) -> None:
    from fgjax.config import load_config
    from fgjax.data.sequences import build_sequences
    from fgjax.pipeline import prepare

    config = load_config(config_path, overrides)
    out_dir = Path(out)
    prepared = prepare(config, out_dir)
    log, split = prepared.log, prepared.split
    train = build_sequences(log.user, log.item, log.timestamp, log.num_users, split.train_events, ties=split.ties)
    history = build_sequences(log.user, log.item, log.timestamp, log.num_users, split.history_events, ties=split.ties)
    users = np.flatnonzero(split.test_target >= 0)
    (out_dir / DATASET).mkdir(parents=True, exist_ok=True)
    with open(out_dir / DATASET / f"{DATASET}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in users:
            items = [*train.items[train.indptr[u] : train.indptr[u + 1]], split.val_target[u], split.test_target[u]]
            f.writelines(f"{u}\t{i}\t{pos}\n" for pos, i in enumerate(items))
    # Every catalog item is in RecBole's vocabulary, also those only in test inputs.
    with open(out_dir / DATASET / f"{DATASET}.item", "w") as f:
        f.write("item_id:token\n")
        f.writelines(f"{i}\n" for i in range(log.num_items))
    max_len = config.sequence.max_len

    def inputs(seqs, seen):
        rows = np.zeros((len(users), max_len), np.int64)  # right-padded, RecBole's layout
        lengths = np.zeros(len(users), np.int64)
        for r, u in enumerate(users):
            items = seqs.items[seqs.indptr[u] : seqs.indptr[u + 1]][-max_len:]
            rows[r, : len(items)] = items
            lengths[r] = len(items)
        return rows, lengths, seen.indptr[users], seen.indptr[users + 1], seen.items

    np.savez(
        out_dir / "inputs.npz",
        users=users,
        num_items=log.num_items,
        val_targets=split.val_target[users],
        test_targets=split.test_target[users],
        **dict(zip(("val_items", "val_lengths", "val_seen_start", "val_seen_stop", "val_seen"),
                   inputs(train, split.train_items))),
        **dict(zip(("test_items", "test_lengths", "test_seen_start", "test_seen_stop", "test_seen"),
                   inputs(history, split.history_items))),
    )
    print(f"exported {len(users)} users to {out_dir}")


def run(directory: str, threads: int, epochs: int) -> None:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(threads)
    _load = torch.load
    torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})  # RecBole 1.2.1 predates torch 2.6
    directory = Path(directory).absolute()
    config = Config(model="SASRec", dataset=DATASET, config_dict={
        "data_path": str(directory), "checkpoint_dir": str(directory / "recbole_saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "train_neg_sample_args": None, "MAX_ITEM_LIST_LENGTH": 50, "epochs": epochs, "stopping_step": 10, "valid_metric": "NDCG@10",
        "metrics": ["NDCG", "Hit"], "topk": [10], "device": "cpu", "use_gpu": False, "seed": 2020,
        "show_progress": False, "log_wandb": False, "save_dataset": False, "save_dataloaders": False,
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to("cpu")
    trainer = Trainer(config, model)
    t0 = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    seconds = time.perf_counter() - t0
    trainer.model.load_state_dict(torch.load(trainer.saved_model_file)["state_dict"])
    model = trainer.model.eval()
    arrays = np.load(directory / "inputs.npz")
    num_items = int(arrays["num_items"])
    tokens = dataset.field2id_token["item_id"]  # internal id -> token ("[PAD]" at 0)
    internal = np.full(num_items, -1, np.int64)
    for idx, token in enumerate(tokens[1:], start=1):
        internal[int(token)] = idx
    out = {}
    for stage in ("val", "test"):
        ours = arrays[f"{stage}_items"]
        padding = np.arange(ours.shape[1])[None, :] >= arrays[f"{stage}_lengths"][:, None]
        seq = np.where(padding, 0, internal[ours])
        with torch.no_grad():
            hidden = model.forward(torch.as_tensor(seq), torch.as_tensor(arrays[f"{stage}_lengths"]))
            scores = (hidden @ model.item_embedding.weight.T).numpy()  # (users, internal items)
        ours_scores = np.where(internal >= 0, scores[:, np.maximum(internal, 0)], -np.inf)
        start, stop, seen = arrays[f"{stage}_seen_start"], arrays[f"{stage}_seen_stop"], arrays[f"{stage}_seen"]
        for r in range(len(ours_scores)):
            ours_scores[r, seen[start[r] : stop[r]]] = -np.inf
        out[f"{stage}_top"] = np.argsort(-ours_scores, axis=1, kind="stable")[:, :20].astype(np.int32)
    np.savez(directory / "topk.npz", **out)
    info = {"peer": f"RecBole {__import__('recbole').__version__} SASRec (torch {torch.__version__}, CPU, {threads} threads)",
            "train_seconds": round(seconds, 1), "epochs": len(trainer.train_loss_dict),
            "epochs_without_gain_at_stop": int(trainer.cur_step),
            "recbole_best_valid": {k: float(v) for k, v in best_valid.items()}}
    (directory / "peer.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--config", default="configs/ml100k.yaml")
    ex.add_argument("--out", required=True)
    ex.add_argument("--set", action="append", default=[], dest="overrides")
    rn = sub.add_parser("run")
    rn.add_argument("--dir", required=True)
    rn.add_argument("--threads", type=int, default=2)
    rn.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.config, args.out, args.overrides)
    else:
        run(args.dir, args.threads, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
