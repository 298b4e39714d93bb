"""RecModel pieces of the training recipe: the tower input and the step-seeded RNG."""
import pytest
import torch

from seminar_zoo.models.din import DIN
from seminar_zoo.models.sdim import SDIM

META = {"name": "toy", "n_items": 30, "n_queries": 0, "n_users": 5, "attr_cols": [], "attr_cardinality": [],
        "dims": {}, "modalities": ["id"]}


def _batch(B=4, L=6):
    g = torch.Generator().manual_seed(0)
    return {"item_id": torch.randint(1, 31, (B,), generator=g), "query_id": torch.zeros(B, dtype=torch.long),
            "label": torch.ones(B), "user_id": torch.arange(B), "request_id": torch.arange(B),
            "hist_item_id": torch.randint(1, 31, (B, L), generator=g), "hist_query_id": torch.zeros(B, L, dtype=torch.long),
            "hist_mask": torch.ones(B, L, dtype=torch.bool)}


@pytest.mark.parametrize("mode,width", [("auto", 3 * 8), ("product", 3 * 8), ("concat", 2 * 8)])
def test_tower_input_widths(mode, width):
    torch.manual_seed(0)
    m = DIN(data_meta=META, embed_dim=8, tower_dims=[4], tower_input=mode).eval()
    first = next(p for n, p in m.tower.named_parameters() if n.endswith("weight"))
    assert first.shape[1] == width
    assert m(_batch()).shape == (4,)


def test_tower_input_product_needs_equal_widths_and_rejects_unknown():
    with pytest.raises(ValueError, match="tower_input must be"):
        DIN(data_meta=META, embed_dim=8, tower_input="sum")
    # SDIM's interest is wider than embed_dim only with several hash groups; auto falls back to concat
    m = SDIM(data_meta=META, embed_dim=8, tower_input="auto")
    assert m.tower_product == (m.interest_dim == 8)


def test_training_step_leaves_the_callers_rng_alone():
    """Dropout draws from the model's own per-step stream (StepRNG, seeded from (seed, global step)): the
    caller's global RNG is neither reseeded nor advanced, and a step's draws depend only on (seed, step)."""
    m = DIN(data_meta=META, embed_dim=8, tower_dims=[4], dropout=0.5).train()
    b = _batch()
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    m.on_train_batch_start(b, 0)
    with m.step_rng.active():
        a = m(b)  # dropout draws from the step's stream
    assert torch.equal(torch.rand(3), want)
    m.on_train_batch_start(b, 0)
    with m.step_rng.active():
        assert torch.equal(m(b), a)
    with m.step_rng.active():  # the stream moves on within a step
        assert not torch.equal(m(b), a)
