"""Data-parallel training over MPI (`mpirun -np R eformer train`), end to end on the tiny preset: R ranks give
the losses of one process to float rounding, the ranks keep identical weights (the trainer checks it at
every checkpoint), a run resumes on another number of ranks, a rank killed mid-run ends the job within a bound,
and a batch that does not split over the ranks is a clear error. Skipped where mpirun or an MPI build is
missing (scripts/install-deps.sh installs Open MPI)."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import eformer as ef

CLI = os.path.normpath(os.path.join(os.path.dirname(ef.__file__), "..", "..", "eformer"))
MPIRUN = shutil.which("mpirun")


def mpi_build():
    if MPIRUN is None or not os.path.exists(CLI):
        return False
    return "Open MPI" in subprocess.run([CLI, "info", "--mechanisms"], capture_output=True, text=True).stdout


pytestmark = pytest.mark.skipif(not mpi_build(), reason="needs mpirun and an eformer built with MPI")

# Losses differ from one process only by the order the ranks' partial gradient sums are added in (float32);
# over AdamW steps that stays far below this (measured: at most 1.2e-7 relative over 30 steps, R = 2 and 4).
RTOL = 1e-5


def mpirun(ranks, *args, timeout=300, check=True):
    cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), CLI, *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return {j["step"]: float.fromhex(j["loss_hex"]) for j in lines if j["event"] == "train"}, lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    words = "and the of to in that he shall unto for his a they be is him lord not them it with all".split()
    path.write_text("\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9)) for i in range(3000)))
    return path


# One thread per rank, no dropout (each rank draws its own masks: with dropout the runs differ by design).
TRAIN = ["train", "--preset", "tiny", "--set", "model.dropout=0", "--threads", 1, "--log-every", 1,
         "--eval-every", 0, "--quiet"]


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("r1")
    mpirun(1, *TRAIN, "--data", corpus, "--steps", 6, "--out", out)
    return losses(out)[0]


@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_give_the_losses_of_one_process(corpus, tmp_path, one_process, ranks):
    mpirun(ranks, *TRAIN, "--data", corpus, "--steps", 6, "--checkpoint-every", 3, "--out", tmp_path)
    mine, lines = losses(tmp_path)
    assert sorted(mine) == sorted(one_process)
    for step, loss in one_process.items():
        assert abs(mine[step] - loss) <= RTOL * abs(loss), (step, mine[step], loss)
    assert lines[0]["world_size"] == ranks
    assert os.path.exists(tmp_path / "checkpoint.safetensors")  # written by rank 0 alone, after the check


def test_without_mpirun_the_same_build_is_one_process(corpus, tmp_path, one_process):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    subprocess.run([CLI, *map(str, [*TRAIN, "--data", corpus, "--steps", 6, "--out", tmp_path])], check=True,
                   capture_output=True, env=env, timeout=300)
    assert losses(tmp_path)[0] == one_process  # mpirun -np 1 is exactly the single-process path


def test_a_run_resumes_on_another_number_of_ranks(corpus, tmp_path):
    """3 steps on 2 ranks, resumed to 6 on 4, against the same 3 + 3 in one process (--steps at resume
    lengthens the schedule, the same way in both)."""
    runs = {}
    for name, first, then in (("one", 1, 1), ("many", 2, 4)):
        out = tmp_path / name
        mpirun(first, *TRAIN, "--data", corpus, "--steps", 3, "--out", out)
        mpirun(then, "train", "--resume", out / "checkpoint.safetensors", "--steps", 6, "--threads", 1, "--quiet")
        runs[name] = losses(out)
    (base, _), (mine, lines) = runs["one"], runs["many"]
    assert sorted(mine) == sorted(base) == list(range(1, 7))
    for step, loss in base.items():
        assert abs(mine[step] - loss) <= RTOL * abs(loss), (step, mine[step], loss)
    assert [j["world_size"] for j in lines if j["event"] in ("start", "resume")] == [2, 4]


def test_a_batch_that_does_not_split_over_the_ranks_is_an_error(corpus, tmp_path):
    p = mpirun(3, *TRAIN, "--data", corpus, "--steps", 2, "--out", tmp_path, check=False)  # batch 8
    assert p.returncode != 0
    assert "does not split evenly over 3 ranks" in p.stderr


def test_a_killed_rank_ends_the_job_within_a_bound(corpus, tmp_path):
    cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", "-np", "2", CLI,
           *map(str, [*TRAIN, "--data", corpus, "--steps", 100000, "--out", tmp_path])]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log = tmp_path / "log.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and log.read_text().count('"train"') >= 3):
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(ranks[-1]), signal.SIGKILL)
        t0 = time.time()
        _, err = job.communicate(timeout=60)
        assert job.returncode != 0
        assert time.time() - t0 < 60
        assert "signal 9" in err or "killed" in err.lower(), err
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
