"""safetensors: round trips, interop with an independent pure-Python reader/writer, corrupt files, atomicity."""
import json
import os
import struct

import numpy as np
import pytest
import torch

import eformer as ef

# ---- an independent reference of the format (struct + json), for interop ----

NP_OF = {"F32": np.float32, "I64": np.int64, "BOOL": np.bool_, "F16": np.float16, "F64": np.float64}
CODE_OF = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.bool_): "BOOL"}


def ref_write_bytes(arrays, metadata=None):
    """Writes like the reference: dtype size descending, then name; contiguous; header padded to 8."""
    items = sorted(arrays.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
    header, offset, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in items:
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": CODE_OF[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def ref_read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    buf = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(buf[b:e], dtype=NP_OF[info["dtype"]]).reshape(info["shape"])
    return out, meta, n, header


def sample_arrays(rng):
    return {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "deep": rng.standard_normal((2, 1, 3, 2)).astype(np.float32),
        "ids": rng.integers(-(2**40), 2**40, size=(7,), dtype=np.int64),
        "mask": rng.random((2, 3)) > 0.5,
    }


def test_round_trip_with_metadata(tmp_path, rng):
    arrays = sample_arrays(rng)
    path = tmp_path / "model.safetensors"
    ef.save_safetensors(path, {k: ef.tensor(v) for k, v in arrays.items()}, metadata={"format": "pt", "epoch": "3"})
    loaded, meta = ef.load_safetensors(str(path), with_metadata=True)
    assert meta == {"format": "pt", "epoch": "3"}
    assert sorted(loaded) == sorted(arrays)
    for name, a in arrays.items():
        t = loaded[name]
        assert t.shape == a.shape, name
        assert t.dtype == {np.float32: "float32", np.int64: "int64", np.bool_: "bool"}[a.dtype.type]
        np.testing.assert_array_equal(t.numpy(), a, err_msg=name)
    assert ef.load_safetensors(path).keys() == loaded.keys()  # without metadata: just the dict


def test_non_contiguous_tensor_is_written_contiguous(tmp_path):
    x = ef.tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    xt = ef.transpose(x, 0, 1)
    ef.save_safetensors(tmp_path / "t.safetensors", {"xt": xt})
    np.testing.assert_array_equal(ef.load_safetensors(tmp_path / "t.safetensors")["xt"].numpy(),
                                  np.arange(12, dtype=np.float32).reshape(3, 4).T)


def test_reference_written_file_loads(tmp_path, rng):
    arrays = sample_arrays(rng)
    path = tmp_path / "ref.safetensors"
    path.write_bytes(ref_write_bytes(arrays, {"source": "reference"}))
    loaded, meta = ef.load_safetensors(path, with_metadata=True)
    assert meta == {"source": "reference"}
    for name, a in arrays.items():
        expected = torch.from_numpy(a.copy())
        got = torch.from_numpy(loaded[name].numpy())
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert torch.equal(got, expected), name


def test_eformer_written_file_parses_with_reference_reader(tmp_path, rng):
    arrays = sample_arrays(rng)
    path = tmp_path / "ef.safetensors"
    ef.save_safetensors(path, {k: ef.tensor(v) for k, v in arrays.items()}, {"k": "v"})
    got, meta, n, header = ref_read(path)
    assert n % 8 == 0
    assert meta == {"k": "v"}
    # The reference's layout: data ordered by dtype size (descending), then name, with no gaps.
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    assert order == [k for k, _ in sorted(arrays.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))]
    end = 0
    for k in order:
        assert header[k]["data_offsets"][0] == end
        end = header[k]["data_offsets"][1]
    assert end == os.path.getsize(path) - 8 - n
    for name, a in arrays.items():
        assert torch.equal(torch.from_numpy(got[name].copy()), torch.from_numpy(a.copy())), name
    # The whole file is byte-identical to what the reference writer produces.
    assert path.read_bytes() == ref_write_bytes(arrays, {"k": "v"})


def test_no_metadata_key_when_none(tmp_path):
    path = tmp_path / "a.safetensors"
    ef.save_safetensors(path, {"a": ef.zeros(2)})
    _, meta, _, _ = ref_read(path)
    assert meta is None
    assert ef.load_safetensors(path, with_metadata=True)[1] == {}


def test_empty_file_of_no_tensors(tmp_path):
    path = tmp_path / "none.safetensors"
    ef.save_safetensors(path, {})
    assert ef.load_safetensors(path) == {}


# ---- corrupt files ----

def header_file(header, data=b"", pad=True, raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


F32_2 = np.array([1.0, 2.0], dtype=np.float32).tobytes()

CORRUPT = {
    "short": (b"\x01\x02\x03", "shorter than the 8-byte header length"),
    "empty": (b"", "shorter than the 8-byte header length"),
    "absurd_length": (struct.pack("<Q", 2**62) + b"{}", "exceeds the limit"),
    "length_beyond_file": (struct.pack("<Q", 100) + b"{}      ", "larger than the 8 bytes that follow"),
    "not_json": (header_file(None, raw_header=b"{not json"), "not valid JSON"),
    "not_object": (header_file([1, 2]), "is a JSON array, expected an object"),
    "bad_utf8": (header_file(None, raw_header=b'{"\xff": 1}'), "not valid JSON"),
    "entry_not_object": (header_file({"a": 3}), "tensor 'a': the entry is a JSON number"),
    "missing_dtype": (header_file({"a": {"shape": [2], "data_offsets": [0, 8]}}, F32_2), "tensor 'a': the entry has no 'dtype'"),
    "missing_shape": (header_file({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, F32_2), "has no 'shape'"),
    "missing_offsets": (header_file({"a": {"dtype": "F32", "shape": [2]}}, F32_2), "has no 'data_offsets'"),
    "dtype_not_string": (header_file({"a": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, F32_2),
                         "'dtype' is a JSON number"),
    "shape_not_array": (header_file({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, F32_2),
                        "'shape' is a JSON number"),
    "shape_float": (header_file({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, F32_2),
                    "shape[0] is a JSON number"),
    "shape_string": (header_file({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, F32_2),
                     "shape[0] is a JSON string"),
    "negative_shape": (header_file({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, F32_2),
                       "shape[0] is negative"),
    "overflowing_shape": (header_file({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, F32_2),
                          "overflows"),
    "overflowing_shape_with_zero": (header_file({"a": {"dtype": "F32", "shape": [0, 2**40, 2**40],
                                                       "data_offsets": [0, 0]}}), "overflows"),
    "huge_dim": (header_file({"a": {"dtype": "F32", "shape": [2**64 + 5], "data_offsets": [0, 8]}}, F32_2),
                 "shape[0] is a JSON number"),
    "unsupported_dtype": (header_file({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, F32_2),
                          "unsupported dtype 'F16'"),
    "unsupported_bf16": (header_file({"a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, F32_2),
                         "unsupported dtype 'BF16'"),
    "unknown_dtype": (header_file({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, F32_2),
                      "unknown dtype 'Q7'"),
    "offsets_not_pair": (header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, F32_2),
                         "expected [begin, end]"),
    "offsets_negative": (header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, F32_2),
                         "data_offsets[0] is negative"),
    "begin_after_end": (header_file({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, F32_2),
                        "begin after end"),
    "end_beyond_buffer": (header_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F32_2),
                          "beyond the 8-byte data buffer"),
    "size_mismatch": (header_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, F32_2),
                      "cover 8 bytes but F32 shape [3] needs 12"),
    "overlap": (header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32_2), "overlaps tensor"),
    "gap": (header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32_2), "belong to no tensor"),
    "trailing_bytes": (header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, F32_2),
                       "trailing data"),
    "duplicate_name": (header_file(None, F32_2, raw_header=b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
                                                          b' "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'),
                       "duplicate key 'a'"),
    "duplicate_field": (header_file(None, F32_2, raw_header=b'{"a": {"dtype": "F32", "dtype": "I64", "shape": [2],'
                                                           b' "data_offsets": [0, 8]}}'),
                        "duplicate key 'dtype' in entry 'a'"),
    "metadata_not_object": (header_file({"__metadata__": [1]}), "'__metadata__' is a JSON array"),
    "metadata_not_string": (header_file({"__metadata__": {"epoch": 3}}), "metadata value for key 'epoch' is a JSON number"),
    "bool_byte": (header_file({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"),
                  "BOOL element 1 is byte 7"),
    "deep_nesting": (header_file(None, raw_header=b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"), "nests JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_raises_clear_error(tmp_path, case):
    data, needle = CORRUPT[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(data)
    with pytest.raises(OSError) as info:
        ef.load_safetensors(path)
    assert isinstance(info.value, ef.IOError)
    message = str(info.value)
    assert str(path) in message, message
    assert needle in message, message
    with pytest.raises(ef.IOError, match="<memory>"):
        ef._C._parse_safetensors(data)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(OSError, match="nope.safetensors.*No such file"):
        ef.load_safetensors(tmp_path / "nope.safetensors")


def test_random_corruption_never_crashes(rng):
    good = ref_write_bytes(sample_arrays(rng), {"a": "b"})
    for _ in range(300):
        data = bytearray(good)
        if rng.random() < 0.5:
            data = data[: rng.integers(0, len(data))]
        else:
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(0, len(data))] = int(rng.integers(0, 256))
        try:
            ef._C._parse_safetensors(bytes(data))
        except ef.IOError:
            pass


# ---- writer argument errors and atomicity ----

def test_writer_argument_errors(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="reserved"):
        ef.save_safetensors(path, {"__metadata__": ef.zeros(1)})
    with pytest.raises(ValueError, match="the value for 'a' is a list"):
        ef.save_safetensors(path, {"a": [1.0]})
    with pytest.raises(ValueError, match="metadata entries must be str -> str"):
        ef.save_safetensors(path, {"a": ef.zeros(1)}, metadata={"epoch": 3})
    with pytest.raises(ValueError, match="a tensor name is empty"):
        ef.save_safetensors(path, {"": ef.zeros(1)})
    assert not path.exists()


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp." in p.name)


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    ef.save_safetensors(path, {"a": ef.ones(3)})
    before = path.read_bytes()
    # Bad input is rejected before the disk is touched.
    with pytest.raises(ValueError):
        ef.save_safetensors(path, {"a": ef.zeros(2), "b": "not a tensor"})
    # The target is a directory: writing the temp file works, the rename fails.
    blocker = tmp_path / "dir.safetensors"
    blocker.mkdir()
    (blocker / "inside").write_text("keep")
    with pytest.raises(OSError, match="dir.safetensors.*rename"):
        ef.save_safetensors(blocker, {"a": ef.zeros(2)})
    assert (blocker / "inside").read_text() == "keep"
    # A directory that does not exist.
    with pytest.raises(OSError, match="missing/x.safetensors"):
        ef.save_safetensors(tmp_path / "missing" / "x.safetensors", {"a": ef.zeros(2)})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert ef.load_safetensors(path)["a"].numpy().tolist() == [1.0, 1.0, 1.0]


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    for i in range(3):
        ef.save_safetensors(path, {"step": ef.tensor(np.array(i, dtype=np.int64))})
        assert ef.load_safetensors(path)["step"].item() == i
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


def test_optimizer_state_round_trips_through_safetensors(tmp_path, rng):
    p = ef.tensor(rng.standard_normal(5).astype(np.float32), requires_grad=True)
    opt = ef.optim.AdamW([p], lr=0.1)
    p.grad = ef.tensor(rng.standard_normal(5).astype(np.float32))
    opt.step()
    ef.save_safetensors(tmp_path / "opt.safetensors", opt.state_tensors())
    q = ef.tensor(p.numpy(), requires_grad=True)
    opt2 = ef.optim.AdamW([q], lr=0.1)
    opt2.load_state_tensors(ef.load_safetensors(tmp_path / "opt.safetensors"))
    g = rng.standard_normal(5).astype(np.float32)
    p.grad, q.grad = ef.tensor(g), ef.tensor(g)
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert opt2.step_count == 2
