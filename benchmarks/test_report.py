"""The report (`myq bench`) end to end on one small shape, so that it cannot rot."""
import json
import time

import pytest

from myq_kernels import bench


def test_report_smoke(tmp_path):
    report = bench.main(["--smoke", "--out", str(tmp_path)])
    rows = report["rows"]
    assert {(r["op"], r["dtype"], r["m"]) for r in rows} == {
        (op, dtype, m) for op in bench.OURS for dtype in ("fp32", "bf16") for m in (1, 32)}
    for r in rows:
        assert r["us"] > 0 and r["rate"] > 0
        assert r["vs"]["F.linear fp32"] > 0, r  # every row has its baseline, timed beside it
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == rows
    assert "int8_linear" in (tmp_path / "bench.txt").read_text()


def test_cases_are_timed_in_turns():
    calls = []
    cases = {name: (lambda n=name: calls.append(n), [()]) for name in ("ours", "baseline")}
    seconds = bench._time_together(cases, min_seconds=0.0, min_calls=bench.ROUNDS)
    assert set(seconds) == {"ours", "baseline"}
    # after the warm-ups, each turn is an untimed call (hot: one copy) and one timed call
    assert calls[2:] == [name for _ in range(bench.ROUNDS) for name in ("ours", "ours", "baseline", "baseline")]


def test_a_baseline_torch_cannot_run_is_left_out():
    def unsupported():
        raise NotImplementedError("no kernel for this dtype")
    cases = {"ours": (lambda: None, [()]), "baseline": (unsupported, [()])}
    assert set(bench._time_together(cases, 0.0, optional=["baseline"])) == {"ours"}
    with pytest.raises(NotImplementedError):  # an error in our own op is not swallowed
        bench._time_together({"ours": (unsupported, [()])}, 0.0)


def test_a_slow_case_stops_at_its_budget():
    calls = []
    cases = {"slow": (lambda: (calls.append(1), time.sleep(0.02)), [()])}
    bench._time_together(cases, min_seconds=10.0, max_seconds=0.01)
    assert len(calls) == 2  # the warm-up and one timed call
