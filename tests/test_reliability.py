"""Bad datasets and bad arguments (issue 15 §1, §5; issue 16 §6): every case exits with code 2, a
message naming the file, key/column and row or the argument, no traceback, and leaves nothing in
the run folder. The CLI runs in-process (main() + SystemExit); the checks all happen before
Lightning starts, so each case costs milliseconds."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seminar_zoo.cli import main

DIN = "baselines/din.yaml"


def _meta(fn):
    def edit(ds):
        m = json.loads((ds / "meta.json").read_text())
        fn(m)
        (ds / "meta.json").write_text(json.dumps(m))
    return edit


def _table(file, fn):
    def edit(ds):
        t = pq.read_table(ds / file)
        cols = {c: t.column(c) for c in t.column_names}
        fn(cols)
        pq.write_table(pa.table(cols), ds / file)
    return edit


def _set(col, row, value, dtype=np.int64):
    def fn(cols):
        a = np.asarray(cols[col]).astype(dtype)
        a[row] = value
        cols[col] = pa.array(a)
    return fn


def _emb(col, row, value):
    def fn(cols):
        arr = cols[col].combine_chunks()
        w = arr.type.list_size
        m = arr.flatten().to_numpy().reshape(len(arr), w).copy()
        m[row, 0] = value
        cols[col] = pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), w)
    return fn


def _swap(col, i, j):
    def fn(cols):
        a = np.asarray(cols[col]).copy()
        a[[i, j]] = a[[j, i]]
        cols[col] = pa.array(a)
    return fn


def _nulls(col, row):
    def fn(cols):
        a = np.asarray(cols[col]).tolist()
        a[row] = None
        cols[col] = pa.array(a, pa.int64())
    return fn


def _write(file, data: bytes):
    return lambda ds: (ds / file).write_bytes(data)


def _rm(file):
    return lambda ds: (ds / file).unlink()


def _drop_last_item_attr(ds):
    _meta(lambda m: m["attr_cols"].remove("attr_price"))(ds)


def _all_negative_user(ds):
    def fn(cols):
        u, lab = np.asarray(cols["user_id"]), np.asarray(cols["label"]).copy()
        lab[u == 7] = 0
        cols["label"] = pa.array(lab)
    _table("events.parquet", fn)(ds)


def _empty_events(ds):
    t = pq.read_table(ds / "events.parquet")
    pq.write_table(t.slice(0, 0), ds / "events.parquet")


def _ragged(ds):
    t = pq.read_table(ds / "items.parquet")
    rows = t.column("text_emb").to_pylist()
    rows[4] = rows[4][:-1]
    cols = {c: t.column(c) for c in t.column_names}
    cols["text_emb"] = pa.array(rows, pa.list_(pa.float32()))
    pq.write_table(pa.table(cols), ds / "items.parquet")


# (case id, how to break the dataset, parts the message must contain)
DATASETS = [
    ("no-meta", _rm("meta.json"), ["meta.json", "missing file"]),
    ("meta-not-json", _write("meta.json", b"{oops"), ["meta.json", "not valid JSON"]),
    ("meta-no-schema-version", _meta(lambda m: m.pop("schema_version")), ["meta.json", "'schema_version'", "missing key"]),
    ("meta-schema-version-2", _meta(lambda m: m.update(schema_version=2)), ["'schema_version'", "is 2"]),
    ("meta-unknown-modality", _meta(lambda m: m["modalities"].append("audio")), ["'modalities'", "audio"]),
    ("meta-no-n_items", _meta(lambda m: m.pop("n_items")), ["meta.json", "'n_items'", "missing key"]),
    ("meta-no-n_users", _meta(lambda m: m.pop("n_users")), ["meta.json", "'n_users'", "missing key"]),
    ("meta-n_items-too-big", _meta(lambda m: m.update(n_items=5000)),
     ["meta.json", "'n_items'", "is 5000 but items.parquet holds 320 items"]),
    ("meta-n_items-too-small", _meta(lambda m: m.update(n_items=300)), ["'n_items'", "is 300 but items.parquet"]),
    ("meta-n_items-string", _meta(lambda m: m.update(n_items="320")), ["'n_items'", "non-negative integer"]),
    ("meta-n_events-wrong", _meta(lambda m: m.update(n_events=12)), ["'n_events'", "is 12 but events.parquet holds"]),
    ("meta-n_queries-wrong", _meta(lambda m: m.update(n_queries=3)), ["'n_queries'", "is 3 but queries.parquet holds"]),
    ("meta-n_queries-missing", _meta(lambda m: m.pop("n_queries")), ["'n_queries'", "is 0 but queries.parquet holds"]),
    ("meta-no-dims", _meta(lambda m: m.pop("dims")), ["meta.json", "'dims.text'", "missing key"]),
    ("meta-no-dims-image", _meta(lambda m: m["dims"].pop("image")), ["'dims.image'", "missing key"]),
    ("meta-dims-text-zero", _meta(lambda m: m["dims"].update(text=0)), ["'dims.text'", "positive integer"]),
    ("meta-dims-text-wrong", _meta(lambda m: m["dims"].update(text=33)),
     ["items.parquet", "'text_emb'", "width 32 disagrees with meta.json (33)"]),
    ("meta-dims-query-wrong", _meta(lambda m: m["dims"].update(query=8)), ["queries.parquet", "'text_emb'", "(8)"]),
    ("meta-no-cardinality", _meta(lambda m: m["attr_cardinality"].pop("attr_brand")),
     ["'attr_cardinality.attr_brand'", "missing key"]),
    ("meta-cardinality-small", _meta(lambda m: m["attr_cardinality"].update(attr_category=2)),
     ["items.parquet", "'attr_category'", "row", "out of range 0..2"]),
    ("meta-attr-cols-mismatch", _drop_last_item_attr, ["items.parquet", "disagree with meta.json attr_cols"]),
    ("meta-n_users-small", _meta(lambda m: m.update(n_users=100)),
     ["events.parquet", "'user_id'", "row", "out of range 1..100 (meta.json n_users)"]),
    ("meta-n_users-big", _meta(lambda m: m.update(n_users=130)), ["'user_id'", "user 121 has no events"]),
    ("items-missing", _rm("items.parquet"), ["items.parquet", "missing file"]),
    ("items-corrupt", _write("items.parquet", b"PAR1 not parquet"), ["items.parquet", "cannot read parquet"]),
    ("items-no-item_id", _table("items.parquet", lambda c: c.pop("item_id")), ["items.parquet", "'item_id'", "missing column"]),
    ("items-item_id-float", _table("items.parquet", _set("item_id", 0, 1.0, np.float64)), ["'item_id'", "wrong dtype double"]),
    ("items-item_id-gap", _table("items.parquet", _set("item_id", 3, 99)), ["items.parquet", "'item_id'", "row 3", "found 99"]),
    ("items-item_id-null", _table("items.parquet", _nulls("item_id", 5)), ["items.parquet", "'item_id'", "row 5", "null"]),
    ("items-attr-negative", _table("items.parquet", _set("attr_brand", 6, -1)), ["'attr_brand'", "row 6", "negative"]),
    ("items-text-nan", _table("items.parquet", _emb("text_emb", 9, np.nan)), ["items.parquet", "'text_emb'", "row 9", "NaN"]),
    ("items-image-inf", _table("items.parquet", _emb("image_emb", 2, np.inf)), ["'image_emb'", "row 2", "inf"]),
    ("items-no-image", _table("items.parquet", lambda c: c.pop("image_emb")), ["items.parquet", "'image_emb'", "missing column"]),
    ("items-text-ragged", _ragged, ["items.parquet", "'text_emb'", "row 4", "embedding has 31 values"]),
    ("queries-missing", _rm("queries.parquet"), ["queries.parquet", "missing file"]),
    ("queries-text-inf", _table("queries.parquet", _emb("text_emb", 1, -np.inf)), ["queries.parquet", "row 1", "inf"]),
    ("queries-id-gap", _table("queries.parquet", _set("query_id", 0, 7)), ["queries.parquet", "'query_id'", "row 0"]),
    ("events-missing", _rm("events.parquet"), ["events.parquet", "missing file"]),
    ("events-no-label", _table("events.parquet", lambda c: c.pop("label")), ["events.parquet", "'label'", "missing column"]),
    ("events-item-out-of-range", _table("events.parquet", _set("item_id", 11, 999)),
     ["events.parquet", "'item_id'", "row 11", "id 999 is out of range 1..320"]),
    ("events-item-zero", _table("events.parquet", _set("item_id", 5, 0)),
     ["events.parquet", "'item_id'", "row 5", "id 0 is not allowed here"]),
    ("events-query-out-of-range", _table("events.parquet", _set("query_id", 8, 10 ** 6)), ["'query_id'", "row 8", "out of range 0.."]),
    ("events-user-zero", _table("events.parquet", _set("user_id", 0, 0)), ["'user_id'", "row 0", "id 0 is not allowed"]),
    ("events-label-2", _table("events.parquet", _set("label", 13, 2)), ["'label'", "row 13", "label 2 is not 0/1"]),
    ("events-ts-unsorted", _table("events.parquet", _set("ts", 20, -5)), ["events.parquet", "'ts'", "row 20", "not sorted"]),
    ("events-user-unsorted", _table("events.parquet", _swap("user_id", 0, 200)), ["'user_id'", "not sorted"]),
    ("events-user-no-positive", _all_negative_user, ["'user_id'", "user 7 has no positive"]),
    ("events-empty", _empty_events, ["events.parquet", "no events"]),
    ("events-ts-null", _table("events.parquet", _nulls("ts", 17)), ["'ts'", "row 17", "null value"]),
    ("events-ts-float", _table("events.parquet", _set("ts", 0, 0.5, np.float64)), ["'ts'", "wrong dtype double"]),
]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


@pytest.mark.parametrize("case,breaks,parts", DATASETS, ids=[c[0] for c in DATASETS])
def test_bad_dataset(case, breaks, parts, tiny_data, tmp_path, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_data, ds)
    breaks(ds)
    for argv in (["check-data", str(ds)],
                 ["experiment", "--config", DIN, "--data.path", str(ds), "--run_dir", str(tmp_path / "run")]):
        code, msg = _run(argv, capsys)
        assert code == 2, (argv[0], msg[-1500:])
        assert "Traceback" not in msg
        for p in parts:
            assert p in msg, f"{argv[0]}: {p!r} not in {msg!r}"
    assert not (tmp_path / "run").exists()


def _exp(tmp_path, *extra):
    return ["experiment", "--config", DIN, "--data.path", "{data}", "--run_dir", str(tmp_path / "run"), *extra]


# (case id, argv with {data} for the dataset, parts the message must contain)
ARGUMENTS = [
    ("data-path-missing", lambda t: _exp(t, "--data.path", str(t / "nope")), ["--data.path", "folder does not exist"]),
    ("batch-size-0", lambda t: _exp(t, "--data.batch_size", "0"), ["--data.batch_size must be >= 1, got 0"]),
    ("eval-batch-size-neg", lambda t: _exp(t, "--data.eval_batch_size=-1"), ["--data.eval_batch_size must be >= 1"]),
    ("max-len-0", lambda t: _exp(t, "--data.max_len", "0"), ["--data.max_len must be >= 1"]),
    ("negatives-too-many", lambda t: _exp(t, "--data.n_eval_negatives", "5000"),
     ["--data.n_eval_negatives 5000", "only 320 items"]),
    ("unknown-model", lambda t: _exp(t, "--model", "Transformer"), ["--model Transformer", "registered models", "DIN", "SEMINAR"]),
    ("config-missing", lambda t: _exp(t, "--config", str(t / "none.yaml")), ["--config", "none.yaml", "does not exist"]),
    ("config-not-yaml", lambda t: (t / "bad.yaml").write_text("model: [unclosed") and _exp(t, "--config", str(t / "bad.yaml")),
     ["--config", "bad.yaml", "not valid YAML"]),
    ("no-run-dir", lambda t: ["experiment", "--config", DIN, "--data.path", "{data}"], ["--run_dir"]),
    ("resume-and-overwrite", lambda t: _exp(t, "--resume", "--overwrite"), ["--resume and --overwrite"]),
    ("experiment-ckpt-file", lambda t: _exp(t, "--ckpt_path", "x.ckpt"), ["--ckpt_path", "--resume"]),
    ("fit-data-path-missing", lambda t: ["fit", "--model", "DIN", "--data.path", str(t / "nope")], ["folder does not exist"]),
    ("fit-batch-size-0", lambda t: ["fit", "--model", "DIN", "--data.path", "{data}", "--data.batch_size", "0"],
     ["--data.batch_size must be >= 1"]),
    ("test-unknown-model", lambda t: ["test", "--model", "Nope", "--data.path", "{data}"], ["registered models"]),
    ("check-data-no-args", lambda t: ["check-data"], ["check-data", "DIR"]),
    ("check-data-missing", lambda t: ["check-data", str(t / "nope")], ["nope", "dataset folder does not exist"]),
    ("unknown-verb", lambda t: ["trian"], ["unknown command 'trian'"]),
    ("prepare-no-name", lambda t: ["prepare"], ["prepare", "name a dataset"]),
    ("prepare-unknown", lambda t: ["prepare", "netflix"], ["unknown command 'prepare netflix'"]),
    ("prepare-users-0", lambda t: ["prepare", "synthetic", "--out", str(t / "run"), "--users", "0"], ["--users must be >= 1"]),
    ("prepare-abbrev", lambda t: ["prepare", "synthetic", "--out", str(t / "run"), "--user", "5"], ["--user"]),
]

# These reach LightningCLI (argument parsing and model instantiation, no training): slower.
LIGHTNING = [
    ("abbreviated-flag", lambda t: _exp(t, "--trainer.max_epoch", "1"), ["trainer.max_epoch"]),
    ("sim-hard-bad-attr", lambda t: _exp(t, "--config", "baselines/sim_hard.yaml", "--data.path", "{data}",
                                         "--model.init_args.category_attr", "attr_aisle"), ["category_attr 'attr_aisle' is not an attribute column",
                                                         "use gsu: soft"]),
    ("protocol-unsupported", lambda t: _exp(t, "--data.protocol", "ctr", "--data.path", "{ctr_only}"),
     ["meta.json", "does not support protocol 'ctr'"]),
]


@pytest.fixture
def ctr_only(tiny_data, tmp_path):
    ds = tmp_path / "ranking_only"
    shutil.copytree(tiny_data, ds)
    _meta(lambda m: m.update(protocols=["ranking"]))(ds)
    return ds


@pytest.mark.parametrize("case,argv,parts", ARGUMENTS + LIGHTNING, ids=[c[0] for c in ARGUMENTS + LIGHTNING])
def test_bad_argument(case, argv, parts, tiny_data, ctr_only, tmp_path, capsys):
    args = [a.format(data=tiny_data, ctr_only=ctr_only) for a in argv(tmp_path)]
    code, msg = _run(args, capsys)
    assert code == 2, msg[-2000:]
    assert "Traceback" not in msg
    for p in parts:
        assert p in msg, f"{p!r} not in {msg[-2000:]!r}"
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_help_exits_0_for_every_verb(capsys):
    for verb in ("experiment", "fit", "test", "check-data", "prepare", "sweep", "compare"):
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
            raise SystemExit(0)  # verbs that print help and return
        assert e.value.code in (0, None), verb
        assert "usage" in capsys.readouterr().out.lower(), verb


def test_topk_above_max_len_warns(tiny_data, capsys):
    from seminar_zoo.runguard import preflight

    preflight(["--config", "experiments/seminar.yaml", "--data.path", str(tiny_data), "--data.max_len", "20",
               "--model.init_args.topk", "50"])
    assert "topk 50 > max_len 20" in capsys.readouterr().err


def test_lightning_verbs_refuse_a_folder_in_use(tiny_data, tmp_path):
    """`seminar-zoo test/fit --trainer.default_root_dir D` while another run holds D: exit 2, named."""
    import fcntl
    import os
    import subprocess
    import sys

    d = tmp_path / "busy"
    d.mkdir()
    with open(d / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("4242")
        fh.flush()
        r = subprocess.run([sys.executable, "-m", "seminar_zoo.cli", "fit", "--model", "DIN", "--data.path",
                            str(tiny_data), "--trainer.default_root_dir", str(d), "--trainer.max_epochs", "1"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "disabled"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--trainer.default_root_dir" in r.stderr and "in use by another run (pid 4242)" in r.stderr
    assert "Traceback" not in r.stderr
