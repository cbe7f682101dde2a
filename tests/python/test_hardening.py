"""Hostile input, as a user would give it (issue 12; docs/RELIABILITY.md): absurd sizes from flags,
configs, checkpoints and Python shapes are one-line errors naming the key and the limit, never a
crash; NaN rows propagate through exact attention; --resume never overwrites another run's files;
checkpoints carry per-tensor checksums; files are size-checked before they are read."""
import json
import math
import os
import pathlib
import struct
import subprocess

import numpy as np
import pytest
import torch

import eformer as ef

CLI = os.path.normpath(os.path.join(os.path.dirname(ef.__file__), "..", "..", "eformer"))
HUGE = 2 ** 62


def run(*args, check=True, timeout=120):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"eformer {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr}")
    return p


def assert_error(args, *fragments):
    p = run(*args, check=False)
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    lines = p.stderr.strip("\n").split("\n")
    assert lines[-1].startswith("eformer: error: "), (args, p.stderr)
    for f in fragments:
        assert f in lines[-1], (args, lines[-1], f)
    return lines[-1]


@pytest.fixture(scope="module")
def corpus(word_corpus):
    return word_corpus


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    run("train", "--preset", "tiny", "--data", corpus, "--steps", 4, "--out", out, "--quiet")
    return out


def split_safetensors(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header, body):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def rewrite_metadata(src, dst, edit):
    header, body = split_safetensors(pathlib.Path(src).read_bytes())
    edit(header["__metadata__"])
    pathlib.Path(dst).write_bytes(join_safetensors(header, body))
    return dst


def test_absurd_sizes_from_flags_and_configs_are_errors_naming_the_key(corpus, tmp_path):
    tiny = ["train", "--preset", "tiny", "--data", corpus, "--steps", 2, "--out", tmp_path / "o"]
    assert_error([*tiny, "--set", f"model.d_ff={HUGE}"], "d_ff", "16777216")
    assert_error([*tiny, "--set", f"model.vocab_size={HUGE}"], "vocab_size", "16777216")
    assert_error([*tiny, "--set", f"model.n_layers={2 ** 40}"], "n_layers", "65536")
    assert_error([*tiny, "--set", f"train.batch_size={2 ** 40}"], "batch_size", "2^20")
    assert_error([*tiny, "--set", "model.vocab_size=512"], "vocab_size must be 256")
    assert_error(["demo", "--points", HUGE], "--points", "16777216")
    assert_error(["demo", "--threads", 4294967297], "--threads must be 1 to 4096")
    assert_error([*tiny, "--threads", 5000], "--threads must be 1 to 4096")
    assert_error([*tiny, "--minutes", "1e300"], "time_budget_s", "1e9")
    assert_error([*tiny, "--steps", ""], "--steps needs a value")
    assert_error(["train", "--preset", "tiny", "--data", corpus, "--steps", 2, "--out", ""], "--out needs a value")
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_with_an_absurd_config_is_an_error_for_every_command(trained, tmp_path):
    for key, value, limit in [("d_model", HUGE, "1048576"), ("max_len", HUGE, "16777216")]:
        def edit(meta):
            config = json.loads(meta["model_config"])
            config[key] = value
            meta["model_config"] = json.dumps(config)
        bad = rewrite_metadata(trained / "checkpoint.safetensors", tmp_path / f"{key}.safetensors", edit)
        for args in (["info", bad], ["eval", bad], ["generate", bad], ["train", "--resume", bad, "--steps", 9]):
            assert_error(args, key, limit)
        with pytest.raises(ValueError, match=key):
            ef.train.load_checkpoint(bad)


def test_python_shapes_beyond_the_limits_raise():
    with pytest.raises(ValueError, match="2\\^48"):
        ef.zeros(HUGE, 4)
    with pytest.raises(ValueError, match="2\\^48"):
        ef.zeros(2 ** 32, 2 ** 32)
    with pytest.raises(ValueError, match="shape"):
        ef.zeros(2 ** 64)
    with pytest.raises(ValueError, match="negative"):
        ef.zeros(-1, 3)
    assert ef.zeros(2 ** 62, 2 ** 62, 0).numel() == 0  # no element, no overflow
    with pytest.raises(MemoryError, match="out of memory"):
        ef.zeros(2 ** 45)  # 128 TiB: the allocator refuses; a Python MemoryError, not a crash


def test_tensor_conversion_never_narrows_silently():
    with pytest.raises(ValueError, match="float32's range"):
        ef.tensor(np.array([1.0, 1e300]))
    assert math.isinf(ef.tensor(np.array([np.inf])).item())  # inf itself is a value, kept
    assert math.isnan(ef.tensor(np.array([np.nan])).item())
    with pytest.raises(ValueError, match="int64's range"):
        ef.tensor(np.array([2 ** 63], dtype=np.uint64))
    assert ef.tensor(np.array([2 ** 63 - 1], dtype=np.uint64)).tolist() == [2 ** 63 - 1]
    with pytest.raises(ValueError, match="whole numbers"):
        ef.tensor(np.array([1.5]), dtype="int64")


@pytest.mark.parametrize("kind", ["full", "flash"])
@pytest.mark.parametrize("causal", [False, True])
def test_a_nan_query_row_gives_a_nan_row_as_softmax_does(kind, causal, rng):
    B, H, N, d = 1, 2, 70, 16
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    q[0, 1, 5] = np.nan
    out = ef.attention(*(ef.tensor(x.astype(np.float32)) for x in (q, k, v)), kind=kind, causal=causal).numpy()
    s = torch.tensor(q) @ torch.tensor(k).transpose(-1, -2) / math.sqrt(d)
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -math.inf)
    ref = (torch.softmax(s, -1) @ torch.tensor(v)).numpy()
    assert np.isnan(ref[0, 1, 5]).all() and np.isnan(out[0, 1, 5]).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)  # NaN where torch has NaN, equal elsewhere
    # The gradient of the NaN row is NaN too (flash recomputes probabilities from L = NaN).
    qt = ef.tensor(q.astype(np.float32), requires_grad=True)
    ef.attention(qt, ef.tensor(k.astype(np.float32)), ef.tensor(v.astype(np.float32)), kind=kind,
                 causal=causal).sum().backward()
    assert np.isnan(qt.grad.numpy()[0, 1, 5]).all() and np.isfinite(qt.grad.numpy()[0, 0]).all()


def test_resume_never_overwrites_another_runs_files(trained, corpus, tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    ours = folder / "ours.safetensors"
    ours.write_bytes((trained / "checkpoint.safetensors").read_bytes())
    theirs = folder / "checkpoint.safetensors"
    theirs.write_bytes(b"another run's checkpoint")
    assert_error(["train", "--resume", ours, "--steps", 6, "--data", corpus], "belongs to another run", "--out")
    assert theirs.read_bytes() == b"another run's checkpoint"
    theirs.unlink()
    (folder / "log.jsonl").write_text("another run's log\n")
    assert_error(["train", "--resume", ours, "--steps", 6, "--data", corpus], "log.jsonl", "another run")
    assert (folder / "log.jsonl").read_text() == "another run's log\n"
    run("train", "--resume", ours, "--steps", 6, "--data", corpus, "--out", tmp_path / "new", "--quiet")
    assert ef.train.load_checkpoint(tmp_path / "new" / "checkpoint.safetensors")[1]["step"] == 6


def test_checksums_catch_a_flipped_byte_and_old_files_still_load(trained, tmp_path):
    data = (trained / "checkpoint.safetensors").read_bytes()
    header, body = split_safetensors(data)
    sums = json.loads(header["__metadata__"]["checksums"])
    assert set(sums) == {k for k in header if k != "__metadata__"}
    name = "model.token_embedding.weight" if "model.token_embedding.weight" in header else sorted(sums)[0]
    begin, end = header[name]["data_offsets"]
    flipped = bytearray(body)
    flipped[(begin + end) // 2] ^= 0x10
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(join_safetensors(header, bytes(flipped)))
    for cmd in ("info", "eval", "generate"):
        assert_error([cmd, bad], f"tensor '{name}' is corrupt")
    with pytest.raises(OSError, match="is corrupt"):
        ef.train.load_checkpoint(bad)
    old = rewrite_metadata(trained / "checkpoint.safetensors", tmp_path / "old.safetensors",
                           lambda meta: meta.pop("checksums"))
    p = run("info", old)
    assert "has no checksums" in p.stderr and "parameters" in p.stdout


def test_elapsed_nan_is_refused_when_saving(trained, tmp_path):
    model, info = ef.train.load_checkpoint(trained / "checkpoint.safetensors")
    with pytest.raises(ValueError, match="elapsed_s"):
        ef.train.save_checkpoint(tmp_path / "c.safetensors", model, elapsed_s=float("nan"))
    assert not (tmp_path / "c.safetensors").exists()


def test_generation_of_text_needs_a_byte_model():
    model = ef.models.LanguageModel({"vocab_size": 300, "d_model": 16, "n_heads": 2, "n_layers": 1, "max_len": 8})
    with pytest.raises(ValueError, match="vocab_size must be 256"):
        ef.train.generate(model, "abc", max_new_tokens=2)


def test_files_are_size_checked_before_reading(trained, tmp_path):
    assert_error(["train", "--preset", "tiny", "--data", "/dev/zero", "--steps", 1, "--out", tmp_path / "o"],
                 "/dev/zero", "device")
    sparse = tmp_path / "sparse.txt"
    with open(sparse, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB of holes: more than this machine's memory
    assert_error(["train", "--preset", "tiny", "--data", sparse, "--steps", 1, "--out", tmp_path / "o"],
                 "sparse.txt", "MiB of memory available")
    assert_error(["eval", trained / "checkpoint.safetensors", "--context", 0], "--context must be >= 1")


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(trained, tmp_path):
    model, _ = ef.train.load_checkpoint(trained / "checkpoint.safetensors")
    target = tmp_path / "c.safetensors"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f"c.safetensors.tmp.{dead.pid}.7"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f"c.safetensors.tmp.{os.getppid()}.7"  # a live process's write in progress
    alive.write_bytes(b"being written")
    ef.train.save_checkpoint(target, model)
    assert target.exists() and not stale.exists() and alive.exists()


def test_bad_python_arguments_name_the_argument():
    x = ef.randn(2, 3)
    with pytest.raises(ValueError, match="dim: expected an int or a sequence of ints, got 'a'"):
        ef.sum(x, dim="a")
    with pytest.raises(ValueError, match="shape: expected sizes"):
        ef.zeros("a")
    with pytest.raises(TypeError, match="(?s)attention\\(\\): incompatible function arguments.*kind: str"):
        ef.attention(x, x, x, kind=3)
