"""Signals at random moments never corrupt anything (docs/RELIABILITY.md): SIGINT or SIGTERM during
`eformer train` ends it with a loadable checkpoint (exit 130 or 143), and Python code under a storm of
signals (a handler running every millisecond) survives matmul + backward loops. oneDNN's JIT GEMM
points rsp at the heap, so a signal delivered inside it writes its frame into the heap: the engine
blocks asynchronous signals around every GEMM (core/signals.h).

EFORMER_SIGNAL_TRIES sets the number of tries (default 3 here; scripts/signal-stress.sh runs 200)."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import eformer as ef

CLI = os.path.normpath(os.path.join(os.path.dirname(ef.__file__), "..", "..", "eformer"))
TRIES = int(os.environ.get("EFORMER_SIGNAL_TRIES", "3"))


def test_a_signal_at_any_moment_of_training_leaves_a_loadable_checkpoint(word_corpus, tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    seed = rng.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    outcomes = {}
    for t in range(TRIES):
        out = tmp_path / f"run{t % 4}"
        ckpt = out / "checkpoint.safetensors"
        for f in ("checkpoint.safetensors", "log.jsonl"):
            (out / f).unlink(missing_ok=True)
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        delay = rng.uniform(0.05, 2.5)  # start-up, steps, estimates and checkpoint writes
        p = subprocess.Popen([CLI, "train", "--preset", "tiny", "--data", str(word_corpus), "--steps", "100000",
                              "--checkpoint-every", "3", "--eval-every", "7", "--set", "train.eval_batches=2",
                              "--threads", str(rng.choice([1, 2])), "--quiet", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(sig)
        if rng.random() < 0.15:  # sometimes a second one at once: the process ends immediately
            p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=120)
        where = f"try {t} (seed {seed}): signal {sig.name} after {delay:.3f} s -> {p.returncode}\n{stderr}"
        assert p.returncode == 128 + sig, where
        assert "corrupted" not in stderr and "free()" not in stderr and "error" not in stderr, where
        if ckpt.exists():
            model, info = ef.train.load_checkpoint(ckpt)  # a whole checkpoint: its checksums verify
            assert info["step"] >= 0, where
            outcomes["checkpoint"] = outcomes.get("checkpoint", 0) + 1
        else:  # only when a second signal ended the process before the first checkpoint
            assert "interrupted" not in stdout, where
            outcomes["killed before a checkpoint"] = outcomes.get("killed before a checkpoint", 0) + 1
    print(outcomes)


STORM = textwrap.dedent("""
    import signal, sys, time
    import eformer as ef
    caught = [0]
    def handler(signum, frame):
        caught[0] += 1
    signal.signal(signal.SIGALRM, handler)
    signal.signal(signal.SIGUSR1, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)  # a signal every millisecond
    a = ef.randn(384, 384, requires_grad=True)
    b = ef.randn(384, 384, requires_grad=True)
    end = time.time() + float(sys.argv[1])
    n = 0
    while time.time() < end:
        (a @ b).sum().backward()
        a.grad = None
        n += 1
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print(n, caught[0])
""")


def test_python_matmul_and_backward_under_a_signal_storm():
    storms = []
    for t in range(max(1, TRIES // 10)):
        p = subprocess.run([sys.executable, "-c", STORM, "2"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "2"})
        assert p.returncode == 0, (t, p.returncode, p.stderr)
        loops, caught = map(int, p.stdout.split())
        assert loops >= 3 and caught >= 20, (t, loops, caught)  # signals did arrive during the loops
        storms.append((loops, caught))
    print("storms (loops, signals handled):", storms)
