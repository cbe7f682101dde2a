"""The image corpus and the LRA-style tasks from Python (eformer.data): ListOps and Pathfinder generators,
PNG files checked by an independent decoder (zlib), Fashion-MNIST (skipped when not prepared), the CLI's
--data fashion-mnist path and `bench --tasks --quick` on a tiny budget."""
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import eformer as ef

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = os.path.normpath(os.path.join(os.path.dirname(ef.__file__), "..", "..", "eformer"))


def fashion_mnist_or_skip():
    try:
        return ef.data.fashion_mnist_dir()
    except OSError as e:
        pytest.skip(f"Fashion-MNIST not prepared (scripts/install-deps.sh, scripts/prepare-data.sh): {e}")


# ListOps -------------------------------------------------------------------------------------------------

def listops_value(text):
    """An independent evaluator (LRA's to_value semantics) over the text form."""
    stack = [[]]
    for word in text.split():
        if word.startswith("["):
            stack.append([word])
        elif word == "]":
            op, *args = stack.pop()
            v = {"[MIN": min(args), "[MAX": max(args), "[MED": int(np.median(args)), "[SM": sum(args) % 10}[op]
            stack[-1].append(v)
        else:
            stack[-1].append(int(word))
    assert len(stack) == 1 and len(stack[0]) == 1
    return stack[0][0]


@pytest.mark.parametrize("text,value", [("[MAX 2 9 [MIN 4 7 ] 0 ]", 9), ("[MED 1 4 ]", 2), ("[SM 9 8 7 ]", 4),
                                        ("[MED 3 [SM 5 6 ] 8 0 ]", 2), ("5", 5)])
def test_listops_evaluates_hand_written_expressions(text, value):
    assert ef.data.listops_evaluate(text) == value
    assert listops_value(text) == value
    assert ef.data.listops_evaluate(ef.data.listops_tokenize(text)) == value


def test_listops_batches_match_an_independent_evaluator_and_are_balanced():
    ids, labels = ef.data.listops(seed=3, indices=range(100), min_length=20, max_length=150)
    ids, labels = ids.numpy(), labels.numpy()
    assert ids.shape[0] == 100 and ids.shape[1] < 150
    assert list(labels) == [i % 10 for i in range(100)]
    for row, label in zip(ids, labels):
        n = int((row != 0).sum())
        assert 20 < n < 150 and (row[n:] == 0).all()
        assert listops_value(ef.data.listops_text(row.tolist())) == label
    again, _ = ef.data.listops(seed=3, indices=[7], min_length=20, max_length=150, pad_to=149)
    assert again.numpy().shape == (1, 149)
    assert (again.numpy()[0, :ids.shape[1]] == ids[7]).all()
    with pytest.raises(ValueError, match="unknown word"):
        ef.data.listops_evaluate("[FIRST 1 2 ]")
    with pytest.raises(ValueError, match="min_length"):
        ef.data.listops(0, [0], min_length=10, max_length=5)


# Pathfinder ----------------------------------------------------------------------------------------------

def flood_connected(img, a, b):
    """Whether a fill over drawn pixels, jumping gaps of one pixel (Chebyshev radius 2), joins a and b."""
    S = img.shape[0]
    seen = np.zeros_like(img, dtype=bool)
    stack = [divmod(a, S)]
    seen[stack[0]] = True
    while stack:
        y, x = stack.pop()
        if y * S + x == b:
            return True
        for yy in range(max(0, y - 2), min(S, y + 3)):
            for xx in range(max(0, x - 2), min(S, x + 3)):
                if img[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
    return False


def test_pathfinder_label_is_what_a_flood_fill_sees():
    pixels, labels, dots = ef.data.pathfinder(seed=11, indices=range(60))
    pixels, labels, dots = pixels.numpy(), labels.numpy(), dots.numpy()
    assert pixels.shape == (60, 1024) and set(np.unique(pixels)) <= {0, 160, 255}
    assert list(labels) == [i % 2 for i in range(60)]
    for img, label, (a, b) in zip(pixels, labels, dots):
        assert flood_connected(img.reshape(32, 32), a, b) == bool(label)
    again, _, _ = ef.data.pathfinder(seed=11, indices=[59, 5])
    assert (again.numpy() == pixels[[59, 5]]).all()
    other, _, _ = ef.data.pathfinder(seed=12, indices=[5])
    assert (other.numpy()[0] != pixels[5]).any()


# PNG -----------------------------------------------------------------------------------------------------

def zlib_decode_png(data):
    """An independent reader: chunks with their CRCs, the IDAT stream through zlib, filter-0 rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", None
    while at < len(data):
        (n,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + n]
        assert struct.unpack(">I", data[at + 8 + n:at + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + n
    w, h, depth, colour, _, _, interlace = header
    assert (depth, colour, interlace) == (8, 0, 0)
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, w + 1)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:]


@pytest.mark.parametrize("w,h", [(28, 28), (3, 1), (300, 250)])
def test_png_round_trip(tmp_path, w, h):
    rng = np.random.default_rng(w)
    img = rng.integers(0, 256, (h, w), dtype=np.uint8)
    data = ef.data.encode_png(img.ravel().tolist(), w, h)
    assert (zlib_decode_png(data) == img).all()
    assert ef.data.decode_png(data) == (w, h, img.tobytes())
    path = tmp_path / "x.png"
    ef.data.write_png(path, img.ravel().tolist(), w, h)
    assert path.read_bytes() == data
    with pytest.raises(OSError, match="CRC mismatch"):
        bad = bytearray(data)
        bad[45] ^= 0xFF
        ef.data.decode_png(bytes(bad))


# Fashion-MNIST -------------------------------------------------------------------------------------------

def test_fashion_mnist_splits_and_corpus():
    fashion_mnist_or_skip()
    x, y = ef.data.fashion_mnist("test")
    assert x.shape == (10000, 784) and x.dtype == np.uint8 and (np.bincount(y) == 1000).all()
    v, _ = ef.data.fashion_mnist("valid")
    assert v.shape == (5000, 784)
    c = ef.data.Corpus.fashion_mnist()
    assert c.record_length == 785 and c.unit == "dim" and c.test_size == 10000 * 785
    inputs, targets = ef.data.batch(c, batch_size=2, context=784, seed=0, step=0)
    inputs, targets = inputs.numpy(), targets.numpy()
    assert (inputs[:, 0] == 0).all() and (inputs[:, 1:] == targets[:, :-1]).all()
    train, _ = ef.data.fashion_mnist("train")
    assert any((train == row).all(axis=1).any() for row in targets[:1])  # a whole training image


def run_cli(*args, check=True):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_cli_trains_evaluates_and_draws_fashion_mnist(tmp_path):
    fashion_mnist_or_skip()
    out = tmp_path / "fm"
    p = run_cli("train", "--preset", "tiny", "--data", "fashion-mnist", "--set", "model.max_len=784", "--set",
                "d_model=32", "--set", "train.eval_batches=1", "--set", "train.batch_size=2", "--steps", 2,
                "--out", out, "--quiet")
    assert "valid bits/dim" in p.stdout
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert log[0]["data"].startswith("fashion-mnist")
    bits = [j["bits_per_char"] for j in log if j["event"] == "valid"][-1]
    assert 0 < bits < 9  # an untrained model of 256 levels is near 8 bits per dimension
    e = json.loads(run_cli("eval", out / "checkpoint.safetensors", "--max-batches", 1, "--batch-size", 2,
                           "--json").stdout)
    assert e["unit"] == "dim" and e["targets"] == 2 * 784
    png = tmp_path / "sample.png"
    p = run_cli("generate", out / "checkpoint.safetensors", "--png", png, "--seed", 3)
    assert "wrote" in p.stdout
    img = zlib_decode_png(png.read_bytes())
    assert img.shape == (28, 28)
    # A model of a shorter context cannot draw an image; one with a wrong context cannot train on it.
    p = run_cli("train", "--preset", "tiny", "--data", "fashion-mnist", "--steps", 1, "--out", tmp_path / "x",
                check=False)
    assert p.returncode == 2 and "model.max_len=784" in p.stderr


def test_bench_tasks_quick_smoke(tmp_path):
    out = tmp_path / "tasks.json"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ef.__file__)))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "tasks.py"), "--quick", "--steps", "2",
                        "--eval", "16", "--mechanisms", "flash", "performer", "--tasks-list", "listops",
                        "pathfinder", "--threads", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["mechanisms"] == ["flash", "performer"]
    for task in ("listops", "pathfinder"):
        for mech in ("flash", "performer"):
            row = r["tasks"][task]["results"][mech]
            assert row["steps"] == 2 and 0 <= row["accuracy"] <= 100, row
    assert "| flash |" in p.stdout and "LRA Transformer" in p.stdout


def test_bench_tasks_image_with_a_mechanism_option(tmp_path):
    fashion_mnist_or_skip()
    out = tmp_path / "tasks.json"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ef.__file__)))
    cmd = [sys.executable, os.path.join(ROOT, "bench", "tasks.py"), "--steps", "1", "--batch", "2", "--eval", "4",
           "--mechanisms", "aft_conv", "--tasks-list", "image", "--threads", "2", "--out", str(out),
           "--option", "aft_conv.image_shape=[28,28]", "--option", "aft_conv.kernel=5"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["options"] == {"aft_conv": {"image_shape": [28, 28], "kernel": 5}}
    assert r["tasks"]["image"]["results"]["aft_conv"]["steps"] == 1
    # A malformed option is refused by name, before any training.
    p = subprocess.run(cmd[:-1] + ["kernel=5"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode != 0 and "MECHANISM.KEY=VALUE" in p.stderr
