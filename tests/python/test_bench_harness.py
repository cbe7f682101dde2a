"""The side-by-side benchmark harness (bench/harness/): it covers every registered mechanism, each peer adapter
that imports here computes the same output as our mechanism on the same inputs (the check the harness runs
before timing, here on fresh random inputs at a small N), a different output is refused, and the report
rewrites only its own section of the docs. No timing here."""
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import eformer as ef

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from harness import inputs, report, run, worker  # noqa: E402
from harness.peers import PEERS, peers_for  # noqa: E402

ENTRIES = [e for e in ef.mechanisms() if e["functional"]]
PAIRS = [(e["name"], p.name) for e in ENTRIES for p in peers_for(e) if p.available() is None]


def test_the_plan_covers_every_registered_mechanism_in_each_direction_it_declares():
    a = SimpleNamespace(sizes=[256, 512], directions=["bidirectional", "causal"], peers=None)
    jobs = run.plan(a, ENTRIES, available={p.name for p in PEERS})
    for e in ENTRIES:
        for direction in ("bidirectional", "causal"):
            ns = [N for N, causal, je, _ in jobs if je["name"] == e["name"] and causal == (direction == "causal")]
            assert ns == ([256, 512] if e["capabilities"][direction] else []), (e["name"], direction)
    assert all(c[0] == "eformer" for *_, c in jobs), "ours runs first: the peers check against its output"


@pytest.mark.parametrize("name,peer", PAIRS)
def test_peer_computes_what_we_compute(tmp_path, name, peer):
    entry = next(e for e in ENTRIES if e["name"] == name)
    p = next(x for x in PEERS if x.name == peer)
    seed = int(np.random.SeedSequence().entropy % (2**31))
    print(f"seed {seed}")
    for causal in (False, True):
        if not p.supports(entry, causal):
            continue
        N = getattr(p, "test_n", 160 if p.partial_chunks else 256)  # 160: partial blocks and windows
        inp = inputs.make(entry, N, causal, seed=seed)
        extras = worker.eformer_extras(inp["extras"])
        ours = ef.attention(*(ef.tensor(inp[n]) for n in "qkv"), kind=name, causal=causal, **extras).numpy()
        path = str(tmp_path / "ours.npy")
        np.save(path, ours)
        fwd, _, to_numpy = worker.torch_calls(p, entry, causal, inp, threads=1)
        rows = p.rows(entry, causal, inp)
        result = worker.check(to_numpy(fwd()), path, p.tolerance, rows)
        assert result["ok"], (name, peer, causal, result)
        np.save(path, ours * 1.01)  # a 1% different computation is refused
        assert not worker.check(to_numpy(fwd()), path, p.tolerance, rows)["ok"] or p.tolerance >= 1e-2


@pytest.mark.parametrize("N", [160, 4096, 65536])
def test_lsh_inputs_follow_our_bucket_layout(N):
    """The harness sizes LSH's rotations as our kernel does (factorized above 256 buckets), so that the peers
    hash with the very rotations we use; our functional form refuses rotations of any other width."""
    entry = next(e for e in ENTRIES if e["name"] == "lsh")
    extras = inputs.lsh_rotations(entry, np.random.default_rng(N), N, 1, 8)
    q, v = (ef.tensor(np.random.default_rng(i).standard_normal((1, 1, 64, 8)).astype(np.float32)) for i in (0, 1))
    ef.attention(q, q, v, kind="lsh", **worker.eformer_extras(extras))
    wider = dict(extras, rotations=np.concatenate([extras["rotations"]] * 2, axis=3))
    with pytest.raises(ValueError):
        ef.attention(q, q, v, kind="lsh", **worker.eformer_extras(wider))


def test_a_peer_with_nothing_to_check_against_is_refused(tmp_path):
    r = worker.check(np.zeros((1, 1, 4, 4), np.float32), str(tmp_path / "missing.npy"), 1e-4)
    assert not r["ok"] and "no output of ours" in r["why"]


def fake_result(mech, contender, N, causal, seconds, rss):
    return {"mechanism": mech, "contender": contender, "N": N, "causal": causal,
            "fwd": {"times": [seconds / 3], "median": seconds / 3, "rss_peak": rss},
            "fwdbwd": {"times": [seconds], "median": seconds, "rss_peak": rss, "alloc_peak": rss // 2}}


def test_the_report_shows_targets_and_rewrites_only_its_section(tmp_path):
    data = {"command": "scripts/bench.sh --quick", "date": "today", "minutes": 1.0,
            "shape": dict(inputs.SHAPE), "dtype": "float32", "modes": ["fwd", "fwdbwd"], "reps": 2, "warmup": 1,
            "rounds": 1,
            "call_limit_s": 8, "mem_limit_bytes": 1e9, "budget_minutes": 9,
            "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "load_average": [3.0, 3.0, 3.0],
                        "load_average_after": [3.0, 3.0, 3.0], "eformer_sgemm_gflops": 100.0, "eformer": "0",
                        "python": "3", "torch": {"version": "2", "config": "BLAS_INFO=mkl,", "sgemm_gflops": 90}},
            "peers": {"torch-sdpa": {"package": "torch", "version": "2", "check": "exact", "available": True,
                                     "why": None, "serves": ["flash"]}},
            "mechanisms": [{"name": "flash"}, {"name": "longformer"}],
            "results": [fake_result("flash", "eformer", 4096, False, 1.0, 100 << 20),
                        fake_result("flash", "torch-sdpa", 4096, False, 1.2, 900 << 20),
                        fake_result("longformer", "eformer", 4096, True, 0.1, 50 << 20),
                        fake_result("longformer", "torch-sdpa-masked", 4096, True, 0.5, 40 << 20)],
            "skipped": [{"mechanism": "flash", "contender": "torch-sdpa", "N": 16384, "causal": False,
                         "why": "predicted 99 s per call > --call-limit 8"}]}
    targets = report.targets(data)
    assert "| flash | bidir | 4096 | torch-sdpa | 1000 | 1200 | 1.20x | 1.5x | **no** | 100 | 900 | ok |" in targets
    assert "| longformer | causal | 4096 | torch-sdpa-masked | 100 | 500 | 5.00x | 2x | yes | 50 | 40 | **more** |" \
        in targets
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\nbefore\n{report.BEGIN}\nold\n{report.END}\nafter\n")
    report.update_docs(data, str(md), str(tmp_path / "q.json"), str(tmp_path))
    text = md.read_text()
    assert text.startswith("# Benchmarks\nbefore\n") and text.endswith("\nafter\n") and "old" not in text
    assert "**a loaded machine**" in text and "BLAS_INFO=mkl" in text and "flash / torch-sdpa at 16384 bidir" in text
    json.dumps(data)


def test_the_predictor_extrapolates_by_the_measured_slope_and_merges_rounds():
    p = run.Predictor()
    key = ("flash", "eformer", False)
    assert p.predict(key, 1024) == (None, None)
    p.add(key, 1024, 1.0, 100)
    assert p.predict(key, 2048) == (4.0, 400)  # one point: N^2
    p.add(key, 2048, 2.0, 200)
    p.add(key, 2048, 3.0, 150)  # a second round at the same N
    t, m = p.predict(key, 4096)
    assert abs(t - 9.0) < 1e-9  # 1 s -> 3 s for 2x N: slope log2(3), so 9 s at 4096
    assert abs(m - 400) < 1e-9  # 100 -> 200: slope 1
    p.add(("linear", "torch-cumsum", True), 1024, 1.0, 100, first_slope=1.0)
    assert p.predict(("linear", "torch-cumsum", True), 4096) == (4.0, 400)
