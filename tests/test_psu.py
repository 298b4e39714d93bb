"""PSU (SEMINAR pretraining): losses, logging, determinism, DDP negatives, bf16."""
import os
import socket

import pytest
import pytorch_lightning as pl
import torch

from seminar_zoo.models.seminar import PSU
from seminar_zoo.models.seminar.losses import gather_with_grad, info_nce

LOSS_KEYS = ("align_text_image", "align_image_attr", "align_text_attr", "next_pair", "relevance")


def _psu(dm, **kw):
    torch.manual_seed(0)
    kw.setdefault("dropout", 0.0)
    m = PSU(data_meta=dm.data_meta, embed_dim=16, num_heads=2, **kw)
    m.load_tables(dm.feature_tables())
    return m


def _trainer(tmp_path, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def _positive_batch(dm, n):
    """n rows of label-1 training samples (a fixed, deterministic batch)."""
    rows = [i * dm.rows_per_sample("train") for i in range(n)]  # candidate 0 of sample i = the positive
    b = dm.batch("train", rows)
    assert bool((b["label"] == 1).all())
    return b


def test_training_step_logs_each_loss(tiny_dm, tmp_path):
    psu = _psu(tiny_dm)
    tr = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    tr.fit(psu, tiny_dm)
    logged = tr.logged_metrics
    for k in LOSS_KEYS + ("loss",):
        assert f"train/{k}" in logged, f"train/{k} not logged: {sorted(logged)}"
        assert torch.isfinite(logged[f"train/{k}"])
    # the total is the weighted sum of the parts (3 alignment pairs averaged)
    parts = {k: float(logged[f"train/{k}"]) for k in LOSS_KEYS}
    align = (parts["align_text_image"] + parts["align_image_attr"] + parts["align_text_attr"]) / 3
    assert float(logged["train/loss"]) == pytest.approx(align + parts["next_pair"] + parts["relevance"], rel=1e-4)


def test_loss_weights_disable_parts(tiny_dm):
    b = _positive_batch(tiny_dm, 16)
    total, parts = _psu(tiny_dm, w_align=0.0, w_relevance=0.0).losses(b)
    assert set(parts) == {"next_pair"}
    assert float(total) == pytest.approx(float(parts["next_pair"]))
    # lambda_q = 0: no query in the pair -> no relevance task
    _, parts = _psu(tiny_dm, lambda_q=0.0).losses(b)
    assert "relevance" not in parts and "next_pair" in parts


def test_positions_are_valid_and_deterministic(tiny_dm):
    psu = _psu(tiny_dm, positions=4)
    b = _positive_batch(tiny_dm, 32)
    items, queries, mask, keep = psu.sequences(b)
    assert items.shape[1] == b["hist_item_id"].shape[1] + 1
    pos, valid, first = psu.draw_positions(mask, b["request_id"][keep], b["user_id"][keep])
    assert pos.shape == (32, 4)
    assert bool(mask.gather(1, pos)[valid].all())  # never padding
    assert bool((pos[:, 0] == items.shape[1] - 1).all())  # the target comes first
    assert bool((pos[:, 1:][valid[:, 1:]] < items.shape[1] - 1).all())
    pos2, valid2, _ = psu.draw_positions(mask, b["request_id"][keep], b["user_id"][keep])
    assert torch.equal(pos, pos2) and torch.equal(valid, valid2)


def test_info_nce_matches_reference_and_masks_duplicates():
    torch.manual_seed(0)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    ids = torch.arange(6)
    an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    logits = an @ bn.T / 0.1
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, ids) + torch.nn.functional.cross_entropy(logits.T, ids))
    assert float(info_nce(a, b, ids, 0.1)) == pytest.approx(float(ref), rel=1e-5)
    # a duplicate item is not a negative: duplicating row 0 as row 5 must not change row 0's loss term
    ids2 = torch.tensor([0, 1, 2, 3, 4, 0])
    b2 = b.clone()
    b2[5] = b[0] * 3.0  # identical direction
    l_dup = info_nce(a, b2, ids2, 0.1)
    assert torch.isfinite(l_dup)
    x, off = gather_with_grad(a)
    assert x is a and off == 0  # single process: identity


def test_bf16_mixed_step_on_cpu(tiny_dm, tmp_path):
    psu = _psu(tiny_dm)
    tr = _trainer(tmp_path, max_steps=1, limit_val_batches=0, precision="bf16-mixed")
    tr.fit(psu, tiny_dm)
    assert torch.isfinite(tr.logged_metrics["train/loss"])


# --------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, state, meta, tables, batch, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = PSU(data_meta=meta, embed_dim=16, num_heads=2, dropout=0.0)
        m.load_state_dict(state)
        m.load_tables(tables)
        n = batch["label"].shape[0] // world
        part = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
        total, parts = m.losses(part)
        total.backward()
        torch.save({"total": total.detach(), **{k: v.detach() for k, v in parts.items()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_process_loss_equals_one_process_loss(tiny_dm, tmp_path):
    """2 processes x batch B (negatives all-gathered) == 1 process x batch 2B, loss by loss."""
    import torch.multiprocessing as mp

    psu = _psu(tiny_dm)
    batch = _positive_batch(tiny_dm, 48)
    total, parts = psu.losses(batch)
    # fork: the children inherit the imported modules (spawn re-imports torch + Lightning: slow)
    mp.start_processes(_ddp_worker, nprocs=2, join=True, start_method="fork",
                       args=(2, _free_port(), psu.state_dict(), tiny_dm.data_meta, tiny_dm.feature_tables(), batch,
                             str(tmp_path)))
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    for k in LOSS_KEYS:
        two = (float(r[0][k]) + float(r[1][k])) / 2
        assert two == pytest.approx(float(parts[k]), rel=1e-4, abs=1e-5), k
    assert (float(r[0]["total"]) + float(r[1]["total"])) / 2 == pytest.approx(float(total), rel=1e-4)


# --------------------------------------------------------------------------- progress (issue 16 §1)
def test_epoch_log_one_line_per_epoch_without_progress_bar(tiny_dm, tmp_path, caplog):
    import logging
    import re

    from seminar_zoo.pipeline import EpochLog

    class Steps(pl.Callback):
        def __init__(self):
            self.loss = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.loss.append((float(trainer.callback_metrics["train/loss"]), int(batch["label"].shape[0])))

    steps = Steps()
    tr = _trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[EpochLog("psu"), steps])
    with caplog.at_level(logging.INFO):
        tr.fit(_psu(tiny_dm), tiny_dm)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[psu]")]
    assert len(lines) == 2, lines
    pat = r"\[psu\] epoch (\d)/2: loss ([\d.]+), (.*) \| ([\d.]+) s, (\d+) samples/s"
    for e, line in enumerate(lines):
        g = re.fullmatch(pat, line)
        assert g, line
        assert int(g.group(1)) == e + 1 and int(g.group(5)) > 0
        assert all(f"{k} " in g.group(3) for k in LOSS_KEYS)
        ep = steps.loss[3 * e: 3 * e + 3]  # row-weighted mean of the epoch's step losses
        assert float(g.group(2)) == pytest.approx(sum(v * n for v, n in ep) / sum(n for _, n in ep), abs=1e-4)


def test_seminar_says_which_settings_each_stage_uses(tiny_dm, tmp_path, caplog):
    import logging

    from seminar_zoo.models.seminar import SEMINAR
    from seminar_zoo.pipeline import pretrain_psu

    class Ctx:
        run_dir, datamodule = tmp_path, tiny_dm
        trainer = _trainer(tmp_path, max_epochs=3)

        def make_trainer(self, subdir, **over):
            over.pop("enable_checkpointing")
            return _trainer(tmp_path / subdir, **over)

    m = SEMINAR(data_meta=tiny_dm.data_meta, embed_dim=16, num_heads=2, topk=8,
                pretrain={"epochs": 1, "limit_train_batches": 2, "w_next": 0.5})
    with caplog.at_level(logging.INFO):
        pretrain_psu(m, Ctx())
    msgs = [r.getMessage() for r in caplog.records]
    start = [x for x in msgs if x.startswith("[seminar] stage 1")]
    assert len(start) == 1
    assert "1 epochs (pretrain.epochs; trainer.max_epochs does not apply)" in start[0]
    assert "limit_train_batches 2" in start[0] and "1.0/0.5/1.0" in start[0]
    assert "stage 2 (finetune): 3 epochs (trainer.max_epochs)" in start[0]
    assert len([x for x in msgs if x.startswith("[psu] epoch 1/1: loss")]) == 1
    assert (tmp_path / "psu" / "psu.ckpt").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pretrain_psu(SEMINAR(data_meta=tiny_dm.data_meta, embed_dim=16, num_heads=2, pretrain={"epochs": 0}), Ctx())
    assert any("stage 1 (psu pretraining): skipped (pretrain.epochs 0)" in r.getMessage() for r in caplog.records)
