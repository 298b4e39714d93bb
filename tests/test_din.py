"""DIN and the shared parts it uses: activation unit, target attention, encoders, RecModel."""
import pytorch_lightning as pl
import torch

from seminar_zoo.models.din import DIN
from seminar_zoo.modules.attention import DINActivationUnit, TargetAttention


def test_activation_unit_ignores_padding():
    torch.manual_seed(0)
    unit = DINActivationUnit(8, (16, 8))
    t, k = torch.randn(3, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    out = unit(t, k, mask)
    k2 = k.clone()
    k2[~mask] = 100.0  # garbage in padded slots must not matter
    assert torch.allclose(out, unit(t, k2, mask), atol=1e-6)
    # the output is the weighted sum over valid slots only
    w = unit.mlp(torch.cat([t[:, None].expand_as(k), k, t[:, None] - k, t[:, None] * k], -1)).squeeze(-1) * mask
    assert torch.allclose(out, (w[..., None] * k).sum(1), atol=1e-6)


def test_target_attention_masks_and_empty_rows():
    torch.manual_seed(0)
    att = TargetAttention(8, num_heads=2)
    t, k = torch.randn(2, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out, w = att(t, k, mask, return_weights=True)
    assert torch.isfinite(out).all()
    assert torch.allclose(w[0, :, :2].sum(-1), torch.ones(2)) and (w[0, :, 2:] == 0).all()
    assert (out[1] == 0).all()  # no history -> zero interest, not NaN
    k2 = k.clone()
    k2[0, 2:] = 50
    assert torch.allclose(att(t, k2, mask)[0], out[0], atol=1e-6)


def test_target_attention_golden_values():
    torch.manual_seed(1)
    att = TargetAttention(4, num_heads=1)
    with torch.no_grad():
        for lin in (att.q, att.k, att.v):
            lin.weight.copy_(torch.eye(4))
        att.out.weight.copy_(torch.eye(4))
        att.out.bias.zero_()
    t = torch.tensor([[1.0, 0, 0, 0]])
    k = torch.tensor([[[2.0, 0, 0, 0], [0, 2.0, 0, 0]]])
    out = att(t, k, torch.ones(1, 2, dtype=torch.bool))
    w = torch.softmax(torch.tensor([2.0, 0.0]) / 2.0, 0)  # logits / sqrt(4)
    assert torch.allclose(out, (w[:, None] * k[0]).sum(0, keepdim=True), atol=1e-6)


def test_din_shapes_and_gradients(tiny_dm):
    model = DIN(data_meta=tiny_dm.data_meta, embed_dim=16)
    model.load_tables(tiny_dm.feature_tables())
    batch = next(iter(tiny_dm.train_dataloader()))
    logits = model(batch)
    assert logits.shape == batch["label"].shape
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
    loss.backward()
    assert model.item_encoder.id_emb.weight.grad.abs().sum() > 0
    assert model.item_encoder.text_proj.weight.grad.abs().sum() > 0
    assert model.attention.mlp[0].weight.grad.abs().sum() > 0


def test_din_max_len_cuts_history(tiny_dm):
    model = DIN(data_meta=tiny_dm.data_meta, embed_dim=16, max_len=5)
    model.load_tables(tiny_dm.feature_tables())
    model.eval()
    b = tiny_dm.batch("test", list(range(8)))
    b2 = {k: v.clone() for k, v in b.items()}
    b2["hist_item_id"][:, :-5] = 1  # older behaviours are invisible to a max_len=5 model
    assert torch.allclose(model(b), model(b2))


def test_din_learns_planted_signal(tiny_data):
    """A tiny DIN beats chance on the synthetic ctr task (clicks depend on the user's topics)."""
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    pl.seed_everything(0)
    # max_len 64 covers the whole history, so the deep interests (first 30%) are visible
    dm = LifelongSequenceDataModule(str(tiny_data), protocol="ctr", max_len=64, batch_size=128, eval_batch_size=2000)
    model = DIN(data_meta=dm.data_meta, embed_dim=16, lr=1e-2)
    tr = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    untrained = tr.test(model, dm, verbose=False)[0]["test/auc"]
    tr.fit(model, dm)
    res = tr.test(model, dm, verbose=False)[0]
    assert res["test/auc"] > 0.58 and res["test/auc"] > untrained + 0.05, (untrained, res)
