"""`seminar-zoo bench retrieval --quick` (experiments/bench/retrieval.py): runs end to end, writes JSON/MD/PNG."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "experiments" / "bench"))
    try:
        import retrieval
    finally:
        sys.path.pop(0)
    return retrieval


def test_quick_bench_rows_and_files(tmp_path):
    pytest.importorskip("faiss")
    R = _bench()
    out = tmp_path / "r"
    rows = R.main(["--quick", "--quiet", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"] == rows and "load_start" in saved["meta"]
    names = {r["method"] for r in rows}
    assert {"exact", "exact-fused", "pq-torch-4x16", "pq-faiss4-4x16", "pq-faiss4-4x16-cached", "pq-faiss4-4x16+rr4", "pq-faiss4-4x16-cached+rr4",
            "pq-faiss8-2x256", "faiss-fastscan-native", "faiss-flat", "hnsw-2stage", "simhash-64"} <= names
    assert any(n.startswith("pq-alloc8-") and n.endswith("-cached+rr4") for n in names)  # bit allocation rows
    by = {(r["method"], r["length"]): r for r in rows}
    for length in (300, 600):
        assert by[("exact", length)]["recall"] == 1.0 and by[("exact-fused", length)]["recall"] == 1.0
        assert by[("faiss-flat", length)]["recall"] == 1.0
        # faiss4 scores agree with the torch reference up to uint8 table rounding: same recall within a hit or two
        assert abs(by[("pq-faiss4-4x16", length)]["recall"] - by[("pq-torch-4x16", length)]["recall"]) <= 0.2
        # exact re-rank of the PQ top 4K can only find more of the exact top-K
        assert by[("pq-faiss4-4x16+rr4", length)]["recall"] >= by[("pq-faiss4-4x16", length)]["recall"]
        assert by[("pq-faiss8-2x256", length)]["bytes_per_behaviour"] == 8  # M * n_sub one-byte codes
        for r in rows:
            assert 0.0 <= r["recall"] <= 1.0 and r["ms_per_request"] > 0
    md = out.with_suffix(".md").read_text()
    assert "SYNTHETIC" in md and "| pq-faiss4-4x16 | 300 |" in md
    assert out.with_suffix(".png").stat().st_size > 10_000
    # hand-written conclusions in the markdown survive a rerun
    out.with_suffix(".md").write_text(md + "\n## Conclusions\nkeep me\n")
    R.main(["--quick", "--quiet", "--no-faiss", "--out", str(out)])
    md2 = out.with_suffix(".md").read_text()
    assert "keep me" in md2 and "faiss rows skipped" in md2


def test_cli_bench_retrieval_bad_arguments_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "seminar_zoo.cli", "bench", "retrieval", "--lengths", "a,b", "--out", str(tmp_path / "x")]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "--lengths" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(cmd[:3] + ["nosuch"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "nosuch" in p.stderr and "Traceback" not in p.stderr
