"""A smoke run of benchmarks/overhead.py: a real model's YOTO step compiles once while
µ and ρ (through ``optax.inject_hyperparams``) change, and YOTO adds a few kernels
and a few flops per auxiliary loss. Timings are not asserted."""

from _load import load_script


def test_overhead_smoke_run_compiles_each_step_once():
    overhead = load_script("benchmarks/overhead.py")
    report = overhead.run(("k4",), batch_size=2, rounds=3, sample_s=0.001)
    assert report["compiles"] == {"k4": {"fixed": 1, "yoto": 1}}
    assert set(report) >= {"ratio", "compiles", "step_s"}
    assert report["step_s"]["k4"]["yoto"] > 0 and report["ratio"]["k4"] > 0
    extra = report["yoto_extra_cost"]["k4"]
    assert 0 < extra["flops"] < 1000  # O(K) scalars against a step of ~10^7 flops
    assert 0 < extra["kernels"] < 40
