"""Every bad input of the dataset contract gets a message naming file, column and row."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seminar_zoo.data.schema import DatasetError, emb_array, validate_dataset


@pytest.fixture
def ds(tiny_data, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(tiny_data, out)
    return out


def _edit(path, fn):
    table = pq.read_table(path)
    t = {c: table.column(c) for c in table.column_names}
    fn(t)
    pq.write_table(pa.table(t), path)


def _expect(ds, *parts):
    with pytest.raises(DatasetError) as e:
        validate_dataset(ds)
    msg = str(e.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def test_valid_dataset_loads(tiny_data):
    t = validate_dataset(tiny_data)
    assert t.item_attr.shape[0] == t.meta["n_items"] + 1
    assert t.item_text.shape == (t.meta["n_items"] + 1, t.meta["dims"]["text"])


def test_missing_file(ds):
    (ds / "events.parquet").unlink()
    _expect(ds, "events.parquet", "missing file")


def test_missing_column(ds):
    _edit(ds / "events.parquet", lambda t: t.pop("request_id"))
    _expect(ds, "events.parquet", "'request_id'", "missing column")


def test_wrong_dtype(ds):
    def f(t):
        t["ts"] = pa.array(np.asarray(t["ts"]).astype(np.float64))
    _edit(ds / "events.parquet", f)
    _expect(ds, "events.parquet", "'ts'", "wrong dtype double")


def test_nan_embedding(ds):
    def f(t):
        m = np.asarray(t["text_emb"].combine_chunks().flatten()).reshape(len(t["item_id"]), -1).copy()
        m[7, 3] = np.nan
        t["text_emb"] = emb_array(m)
    _edit(ds / "items.parquet", f)
    _expect(ds, "items.parquet", "'text_emb'", "row 7", "NaN or inf")


def test_inf_query_embedding(ds):
    def f(t):
        m = np.asarray(t["text_emb"].combine_chunks().flatten()).reshape(len(t["query_id"]), -1).copy()
        m[4, 0] = np.inf
        t["text_emb"] = emb_array(m)
    _edit(ds / "queries.parquet", f)
    _expect(ds, "queries.parquet", "'text_emb'", "row 4", "NaN or inf")


def test_item_id_out_of_range(ds):
    def f(t):
        a = np.asarray(t["item_id"]).copy()
        a[11] = 10_000
        t["item_id"] = pa.array(a)
    _edit(ds / "events.parquet", f)
    _expect(ds, "events.parquet", "'item_id'", "row 11", "out of range")


def test_zero_item_id_not_allowed(ds):
    def f(t):
        a = np.asarray(t["item_id"]).copy()
        a[5] = 0
        t["item_id"] = pa.array(a)
    _edit(ds / "events.parquet", f)
    _expect(ds, "events.parquet", "'item_id'", "row 5", "id 0 is not allowed here")


def test_unsorted_events(ds):
    def f(t):
        a = np.asarray(t["ts"]).copy()
        a[20] = a[19] - 5
        t["ts"] = pa.array(a)
    _edit(ds / "events.parquet", f)
    _expect(ds, "events.parquet", "'ts'", "row 20", "not sorted by user then ts")


def test_user_with_no_events(ds):
    meta = json.loads((ds / "meta.json").read_text())
    meta["n_users"] += 1
    (ds / "meta.json").write_text(json.dumps(meta))
    _expect(ds, "events.parquet", "'user_id'", f"user {meta['n_users']} has no events")


def test_user_with_empty_sequence(ds):
    def f(t):
        u, lab = np.asarray(t["user_id"]), np.asarray(t["label"]).copy()
        lab[u == 3] = 0
        t["label"] = pa.array(lab)
    _edit(ds / "events.parquet", f)
    _expect(ds, "events.parquet", "'user_id'", "user 3", "empty sequence")


def test_embedding_width_vs_meta(ds):
    meta = json.loads((ds / "meta.json").read_text())
    meta["dims"]["image"] = 65
    (ds / "meta.json").write_text(json.dumps(meta))
    _expect(ds, "items.parquet", "'image_emb'", "width 64", "meta.json (65)")


def test_labels_not_binary(ds):
    def f(t):
        a = np.asarray(t["label"]).copy()
        a[9] = 2
        t["label"] = pa.array(a)
    _edit(ds / "events.parquet", f)
    _expect(ds, "events.parquet", "'label'", "row 9", "not 0/1")


def test_attribute_out_of_range(ds):
    def f(t):
        a = np.asarray(t["attr_category"]).copy()
        a[2] = 999
        t["attr_category"] = pa.array(a)
    _edit(ds / "items.parquet", f)
    _expect(ds, "items.parquet", "'attr_category'", "row 2", "out of range")


def test_cli_exits_2_without_traceback(ds, tmp_path):
    _edit(ds / "events.parquet", lambda t: t.pop("label"))
    r = subprocess.run([sys.executable, "-m", "seminar_zoo.cli", "fit", "--model", "DIN", "--data.path", str(ds),
                        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "events.parquet, column 'label': missing column" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_meta_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "seminar_zoo.cli", "check-data", str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "meta.json: missing file" in r.stderr and "Traceback" not in r.stderr
