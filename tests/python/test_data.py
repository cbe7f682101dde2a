"""eformer.data: the byte tokenizer, the streaming UTF-8 decoder, corpora and splits, batches."""
import os
import pathlib

import numpy as np
import pytest

import eformer as ef

data = ef.data
tok = data.ByteTokenizer()

SAMPLES = ["", "hello", "héllo wörld", "✓ ∑ → ∞", "日本語のテキスト", "emoji 😀🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a\x00b\nc\td"]


# ---------------------------------------------------------------------------------------------
# Tokenizer


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_text(text):
    ids = tok.encode(text)
    assert ids.dtype == "int64" and ids.shape == (len(text.encode()),)
    assert list(ids.numpy()) == list(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode(list(ids.numpy())) == text
    assert tok.decode_bytes(ids) == text.encode()


def test_round_trip_arbitrary_bytes(rng):
    every = bytes(range(256))
    assert tok.decode_bytes(tok.encode(every)) == every
    for _ in range(20):
        b = rng.integers(0, 256, int(rng.integers(0, 300))).astype(np.uint8).tobytes()
        assert tok.decode_bytes(tok.encode(b)) == b
        # decode() gives text; invalid UTF-8 follows bytes.decode's `errors`.
        assert tok.decode(tok.encode(b)) == b.decode("utf-8", errors="replace")
    assert tok.vocab_size == 256


def test_decode_errors():
    with pytest.raises(IndexError, match="id 256 at position 2"):
        tok.decode([104, 105, 256])
    with pytest.raises(IndexError, match="id -1"):
        tok.decode_bytes(ef.tensor(np.array([-1, 3])))
    with pytest.raises(UnicodeDecodeError):
        tok.decode([0xFF], errors="strict")
    with pytest.raises(ValueError, match="int64"):
        tok.decode(ef.tensor(np.zeros(3, dtype=np.float32)))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(ef.tensor(np.zeros((2, 2), dtype=np.int64)))


# ---------------------------------------------------------------------------------------------
# UTF-8 validation and the streaming decoder


def python_invalid_offset(b):
    try:
        b.decode("utf-8")
        return -1
    except UnicodeDecodeError as e:
        return e.start


def random_messy_bytes(rng, n):
    """Valid characters of every length mixed with stray, truncated and out-of-range bytes."""
    pieces = ["a", "é", "✓", "😀", "\U0010FFFF", "\ud7ff"]
    out = bytearray()
    while len(out) < n:
        r = rng.random()
        if r < 0.6:
            out += pieces[int(rng.integers(len(pieces)))].encode()
        elif r < 0.8:
            out += pieces[int(rng.integers(2, len(pieces)))].encode()[: int(rng.integers(1, 3))]  # truncated
        else:
            out.append(int(rng.integers(0x80, 0x100)))
    return bytes(out)


def test_utf8_invalid_offset_matches_python(rng):
    cases = [b"", b"abc", "é✓😀".encode(), b"\xc0\x80", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\xf5", b"ab\xe2\x9c", b"\x80", "ok".encode() + b"\xff"]
    for b in cases:
        assert data.utf8_invalid_offset(b) == python_invalid_offset(b), b
    for _ in range(300):
        b = random_messy_bytes(rng, int(rng.integers(1, 40)))
        assert data.utf8_invalid_offset(b) == python_invalid_offset(b), b


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_decoder_never_splits_a_character(text):
    dec = data.Utf8StreamDecoder()
    pieces = [dec.push(int(i)) for i in tok.encode(text).numpy()]
    assert dec.pending == 0
    assert dec.flush() == ""
    assert "".join(pieces) == text
    # Each piece is empty or exactly one whole character (it is a str, so it cannot hold half of one).
    assert all(len(p) <= 1 for p in pieces)
    assert [p for p in pieces if p] == list(text)


def test_stream_decoder_holds_back_partial_characters():
    dec = data.Utf8StreamDecoder()
    b = "😀".encode()
    assert dec.push(b[0]) == "" and dec.pending == 1
    assert dec.push(list(b[1:3])) == "" and dec.pending == 3
    assert dec.push(b[3]) == "😀" and dec.pending == 0
    assert dec.push_bytes(b"\xe2\x9c") == "" and dec.flush() == "\ufffd" and dec.pending == 0
    with pytest.raises(IndexError, match="id 999"):
        dec.push(999)


def test_stream_decoder_matches_replace_policy(rng):
    for _ in range(300):
        b = random_messy_bytes(rng, int(rng.integers(1, 60)))
        dec = data.Utf8StreamDecoder()
        # Feed in random-sized chunks: the output must not depend on how the stream is cut.
        out, i = [], 0
        while i < len(b):
            j = i + int(rng.integers(1, 5))
            out.append(dec.push_bytes(b[i:j]))
            i = j
        out.append(dec.flush())
        assert "".join(out) == b.decode("utf-8", errors="replace"), b


# ---------------------------------------------------------------------------------------------
# Corpora and splits


def expected_bounds(text_bytes, valid=0.05, test=0.05):
    n = len(text_bytes)

    def boundary(keep):
        b = n * keep // 10**6
        while b < n and (text_bytes[b] & 0xC0) == 0x80:
            b += 1
        return b

    pv, pt = round(valid * 1e6), round(test * 1e6)
    vb = boundary(10**6 - pv - pt)
    return vb, max(vb, boundary(10**6 - pt))


def check_splits_partition(corpus, text_bytes):
    n = len(text_bytes)
    assert corpus.size == len(corpus) == n
    tr, va, te = corpus.bounds("train"), corpus.bounds("valid"), corpus.bounds("test")
    assert tr[0] == 0 and tr[1] == va[0] and va[1] == te[0] and te[1] == n
    assert (corpus.train_size, corpus.valid_size, corpus.test_size) == (tr[1] - tr[0], va[1] - va[0], te[1] - te[0])
    joined = np.concatenate([corpus.split(s).numpy() for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(joined, np.frombuffer(text_bytes, dtype=np.uint8))
    assert corpus.text() == text_bytes
    for s in ("train", "valid", "test"):
        part = corpus.text(s)
        if part:  # every split starts on a character
            assert (part[0] & 0xC0) != 0x80


@pytest.mark.parametrize("n", [1, 2, 19, 20, 21, 999, 1000, 1001, 12345])
def test_split_boundaries_ascii(tmp_path, n):
    text = ("abcdefghij" * (n // 10 + 1))[:n].encode()
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    c = data.Corpus.from_path(path)
    check_splits_partition(c, text)
    assert (c.bounds("valid")[0], c.bounds("test")[0]) == (n * 90 // 100, n * 95 // 100)
    assert c.source == str(path)


def test_split_boundaries_multibyte_and_custom_fractions():
    for text in ["é" * 1001, "😀x" * 333, "a✓" * 500]:
        b = text.encode()
        for valid, test in [(0.05, 0.05), (0.1, 0.2), (0.0, 0.0), (0.333333, 0.25)]:
            c = data.Corpus.from_text(text, valid_fraction=valid, test_fraction=test)
            check_splits_partition(c, b)
            assert (c.bounds("valid")[0], c.bounds("test")[0]) == expected_bounds(b, valid, test)
    assert data.Corpus.from_text("x" * 1000).bounds("valid") == (900, 950)
    with pytest.raises(ValueError, match="nothing for train"):
        data.Corpus.from_text("abc", valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="valid fraction"):
        data.Corpus.from_text("abc", valid_fraction=-0.1)


def test_corpus_from_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c.txt").write_text("third ✓")
    (tmp_path / "b.txt").write_text("second\n")  # b.txt < b/c.txt byte-wise ('.' < '/')
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "Z.md").write_text("zero")  # upper case sorts first
    (tmp_path / ".hidden").write_text("no")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("no")
    (tmp_path / "b" / ".swp").write_bytes(b"\xff no")  # hidden: not even validated
    c = data.Corpus.from_path(str(tmp_path))
    expected = "zero\nfirst\nsecond\n\nthird ✓".encode()
    assert c.text() == expected
    check_splits_partition(c, expected)
    assert c.source == str(tmp_path)
    # pathlib paths work too
    assert data.Corpus.from_path(tmp_path).text() == expected


def test_corpus_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(OSError, match="nope.txt.*does not exist"):
        data.Corpus.from_path(missing)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.Corpus.from_path(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="empty"):
        data.Corpus.from_text("")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="no .*files"):
        data.Corpus.from_path(tmp_path / "folder")
    (tmp_path / "folder" / "a").write_text("")
    (tmp_path / "folder" / "b").write_text("")
    with pytest.raises(ValueError, match="all empty"):
        data.Corpus.from_path(tmp_path / "folder")
    bad = tmp_path / "folder" / "bad.txt"
    bad.write_bytes("ok é ".encode() + b"\xc3\x28 tail")
    with pytest.raises(OSError, match=r"bad\.txt.*not valid UTF-8 at byte offset 6"):
        data.Corpus.from_path(tmp_path / "folder")
    with pytest.raises(OSError, match="byte offset 2"):
        data.Corpus.from_text(b"ab\xff")


def test_context_too_large():
    c = data.Corpus.from_text("x" * 1000)  # 900 / 50 / 50
    c.check_context(49)
    with pytest.raises(ValueError, match="valid split has 50 tokens.*context 50 needs at least 51"):
        c.check_context(50)
    with pytest.raises(ValueError, match="valid split .* has 50 tokens.*needs 65"):
        data.batch(c, 2, 64, split="valid")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        c.split("dev")


# ---------------------------------------------------------------------------------------------
# Training batches


def corpus_for_batches():
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    return data.Corpus.from_text(rng.choice(letters, 20000).tobytes())


def test_batch_shapes_shift_and_windows_inside_split():
    c = corpus_for_batches()
    for split in ("train", "valid", "test"):
        tokens = c.split(split).numpy()
        n = len(tokens)
        for step in range(5):
            x, y = data.batch(c, 8, 32, seed=7, step=step, split=split)
            assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == "int64"
            x, y = x.numpy(), y.numpy()
            np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
            offsets = data.batch_offsets(n, 8, 32, 7, step)
            assert all(0 <= o <= n - 33 for o in offsets)
            for row, o in enumerate(offsets):
                np.testing.assert_array_equal(x[row], tokens[o:o + 32])
                np.testing.assert_array_equal(y[row], tokens[o + 1:o + 33])
    # The default split is train.
    np.testing.assert_array_equal(data.batch(c, 4, 16, 1, 2)[0].numpy(), data.batch(c, 4, 16, 1, 2, split="train")[0].numpy())


def test_batch_is_a_pure_function_of_seed_and_step():
    c = corpus_for_batches()
    first = [data.batch(c, 16, 64, seed=3, step=s)[0].numpy() for s in range(6)]
    # Replayed in another order (as a resumed run would), the batches are identical.
    for s in [5, 2, 0, 4, 1, 3]:
        np.testing.assert_array_equal(data.batch(c, 16, 64, seed=3, step=s)[0].numpy(), first[s])
    for s in range(5):
        assert not np.array_equal(first[s], first[s + 1])
    assert not np.array_equal(data.batch(c, 16, 64, seed=4, step=0)[0].numpy(), first[0])
    # The offsets depend only on (split size, batch, context, seed, step): a tensor source agrees.
    x_t, y_t = data.batch(c.split("train"), 16, 64, seed=3, step=2)
    np.testing.assert_array_equal(x_t.numpy(), first[2])
    # Row i of a larger batch is row i of a smaller one (offset i depends on i, not on the batch size).
    a = data.batch_offsets(1000, 4, 10, 9, 1)
    assert data.batch_offsets(1000, 7, 10, 9, 1)[:4] == a


def test_batch_independent_of_threads():
    c = corpus_for_batches()
    before = ef.get_num_threads()
    try:
        ef.set_num_threads(1)
        one = [t.numpy() for t in data.batch(c, 4096, 16, seed=11, step=5)]
        ef.set_num_threads(max(2, os.cpu_count() or 2))
        many = [t.numpy() for t in data.batch(c, 4096, 16, seed=11, step=5)]
    finally:
        ef.set_num_threads(before)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def test_batch_offsets_cover_the_range():
    # A split of context + 2 tokens has two window starts; both occur, nothing else does.
    seen = set()
    for step in range(50):
        seen.update(data.batch_offsets(10, 4, 8, 0, step))
    assert seen == {0, 1}
    offs = np.concatenate([data.batch_offsets(1000, 64, 10, 5, s) for s in range(50)])
    assert offs.min() >= 0 and offs.max() <= 989
    assert 450 < offs.mean() < 540  # roughly uniform
    assert data.batch_offsets(11, 3, 10, 1, 1) == [0, 0, 0]


def test_batch_errors():
    with pytest.raises(ValueError, match="batch_size"):
        data.batch(ef.tensor(np.arange(100)), 0, 8)
    with pytest.raises(ValueError, match="context"):
        data.batch(ef.tensor(np.arange(100)), 2, 0)
    with pytest.raises(ValueError, match="100 tokens; a training window of context 100 needs 101"):
        data.batch(ef.tensor(np.arange(100)), 2, 100)
    with pytest.raises(ValueError, match="Tensor source"):
        data.batch(ef.tensor(np.arange(100)), 2, 8, split="valid")
    with pytest.raises(ValueError, match="Corpus or a 1-D int64 Tensor"):
        data.batch([1, 2, 3], 2, 1)


# ---------------------------------------------------------------------------------------------
# Evaluation windows


@pytest.mark.parametrize("n,context,batch_size", [(2, 1, 1), (101, 10, 1), (101, 10, 3), (105, 10, 4),
                                                  (57, 100, 2), (1000, 7, 16)])
def test_eval_windows_cover_every_token_once(n, context, batch_size):
    tokens = np.arange(n, dtype=np.int64) % 251
    w = data.eval_windows(ef.tensor(tokens), context, batch_size)
    assert w.num_targets == n - 1
    xs, ys = [], []
    batches = list(w)
    assert len(batches) == len(w)
    for k, (x, y) in enumerate(batches):
        x, y = x.numpy(), y.numpy()
        assert x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= context
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
        np.testing.assert_array_equal(x[:, 0], tokens[w.offsets(k)])
        xs.append(x.reshape(-1))
        ys.append(y.reshape(-1))
    np.testing.assert_array_equal(np.concatenate(xs), tokens[:-1])  # every token an input once, but the last
    np.testing.assert_array_equal(np.concatenate(ys), tokens[1:])   # every token a target once, but the first
    partial = (n - 1) % context
    assert w.num_windows == (n - 1) // context + (1 if partial else 0)
    if partial:  # the short window comes alone, last
        assert batches[-1][0].shape == (1, partial)
    else:
        assert all(x.shape[1] == context for x, _ in batches)


def test_eval_windows_from_corpus_and_errors():
    c = corpus_for_batches()
    w = data.eval_windows(c, 64, 8)  # the valid split by default
    assert w.num_targets == c.valid_size - 1
    ys = np.concatenate([y.numpy().reshape(-1) for _, y in w])
    np.testing.assert_array_equal(ys, c.split("valid").numpy()[1:])
    assert data.EvalWindows(c, 64, 8, split="test").num_targets == c.test_size - 1
    x_last, _ = w[-1]
    np.testing.assert_array_equal(x_last.numpy(), w[len(w) - 1][0].numpy())
    with pytest.raises(IndexError):
        w[len(w)]
    with pytest.raises(ValueError, match="at least 2"):
        data.eval_windows(ef.tensor(np.array([5])), 4)
    with pytest.raises(ValueError, match="context"):
        data.eval_windows(c, 0)


# ---------------------------------------------------------------------------------------------
# The default corpus


def test_default_corpus_path_env(tmp_path, monkeypatch):
    f = tmp_path / "my.txt"
    f.write_text("In the beginning " * 100)
    monkeypatch.setenv("EFORMER_DATA", str(f))
    assert data.default_corpus_path() == str(f)
    assert data.Corpus.default().size == f.stat().st_size
    monkeypatch.setenv("EFORMER_DATA", str(tmp_path / "gone.txt"))
    with pytest.raises(OSError, match="EFORMER_DATA=.*gone.txt"):
        data.default_corpus_path()


def test_default_corpus(monkeypatch):
    monkeypatch.delenv("EFORMER_DATA", raising=False)
    try:
        path = data.default_corpus_path()
    except OSError as e:
        assert "scripts/prepare-data.sh" in str(e)
        pytest.skip(f"the default corpus has not been prepared (run scripts/prepare-data.sh): {e}")
    assert pathlib.Path(path).parts[-2:] == ("data", "kjv.txt")
    c = data.Corpus.default()
    assert 4_000_000 <= c.size <= 4_600_000
    text = c.text()
    assert text.startswith(b"Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n")
    assert text.endswith(b"21 The grace of our Lord Jesus Christ be with you all. Amen.\n")
    assert text.isascii()
    assert (c.train_size, c.valid_size, c.test_size) == (c.size * 90 // 100, c.size * 95 // 100 - c.size * 90 // 100,
                                                          c.size - c.size * 95 // 100)
    c.check_context(4096)
    x, y = data.batch(c, 4, 256, seed=0, step=0)
    assert x.shape == (4, 256)


def test_duplication_task():
    x, y = (t.numpy() for t in ef.data.duplication_batch(seed=3, index=7, batch=4, half=9, vocab=5))
    assert x.shape == y.shape == (4, 18)
    assert (x[:, 0] == 0).all() and (x[:, 9] == 0).all()
    assert ((x[:, 1:9] >= 1) & (x[:, 1:9] <= 4)).all()
    np.testing.assert_array_equal(x[:, 1:9], x[:, 10:])  # 0 w 0 w
    np.testing.assert_array_equal(y[:, 9:17], x[:, 10:])  # only the second w is scored
    assert (y[:, :9] == -100).all() and (y[:, 17] == -100).all()
    again = ef.data.duplication_batch(seed=3, index=7, batch=4, half=9, vocab=5)[0].numpy()
    np.testing.assert_array_equal(again, x)
    other = ef.data.duplication_batch(seed=3, index=8, batch=4, half=9, vocab=5)[0].numpy()
    assert (other != x).any()
    counts = np.bincount(ef.data.duplication_batch(0, 0, 64, 512, 128)[0].numpy().ravel(), minlength=128)
    assert counts[1:].min() > 0.6 * counts[1:].mean()  # uniform over 1 .. 127
    with pytest.raises(ValueError, match="half = 1"):
        ef.data.duplication_batch(0, 0, 1, 1)
    with pytest.raises(ValueError, match="vocab = 1"):
        ef.data.duplication_batch(0, 0, 1, 4, vocab=1)
