"""Parity of our long-sequence baselines against FuxiCTR's (PyPI ``fuxictr``, ``model_zoo.LongCTR``).

Both sides see exactly the same batches (our LifelongSequenceDataModule, ranking protocol),
the same embedding size, ``topk``, epochs, optimiser (Adam, same lr), tower widths and
dropout, and are scored by the same metrics (our RecMetrics, torchmetrics). FuxiCTR's
model is wrapped in a thin LightningModule that converts our batch into its LongCTR input
``(batch_dict, item_dict, mask)``: ``item_dict`` holds the item features of the L
behaviours followed by the target, flattened to [B * (L + 1)]; the item features are
``item_id``, the three attributes (categorical fields) and the text / image embeddings
("embedding" fields with a linear projection), each a field of ``embed_dim``.

Pairs: DIN-DIN, SIM(soft)-SIM, ETA-ETA, SDIM-SDIM, TWIN-TWIN. FuxiCTR's SIM/ETA/SDIM/TWIN
always include a short-term attention over the last ``short_seq_len - 1`` behaviours, so
ours run with ``short_term_len`` equal to that (our optional short-term branch), and
theirs with ``short_seq_len = short + 1``. FuxiCTR has no QIN and no hard-search SIM.

Known structural differences (not bugs on either side): FuxiCTR concatenates the item
fields (item vector = 6 x embed_dim) where our ItemEncoder sums modalities (embed_dim);
its TWIN here has no cross features (``Kc_cross_features = 0``: the LongCTR loader has
none), ours has three; its DIN attention MLP uses the activation below.

FuxiCTR is an optional peer (``pip install --no-deps fuxictr``; extra ``peers``). Its
package imports polars / ray / h5py / scikit-learn at import time for its data
pipeline and metrics, which this script never calls; if they are missing they are
replaced by inert stub modules (listed in the output) so that only FuxiCTR's model code
is used. If FuxiCTR is not installed or cannot be wired, its rows are skipped with the
reason printed and written to the JSON.

Usage:
  python experiments/bench/peer_parity.py [--users 600 --items 1000 --seq-len 200 --epochs 3 --topk 50]
Writes experiments/results/peer_parity.{json,md}.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from seminar_zoo.data.datamodule import LifelongSequenceDataModule  # noqa: E402
from seminar_zoo.data.synthetic import generate  # noqa: E402
from seminar_zoo.metrics import RecMetrics  # noqa: E402
from seminar_zoo.models import get_model_class  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STUBBED_IMPORTS = ("polars", "ray", "h5py", "sklearn")


# ----------------------------------------------------------------------------- FuxiCTR import
class _Stub(types.ModuleType):
    """An inert module: attribute access yields placeholder classes that fail if used."""

    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def _unavailable(*a, **k):
            raise RuntimeError(f"{self.__name__}.{name} is stubbed by peer_parity.py (not installed)")
        return type(name, (), {"__init__": _unavailable, "__call__": _unavailable})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def import_fuxictr():
    """(classes dict, FeatureMap, list of stubbed modules) or raise with the reason."""
    if importlib.util.find_spec("fuxictr") is None or importlib.util.find_spec("model_zoo") is None:
        raise ImportError("fuxictr is not installed (pip install --no-deps fuxictr)")
    missing = [n for n in STUBBED_IMPORTS if importlib.util.find_spec(n) is None]
    if missing:
        sys.meta_path.append(_StubFinder(missing))
    from fuxictr.features import FeatureMap

    classes = {}
    for name in ("DIN", "SIM", "ETA", "SDIM", "TWIN"):
        mod = importlib.import_module(f"model_zoo.LongCTR.{name}.{name}")
        classes[name] = getattr(mod, name)
    return classes, FeatureMap, missing


def load_peer(skip: bool):
    """(classes, FeatureMap, stubbed, version, error): error says exactly why FuxiCTR rows are skipped."""
    if skip:
        return None, None, [], None, "not run (--no-peer)"
    try:
        classes, FeatureMap, stubbed = import_fuxictr()
        import fuxictr

        return classes, FeatureMap, stubbed, getattr(fuxictr, "__version__", "?"), None
    except Exception as e:  # report exactly why; our side still runs
        err = f"{type(e).__name__}: {e}"
        print(f"[peer_parity] FuxiCTR rows skipped: {err}")
        return None, None, [], None, err


# ----------------------------------------------------------------------------- their side
def build_feature_map(FeatureMap, meta: dict, embed_dim: int, tmp: str):
    fm = FeatureMap("parity", tmp)
    feats = OrderedDict()
    feats["item_id"] = {"source": "item", "type": "categorical", "vocab_size": meta["n_items"] + 1,
                        "padding_idx": 0}
    for col, card in zip(meta["attr_cols"], meta["attr_cardinality"]):
        feats[col] = {"source": "item", "type": "categorical", "vocab_size": card + 1, "padding_idx": 0}
    for mod in ("text", "image"):
        if mod in meta["modalities"]:
            feats[f"{mod}_emb"] = {"source": "item", "type": "embedding", "pretrain_dim": meta["dims"][mod],
                                   "embedding_dim": embed_dim}
    fm.features = feats
    fm.labels = ["label"]
    fm.default_emb_dim = embed_dim
    fm.num_fields = len(feats)
    fm.set_column_index()
    return fm


class PeerModule(pl.LightningModule):
    """A FuxiCTR LongCTR model behind our batch format, loss, optimiser and metrics."""

    def __init__(self, net, tables: dict, attr_cols, lr: float, aux_weight: float = 0.0):
        super().__init__()
        self.net, self.lr, self.aux_weight = net, lr, aux_weight
        self.attr_cols = list(attr_cols)
        self.register_buffer("item_attr", tables["item_attr"].clone())
        self.register_buffer("item_text", tables["item_text"].clone())
        self.register_buffer("item_image", tables["item_image"].clone())
        self.val_metrics, self.test_metrics = RecMetrics(), RecMetrics()

    def convert(self, batch):
        seq = torch.cat([batch["hist_item_id"], batch["item_id"].unsqueeze(1)], 1).reshape(-1)
        item = {"item_id": seq}
        for j, col in enumerate(self.attr_cols):
            item[col] = self.item_attr[seq, j]
        item["text_emb"] = self.item_text[seq]
        item["image_emb"] = self.item_image[seq]
        return {}, item, batch["hist_mask"].float()

    def forward(self, batch):
        return self.net.forward(self.convert(batch))

    def training_step(self, batch, batch_idx):
        out = self(batch)
        y = batch["label"].view(-1, 1)
        loss = F.binary_cross_entropy(out["y_pred"], y)
        if "y_aux" in out and self.aux_weight:
            loss = loss + self.aux_weight * F.binary_cross_entropy(out["y_aux"], y)
        self.log("train/loss", loss, batch_size=y.shape[0])
        return loss

    def _eval(self, batch, metrics):
        p = self(batch)["y_pred"].view(-1)
        metrics.update(p, batch["label"], batch["request_id"], batch["user_id"])

    def validation_step(self, batch, batch_idx):
        self._eval(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval(batch, self.test_metrics)

    def on_validation_epoch_end(self):
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()})
        self.val_metrics.reset()

    def on_test_epoch_end(self):
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def build_theirs(name, classes, fm, args, tmp):
    common = dict(feature_map=fm, gpu=-1, dnn_hidden_units=list(args.tower_dims), dnn_activations="ReLU",
                  learning_rate=args.lr, embedding_dim=args.embed_dim, net_dropout=args.dropout,
                  optimizer="adam", loss="binary_crossentropy", verbose=0, model_root=tmp, metrics=["AUC"])
    short = args.short_term_len + 1
    if name == "DIN":
        return classes["DIN"](attention_hidden_units=list(args.din_attention_hidden),
                              attention_hidden_activations="Sigmoid", **common)
    att = dict(attention_dim=args.embed_dim, num_heads=args.num_heads)
    if name == "SIM":
        return classes["SIM"](gsu_type="soft", topk=args.topk, short_seq_len=short, alpha=1, beta=1, **att, **common)
    if name == "ETA":
        return classes["ETA"](topk=args.topk, hash_bits=args.hash_bits, short_seq_len=short, **att, **common)
    if name == "SDIM":
        return classes["SDIM"](num_hashes=args.n_hashes, hash_bits=args.sdim_bits, l2_norm=True,
                               short_seq_len=short, **att, **common)
    if name == "TWIN":
        return classes["TWIN"](topk=args.topk, short_seq_len=short, Kc_cross_features=0, **att, **common)
    raise KeyError(name)


# ----------------------------------------------------------------------------- our side
def build_ours(name, meta, args):
    # --ours-concat-tower: our tower reads [t, u] like FuxiCTR's DNN instead of [t, u, t * u]
    return _build_ours(name, meta, args, tower_input="concat" if args.ours_concat_tower else "auto")


def _build_ours(name, meta, args, tower_input="auto"):
    # use_queries=False: FuxiCTR's models see item features only, so ours must too
    common = dict(data_meta=meta, embed_dim=args.embed_dim, num_heads=args.num_heads,
                  tower_dims=list(args.tower_dims), dropout=args.dropout, lr=args.lr, use_queries=False,
                  tower_input=tower_input)
    st = dict(short_term_len=args.short_term_len)
    # FuxiCTR's SIM and ETA have no time-interval embedding in their ESU: ours is turned off to match
    te = dict(time_embedding=False)
    if name == "DIN":
        return get_model_class("DIN")(attention_hidden=list(args.din_attention_hidden), **common)
    if name == "SIM":
        return get_model_class("SIM")(gsu="soft", topk=args.topk, aux_weight=1.0, **te, **st, **common)
    if name == "ETA":
        return get_model_class("ETA")(topk=args.topk, hash_bits=args.hash_bits, **te, **st, **common)
    if name == "SDIM":
        return get_model_class("SDIM")(n_hashes=args.n_hashes, hash_bits=args.sdim_bits, norm="l2", **st, **common)
    if name == "TWIN":
        return get_model_class("TWIN")(topk=args.topk, **st, **common)
    raise KeyError(name)


# ----------------------------------------------------------------------------- runner
class StepTimer(pl.Callback):
    """Training rows per second of pure training steps (wall clock and process CPU time)."""

    def __init__(self):
        self.rows, self.wall, self.cpu = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._w, self._c = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        self.rows += int(batch["label"].shape[0])


def fit_and_test(module, dm, args, log_dir):
    pl.seed_everything(args.seed, workers=True)
    timer = StepTimer()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=log_dir, monitor="val/auc", mode="max", save_top_k=1)
    trainer = pl.Trainer(max_epochs=args.epochs, logger=False, callbacks=[timer, ckpt], enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=log_dir,
                         accelerator="cpu", devices=1)
    trainer.fit(module, dm)
    state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    res = trainer.test(module, dm, verbose=False)[0]
    return {"auc": float(res["test/auc"]), "ndcg@10": float(res["test/ndcg@10"]), "mrr": float(res["test/mrr"]),
            "samples_per_s_wall": timer.rows / timer.wall, "samples_per_s_cpu": timer.rows / timer.cpu,
            "best_epoch": int(Path(ckpt.best_model_path).stem.split("epoch=")[-1].split("-")[0])
            if "epoch=" in ckpt.best_model_path else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="a prepared dataset (default: generate a synthetic one)")
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--seq-len", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--tower-dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--din-attention-hidden", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--short-term-len", type=int, default=49)
    ap.add_argument("--hash-bits", type=int, default=32)
    ap.add_argument("--n-hashes", type=int, default=48)
    ap.add_argument("--sdim-bits", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both sides")
    ap.add_argument("--models", nargs="+", default=["DIN", "SIM", "ETA", "SDIM", "TWIN"])
    ap.add_argument("--no-peer", action="store_true", help="run only our side")
    ap.add_argument("--ours-concat-tower", action="store_true",
                    help="investigation: our tower sees [t, u] like FuxiCTR's, not [t, u, t*u]")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "peer_parity"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="peer_parity_"))
    data = args.data or str(generate(work / "data", users=args.users, items=args.items, seq_len=args.seq_len,
                                     seed=args.seed))
    dm = LifelongSequenceDataModule(data, max_len=args.max_len, batch_size=args.batch_size, seed=args.seed)
    dm.setup()
    meta, tables = dm.data_meta, dm.feature_tables()

    classes, FeatureMap, stubbed, peer_version, peer_error = load_peer(args.no_peer)
    if stubbed:
        print(f"[peer_parity] stubbed FuxiCTR import-time dependencies (unused here): {stubbed}")

    rows = []
    for name in args.models:
        row = {"model": name}
        model = build_ours(name, meta, args)
        row["ours"] = fit_and_test(model, dm, args, str(work / f"ours_{name}"))
        print(f"[peer_parity] ours   {name}: {row['ours']}", flush=True)
        if classes is not None:
            try:
                pl.seed_everything(args.seed)
                fm = build_feature_map(FeatureMap, meta, args.embed_dim, str(work))
                net = build_theirs(name, classes, fm, args, str(work))
                module = PeerModule(net, tables, meta["attr_cols"], args.lr, aux_weight=1.0 if name == "SIM" else 0.0)
                row["theirs"] = fit_and_test(module, dm, args, str(work / f"theirs_{name}"))
                print(f"[peer_parity] theirs {name}: {row['theirs']}", flush=True)
            except Exception as e:
                row["theirs_error"] = f"{type(e).__name__}: {e}"
                print(f"[peer_parity] theirs {name} failed: {row['theirs_error']}", flush=True)
        rows.append(row)

    result = {"config": vars(args) | {"data": data}, "fuxictr_version": peer_version, "fuxictr_error": peer_error,
              "stubbed_imports": stubbed, "torch": torch.__version__, "rows": rows,
              "dataset": dm.stats, "n_eval_negatives": dm.hparams.n_eval_negatives}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    md = render(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    return result


def render(result) -> str:
    c = result["config"]
    lines = [f"# Peer parity: seminar-zoo vs FuxiCTR {result['fuxictr_version'] or '(not available)'}", "",
             f"Synthetic data ({c['users']} users, {c['items']} items, seq_len {c['seq_len']}), max_len {c['max_len']}, "
             f"ranking protocol (1 positive vs {result['n_eval_negatives']} sampled negatives, test split), "
             f"embed_dim {c['embed_dim']}, topk {c['topk']}, {c['epochs']} epochs, batch {c['batch_size']}, "
             f"Adam lr {c['lr']}, seed {c['seed']}, {c['threads']} torch thread(s) on a shared 2-core CPU. "
             "AUC by our RecMetrics for both; samples/s = training rows / process CPU seconds of the training "
             "steps (wall-clock in the JSON).", ""]
    if c.get("ours_concat_tower"):
        lines += ["**Investigation run: our tower input is [t, u] like FuxiCTR's DNN (--ours-concat-tower), "
                  "not RecModel's [t, u, t * u].**", ""]
    if result["fuxictr_error"]:
        lines += [f"**FuxiCTR rows skipped:** {result['fuxictr_error']}", ""]
    lines += ["| model | our AUC | their AUC | diff | our NDCG@10 | their NDCG@10 | our samples/s | their samples/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        o, t = r["ours"], r.get("theirs")
        if t:
            lines.append(f"| {r['model']} | {o['auc']:.4f} | {t['auc']:.4f} | {o['auc'] - t['auc']:+.4f} | "
                         f"{o['ndcg@10']:.4f} | {t['ndcg@10']:.4f} | {o['samples_per_s_cpu']:.0f} | "
                         f"{t['samples_per_s_cpu']:.0f} |")
        else:
            why = r.get("theirs_error", "skipped")
            lines.append(f"| {r['model']} | {o['auc']:.4f} | n/a ({why}) | | {o['ndcg@10']:.4f} | | "
                         f"{o['samples_per_s_cpu']:.0f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
