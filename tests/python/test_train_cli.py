"""The CLI's train / eval / generate / info end to end, on the tiny preset and a small temporary corpus:
the loss falls, a run killed with SIGKILL resumes with bit-identical losses, outputs are as documented,
generation is reproducible, and every bad flag, config or file is a one-line error with exit code 2.
Also the Python side (eformer.train)."""
import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest

import eformer as ef

CLI = os.path.normpath(os.path.join(os.path.dirname(ef.__file__), "..", "..", "eformer"))


def run(*args, check=True, timeout=120):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"eformer {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr}")
    return p


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def train_losses(path):
    """{step: loss} of every "train" line, the loss exact (from the hex float)."""
    return {j["step"]: float.fromhex(j["loss_hex"]) for j in read_log(path) if j["event"] == "train"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 60 KB of varied, learnable text."""
    rng = np.random.default_rng(0)
    words = "and the of to in that he shall unto for his a they be is him lord not them it with all".split()
    lines = []
    for i in range(1500):
        n = int(rng.integers(4, 12))
        lines.append(f"{i % 50 + 1} " + " ".join(words[int(k)] for k in rng.integers(0, len(words), n)) + ".")
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A tiny model trained 60 steps (logging every step); its output folder."""
    out = tmp_path_factory.mktemp("tiny")
    p = run("train", "--preset", "tiny", "--data", corpus, "--steps", 60, "--log-every", 1, "--eval-every", 20,
            "--out", out, "--quiet")
    assert "trained 60 steps" in p.stdout
    return out


def test_tiny_preset_trains_and_the_loss_falls(trained):
    log = read_log(trained / "log.jsonl")
    assert log[0]["event"] == "start" and log[0]["model"]["n_layers"] == 2 and log[0]["parameters"] > 0
    losses = train_losses(trained / "log.jsonl")
    assert sorted(losses) == list(range(1, 61))
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(56, 61)])
    assert first > 5.0 and last < first - 1.5, (first, last)
    valid = [j for j in log if j["event"] == "valid"]
    assert [j["step"] for j in valid] == [20, 40, 60]
    assert valid[-1]["bits_per_char"] < valid[0]["bits_per_char"]
    assert valid[-1]["bits_per_char"] == pytest.approx(valid[-1]["loss"] / np.log(2))
    assert log[-1]["event"] == "end" and log[-1]["reason"] == "steps" and log[-1]["step"] == 60
    assert (trained / "checkpoint.safetensors").is_file()


def test_a_run_killed_with_sigkill_resumes_bit_identically(corpus, tmp_path):
    steps = 120
    common = ["--preset", "tiny", "--data", corpus, "--steps", steps, "--log-every", 1, "--eval-every", 25,
              "--set", "train.eval_batches=2", "--quiet", "--threads", 1]
    run("train", *common, "--out", tmp_path / "a")

    b = tmp_path / "b"
    proc = subprocess.Popen([CLI, "train", *map(str, common), "--out", str(b), "--checkpoint-every", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = b / "log.jsonl", time.time() + 60
    while time.time() < deadline:  # kill between checkpoints, somewhere past step 37
        if log.exists() and any(j.get("step", 0) >= 37 and j["event"] == "train"
                                for j in read_log_partial(log)):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = json.loads(run("info", b / "checkpoint.safetensors", "--json").stdout)
    assert 0 < info["step"] < steps, "the run ended before it was killed"

    p = run("train", "--resume", b / "checkpoint.safetensors", "--quiet", "--threads", 2)
    assert f"trained {steps} steps" in p.stdout
    a_losses, b_losses = train_losses(tmp_path / "a" / "log.jsonl"), train_losses(log)
    assert sorted(b_losses) == list(range(1, steps + 1))
    assert a_losses == b_losses  # exact: the hex floats
    # The resumed log reads like the uninterrupted one (lines past the checkpoint were dropped).
    events = [(j["event"], j["step"]) for j in read_log(log) if j["event"] in ("valid", "end")]
    assert events == [(j["event"], j["step"]) for j in read_log(tmp_path / "a" / "log.jsonl")
                      if j["event"] in ("valid", "end")]
    # Same final weights: the same bits per character to the last digit.
    ev = [json.loads(run("eval", d / "checkpoint.safetensors", "--json", "--max-batches", 3).stdout)
          for d in (tmp_path / "a", b)]
    assert ev[0]["bits_per_char"] == ev[1]["bits_per_char"]


def read_log_partial(path):
    """The complete lines of a log being written."""
    out = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out


def test_eval_and_info(trained, corpus):
    ckpt = trained / "checkpoint.safetensors"
    p = run("eval", ckpt)  # the corpus recorded in the checkpoint
    assert p.stdout.startswith("valid bits/char ")
    j = json.loads(run("eval", ckpt, "--json", "--data", corpus, "--split", "test").stdout)
    assert j["split"] == "test" and j["batches"] == j["total_batches"]
    assert 0 < j["bits_per_char"] < 8 and j["bits_per_char"] == pytest.approx(j["loss"] / np.log(2))
    size = len(corpus.read_bytes())
    assert j["targets"] == size - int(size * 0.95) - 1  # every test character but the first
    part = json.loads(run("eval", ckpt, "--json", "--max-batches", 1).stdout)
    assert part["batches"] == 1

    info = run("info", ckpt).stdout
    assert "parameters" in info and "layer 0: flash" in info and "layer 1: flash" in info
    assert "step 60 of 60" in info
    ij = json.loads(run("info", ckpt, "--json").stdout)
    assert ij["model"]["d_model"] == 64 and ij["step"] == 60 and len(ij["layers"]) == 2
    assert ij["parameters"] == int(info.split("parameters")[1].split()[0].replace(",", ""))


def test_generate_is_reproducible_and_greedy_is_argmax(trained):
    ckpt = trained / "checkpoint.safetensors"
    args = ["generate", ckpt, "--prompt", "1 and", "--max-new-tokens", 40, "--no-echo"]
    a = run(*args, "--seed", 5, "--top-k", 20, "--top-p", 0.9).stdout
    assert a == run(*args, "--seed", 5, "--top-k", 20, "--top-p", 0.9).stdout
    assert a != run(*args, "--seed", 6, "--temperature", 1.5).stdout
    echoed = run("generate", ckpt, "--prompt", "1 and", "--max-new-tokens", 10, "--greedy").stdout
    greedy = run(*args, "--greedy").stdout
    assert echoed.startswith("1 and" + greedy[:10])
    # Greedy is the argmax of a full forward pass at every position (Python bindings).
    model, meta = ef.train.load_checkpoint(ckpt)
    assert meta["step"] == 60 and meta["model_config"]["n_layers"] == 2
    ids = list(b"1 and")
    for _ in range(40):
        logits = model(ef.tensor(np.array([ids], dtype=np.int64))).numpy()[0, -1]
        ids.append(int(np.argmax(logits)))
    assert greedy.rstrip("\n") == bytes(ids[5:]).decode("utf-8", "replace")
    assert ef.train.generate(model, "1 and", max_new_tokens=40, temperature=0) == bytes(ids[5:]).decode()
    # Past the context (64): slides by default, stops with --on-full stop.
    # (greedy, so that the text is the corpus's ASCII and characters count bytes)
    long = run("generate", ckpt, "--prompt", "1 and", "--max-new-tokens", 100, "--no-echo", "--greedy").stdout
    assert len(long.rstrip("\n").encode()) == 100
    stop = run("generate", ckpt, "--prompt", "1 and", "--max-new-tokens", 100, "--no-echo", "--greedy",
               "--on-full", "stop").stdout
    assert len(stop.rstrip("\n").encode()) == 64 - 5 + 1


def test_python_train_module(trained, corpus, tmp_path):
    model, meta = ef.train.load_checkpoint(trained / "checkpoint.safetensors")
    c = ef.data.Corpus.from_path(str(corpus))
    r = ef.train.evaluate(model, c, "test")
    cli = json.loads(run("eval", trained / "checkpoint.safetensors", "--json", "--split", "test").stdout)
    assert r["bits_per_char"] == pytest.approx(cli["bits_per_char"], rel=1e-12)
    assert ef.train.evaluate(model, c, "valid", max_batches=1)["batches"] == 1
    p = ef.train.sampling_distribution(ef.tensor(np.array([0.0, 1.0, 2.0], dtype=np.float32)), top_k=2)
    assert p[0] == 0 and p[1] + p[2] == pytest.approx(1)
    a = ef.train.generate(model, "1 the", max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    assert a == ef.train.generate(model, "1 the", max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    path = tmp_path / "copy.safetensors"
    ef.train.save_checkpoint(str(path), model, step=7, train_config={"steps": 7})
    again, meta2 = ef.train.load_checkpoint(path)
    assert meta2["step"] == 7 and meta2["train_config"] == {"steps": 7}
    assert ef.train.evaluate(again, c, "test")["bits_per_char"] == r["bits_per_char"]
    with pytest.raises(ValueError):
        ef.train.generate(model, "x", top_p=0)
    model_cfg, train_cfg = ef.train.read_run_config(ef.train.preset_path("small"))
    assert model_cfg["d_model"] == 256 and train_cfg["batch_size"] > 0


def eval_json(ckpt, *args):
    p = run("eval", ckpt, "--json", "--max-batches", 4, *args)
    return json.loads(p.stdout)["bits_per_char"], p.stderr


def test_eval_with_model_overrides_transfers_the_weights(trained):
    ckpt = trained / "checkpoint.safetensors"
    flash, _ = eval_json(ckpt)
    # full and flash are the same math: the same bits/char, and no fresh buffers (nothing was left out).
    full, err = eval_json(ckpt, "--set", "model.attention.kind=full")
    assert abs(full - flash) < 1e-4, (full, flash)
    assert "kept fresh buffers" not in err
    whole, _ = eval_json(ckpt, "--set", 'model.attention={"kind": "full", "options": {}}')
    assert abs(whole - flash) < 1e-4
    # An override that changes the math changes the result (the overrides do reach the model): one
    # head of 64 instead of two of 32, the same weights.
    one_head, _ = eval_json(ckpt, "--set", "model.n_heads=1")
    assert abs(one_head - flash) > 1e-3, (one_head, flash)


def fresh_buffer_names(stderr):
    notice = [line for line in stderr.splitlines() if line.startswith("init: kept fresh buffers: ")]
    assert len(notice) == 1, stderr
    return notice[0][len("init: kept fresh buffers: "):].split(", ")


@pytest.mark.skipif("performer" not in ef.models.mechanism_names(), reason="no performer mechanism in this build")
def test_a_softmax_checkpoint_with_performer_attention(trained, tmp_path, rng):
    ckpt = trained / "checkpoint.safetensors"
    flash, _ = eval_json(ckpt)
    bits, err = eval_json(ckpt, "--set", 'model.attention={"kind": "performer", "options": {"m": 256}}')
    names = fresh_buffer_names(err)
    assert "blocks.0.attn.omega" in names and "blocks.1.attn.omega" in names, names
    assert np.isfinite(bits) and abs(bits - flash) < 0.5, (bits, flash)  # FAVOR+ estimates the softmax

    # Fine-tuning: the first loss is the converted model's, close to the source's final loss.
    source = train_losses(trained / "log.jsonl")
    final = np.mean([source[s] for s in range(56, 61)])
    out = tmp_path / "performer"
    p = run("train", "--init", ckpt, "--steps", 3, "--log-every", 1, "--seed", int(rng.integers(0, 2**31)),
            "--out", out, "--quiet", "--set", "model.attention.kind=performer")
    assert "blocks.1.attn.omega" in fresh_buffer_names(p.stderr)
    assert abs(train_losses(out / "log.jsonl")[1] - final) < 0.5
    # The fine-tuned checkpoint holds random features: they must fit (another m is another omega) ...
    assert_error(["eval", out / "checkpoint.safetensors", "--set", "model.attention.options.m=7"],
                 "'blocks.0.attn.omega'", "[7, ")
    # ... and a model without them cannot take them.
    assert_error(["eval", out / "checkpoint.safetensors", "--set", "model.attention.kind=flash"],
                 "not in the model", "blocks.0.attn.omega")
    # Without overrides, no notice: the checkpoint has every buffer.
    assert "kept fresh buffers" not in run("eval", out / "checkpoint.safetensors", "--max-batches", 1).stderr


def test_train_init_starts_a_new_run_from_the_weights(trained, corpus, tmp_path, rng):
    ckpt = trained / "checkpoint.safetensors"
    source = train_losses(trained / "log.jsonl")
    final = np.mean([source[s] for s in range(56, 61)])
    seed = int(rng.integers(0, 2**31))
    out = tmp_path / "init"
    p = run("train", "--init", ckpt, "--steps", 5, "--log-every", 1, "--seed", seed, "--out", out, "--quiet",
            "--set", "model.attention.kind=full")
    assert "trained 5 steps" in p.stdout and f"initialised from {ckpt} (step 60)" in p.stderr
    log = read_log(out / "log.jsonl")
    assert log[0]["event"] == "start" and log[0]["step"] == 0
    assert log[0]["model"]["attention"]["kind"] == "full" and log[0]["model"]["d_model"] == 64
    assert log[0]["train"]["lr"] == 0.003 and log[0]["train"]["seed"] == seed  # the checkpoint's settings
    losses = train_losses(out / "log.jsonl")
    assert sorted(losses) == [1, 2, 3, 4, 5]
    # The first loss (before any update) is the trained model's, not a fresh model's (about 5.5).
    assert abs(losses[1] - final) < 0.4, (losses[1], final)
    fresh = tmp_path / "fresh"
    run("train", "--preset", "tiny", "--data", corpus, "--steps", 1, "--seed", seed, "--out", fresh, "--quiet")
    assert train_losses(fresh / "log.jsonl")[1] > final + 1.5
    info = json.loads(run("info", out / "checkpoint.safetensors", "--json").stdout)
    assert info["step"] == 5 and info["model"]["attention"]["kind"] == "full"

    # With --config: its train settings, the checkpoint's model (the file's model is not used).
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": {"d_model": 32, "n_heads": 2, "max_len": 32},
                                  "train": {"steps": 2, "lr": 1e-4, "batch_size": 4, "seed": seed}}))
    run("train", "--init", ckpt, "--config", config, "--data", corpus, "--out", tmp_path / "cfg", "--quiet")
    log = read_log(tmp_path / "cfg" / "log.jsonl")
    assert log[0]["model"]["d_model"] == 64 and log[0]["model"]["max_len"] == 64
    assert log[0]["train"]["lr"] == 1e-4 and log[0]["train"]["batch_size"] == 4
    assert abs(float.fromhex(log[1]["loss_hex"]) - final) < 0.5

    # Without --out: next to the checkpoint's folder, never over it.
    run("train", "--init", ckpt, "--steps", 1, "--quiet")
    default = trained.parent / (trained.name + "-init")
    assert (default / "checkpoint.safetensors").is_file()


def test_help_for_every_command():
    for cmd in ("train", "eval", "generate", "info"):
        p = run(cmd, "--help")
        assert p.stdout.startswith(f"usage: eformer {cmd}")
    assert "generate" in run("--help").stdout


def test_mechanism_listings_come_from_the_registry():
    names = [e["name"] for e in ef.mechanisms()]
    listing = run("info").stdout
    assert all(f"  {n} " in listing for n in names), listing
    assert all(f"  {n} " in run("train", "--help").stdout for n in names)
    listed = json.loads(run("info", "--mechanisms", "--json").stdout)
    assert [e["name"] for e in listed] == names
    assert listed[0]["options"] == [{k: o[k] for k in ("name", "type", "default", "help")}
                                    for o in ef.mechanisms()[0]["options"]]
    # docs/MECHANISMS.md carries the table the registry prints.
    docs = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "MECHANISMS.md").read_text()
    table = docs.split("<!-- registry table -->\n")[1].split("<!-- end registry table -->")[0]
    assert table == run("info", "--mechanisms", "--markdown").stdout, \
        "docs/MECHANISMS.md is out of date: paste `eformer info --mechanisms --markdown` between its markers"


def assert_error(args, *fragments):
    p = run(*args, check=False)
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    lines = p.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("eformer: error: "), (args, p.stderr)
    for f in fragments:
        assert f in lines[0], (args, lines[0], f)
    return lines[0]


def test_bad_flags_configs_and_files_are_one_line_errors(trained, corpus, tmp_path):
    ckpt = trained / "checkpoint.safetensors"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown_key = tmp_path / "unknown.json"
    unknown_key.write_text(json.dumps({"model": {"d_model": 64, "n_layerz": 2}}))
    bad_train = tmp_path / "bad_train.json"
    bad_train.write_text(json.dumps({"train": {"steps": 1, "lr": "fast"}}))
    no_length = tmp_path / "no_length.json"
    no_length.write_text(json.dumps({"model": {"d_model": 32, "n_heads": 2, "max_len": 32}}))
    not_object = tmp_path / "array.json"
    not_object.write_text("[1, 2]")
    train_not_object = tmp_path / "train_number.json"
    train_not_object.write_text(json.dumps({"train": 5}))
    tiny = ["--preset", "tiny", "--data", corpus, "--out", tmp_path / "o"]
    cases = [
        (["nonsense"], "unknown command"),
        (["train"], "--preset, --config or --resume"),
        (["train", "--preset", "nope", "--steps", 1], "unknown preset 'nope'", "tiny"),
        (["train", *tiny, "--steps", "x"], "--steps expects an integer"),
        (["train", *tiny, "--steps", 0], "--steps"),
        (["train", *tiny, "--minutes", -1], "--minutes"),
        (["train", *tiny, "--bogus", 1], "unknown option '--bogus'"),
        (["train", *tiny, "--steps"], "--steps needs a value"),
        (["train", *tiny, "--steps", 1, "--set", "lr=-1"], "'lr'"),
        (["train", *tiny, "--steps", 1, "--set", "n_layerz=3"], "n_layerz"),
        (["train", *tiny, "--steps", 1, "--set", "noequals"], "key=value"),
        (["train", *tiny, "--steps", 1, "--threads", 0], "--threads"),
        (["train", *tiny, "--resume", ckpt], "exactly one"),
        (["train", "--config", bad_json, "--steps", 1], "not valid JSON"),
        (["train", "--config", unknown_key, "--steps", 1], "n_layerz"),
        (["train", "--config", bad_train], "'lr'"),
        (["train", "--config", no_length, "--data", corpus], "--steps"),
        (["train", "--config", tmp_path / "absent.json"], "absent.json"),
        (["train", "--config", not_object, "--steps", 1], "JSON object"),
        (["train", "--config", train_not_object, "--steps", 1], "JSON object"),
        (["train", "--preset", "tiny", "--data", tmp_path / "absent.txt", "--steps", 1], "absent.txt"),
        (["train", "--resume", ckpt, "--set", "d_model=32"], "resumed"),
        (["train", "--resume", ckpt, "--seed", 3], "--seed"),
        (["eval"], "missing the checkpoint"),
        (["eval", ckpt, "--split", "nope"], "nope"),
        (["eval", ckpt, "--max-batches", -1], "--max-batches"),
        (["eval", tmp_path / "absent.safetensors"], "absent.safetensors"),
        (["generate", ckpt, "--top-p", 2], "top_p"),
        (["generate", ckpt, "--temperature", -1], "temperature"),
        (["generate", ckpt, "--top-k", "many"], "--top-k"),
        (["generate", ckpt, "--on-full", "wrap"], "--on-full"),
        (["train", "--init", ckpt, "--resume", ckpt], "--init and --resume"),
        (["train", "--init", ckpt, "--preset", "tiny", "--config", bad_json], "exactly one"),
        (["train", "--init", ckpt, "--out", trained], "would overwrite the --init checkpoint"),
        (["train", "--init", ckpt, "--steps", 1, "--out", tmp_path / "x", "--set", "model.n_layers=1"],
         "does not fit", "blocks.1.", "not in the model"),
        (["train", "--init", ckpt, "--steps", 1, "--out", tmp_path / "x", "--set", "model.d_model=32"],
         "does not fit", "in the checkpoint, the model expects"),
        (["train", "--init", tmp_path / "absent.safetensors", "--steps", 1], "absent.safetensors"),
        (["eval", ckpt, "--set", "train.lr=1"], "model.* keys only", "train.lr"),
        (["eval", ckpt, "--set", "lr=1"], "model.* keys only"),
        (["eval", ckpt, "--set", "model.n_layers=3"], "does not fit", "blocks.2.", "not in the checkpoint"),
        (["eval", ckpt, "--set", "model.attention.kind=nope"], "nope"),
        (["eval", ckpt, "--set", "model.attention"], "key=value"),
        (["info", "--mechanisms", ckpt], "no checkpoint"),
        (["info", ckpt, "--markdown"], "--markdown"),
        (["eval", ckpt, "--set", "model.attention_dropout=0.1", "--set", "model.attention.kind=performer"],
         "layer 0: attention 'performer' has no attention probabilities to drop", "full, flash"),
        (["train", "--preset", "tiny", "--steps", "1", "--set", "model.block=sometimes"], "block", "recompute"),
        (["info", ckpt, "--verbose"], "unknown option"),
    ]
    for args, *fragments in cases:
        assert_error(args, *fragments)
    assert not (tmp_path / "x").exists()  # a transfer that does not fit fails before anything is written


def test_corrupt_and_foreign_checkpoints(trained, tmp_path):
    data = (trained / "checkpoint.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 5)
    plain = tmp_path / "plain.safetensors"
    t = ef.tensor(np.zeros((2, 2), dtype=np.float32))
    ef.save_safetensors(str(plain), {"w": t}) if hasattr(ef, "save_safetensors") else ef.io.save_safetensors(
        str(plain), {"w": t})
    for cmd in ("info", "eval", "generate"):
        msg = assert_error([cmd, truncated], "truncated.safetensors")
        assert "checkpoint" in msg
        assert_error([cmd, garbage], "garbage.safetensors")
        assert_error([cmd, plain], "not an eformer checkpoint")
    assert_error(["train", "--resume", truncated], "truncated.safetensors")
    with pytest.raises(OSError, match="truncated.safetensors"):
        ef.train.load_checkpoint(truncated)
