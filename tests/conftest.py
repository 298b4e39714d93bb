import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small synthetic dataset shared by the whole session (read-only)."""
    from seminar_zoo.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", users=120, items=320, seq_len=60, seed=0)


@pytest.fixture(scope="session")
def tiny_dm(tiny_data):
    from seminar_zoo.data.datamodule import LifelongSequenceDataModule

    dm = LifelongSequenceDataModule(str(tiny_data), max_len=40, batch_size=64, eval_batch_size=500, train_window=20)
    dm.setup()
    return dm
