"""`seminar-zoo bench retrieval` on tiny lengths: runs end to end and writes the documented JSON schema."""
import json
import math
import re
import sys

import pytest

from seminar_zoo.bench import retrieval as R

TINY = ["--lengths", "200,400", "--topk", "5", "--dim", "16", "--mmpq", "2x16,4x16", "--rerank", "2x16",
        "--fused-pq", "4x16", "--simhash-bits", "64", "--lsh-bits", "64", "--backends", "eager",
        "--reps", "1", "--batch-reps", "1", "--requests", "2", "--histories", "2", "--train-users", "4",
        "--train-len", "64", "--flush-mb", "0", "--quiet"]
NAME = re.compile(r"^(exact|exact-fused|mmpq-\d+x\d+(\+rr\d+)?|pq-fused-\d+x\d+|simhash-\d+|faiss-pq-\d+x\d+"
                  r"|hnsw-2stage|faiss-lsh-\d+)$")


def _check_rows(rows, lengths_topk):
    assert rows
    for r in rows:
        for k in R.ROW_KEYS:
            assert k in r, (k, r)
        assert NAME.match(r["method"]), r["method"]
        assert (r["length"], r["topk"]) in lengths_topk
        assert 0.0 <= r["recall"] <= 1.0
        for k in ("latency_ms_single", "latency_ms_batch256", "encode_ms"):
            assert isinstance(r[k], float) and r[k] >= 0 and math.isfinite(r[k])
        assert r["bytes_per_behaviour"] > 0
        assert 1 <= r["batch_size"] <= 256
    for lt in lengths_topk:
        ex = next(r for r in rows if r["method"] == "exact" and (r["length"], r["topk"]) == lt)
        assert ex["recall"] == 1.0 and ex["bytes_per_behaviour"] == 4 * 4 * 16
        mm = next(r for r in rows if r["method"] == "mmpq-4x16" and (r["length"], r["topk"]) == lt)
        assert mm["bytes_per_behaviour"] == 4 * 4  # M * n_sub uint8 codes
        assert mm["recall"] > 0.1


def test_bench_tiny_writes_json_md_png(tmp_path):
    out = tmp_path / "r.json"
    rows = R.main(TINY + ["--no-reference", "--no-faiss", "--json", str(out), "--md", str(tmp_path / "r.md"),
                          "--png", str(tmp_path / "r.png")])
    saved = json.loads(out.read_text())
    assert saved == rows
    _check_rows(saved, {(200, 5), (400, 5)})
    names = {r["method"] for r in saved}
    assert {"exact", "exact-fused", "mmpq-2x16", "mmpq-4x16", "mmpq-2x16+rr4", "pq-fused-4x16", "simhash-64"} <= names
    assert not any(n.startswith(("faiss", "hnsw")) for n in names)
    md = (tmp_path / "r.md").read_text()
    assert "SYNTHETIC" in md and "seminar-zoo bench retrieval" in md and "| mmpq-4x16 |" in md
    assert "faiss rows skipped" in md
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_bench_reference_setting_and_faiss_rows(tmp_path):
    pytest.importorskip("faiss")
    out = tmp_path / "r.json"
    args = [a for a in TINY]
    args[args.index("--lengths") + 1] = "300"
    args[args.index("--mmpq") + 1] = "2x256,4x16"
    R.main(args + ["--json", str(out)])
    rows = json.loads(out.read_text())
    _check_rows(rows, {(300, 5), (2048, 32)})
    names = {r["method"] for r in rows if r["length"] == 300}
    assert {"faiss-pq-8x8", "hnsw-2stage", "faiss-lsh-64"} <= names
    assert {r["data"] for r in rows if r["length"] == 2048} == {"isotropic"}


def test_bench_skips_faiss_with_message_when_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    args = [a for a in TINY if a != "--quiet"]
    args[args.index("--lengths") + 1] = "200"
    rows = R.main(args + ["--no-reference"])
    assert not any(r["method"].startswith(("faiss", "hnsw")) for r in rows)
    assert "faiss is not installed" in capsys.readouterr().err


def test_bench_bad_arguments():
    with pytest.raises(SystemExit, match="--topk"):
        R.main(["--lengths", "10", "--topk", "50"])
    with pytest.raises(SystemExit, match="codebook size"):
        R.main(["--lengths", "100", "--topk", "5", "--mmpq", "8by256"])
    with pytest.raises(SystemExit, match="lengths"):
        R.main(["--lengths", "a,b"])
