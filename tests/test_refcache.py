"""Tests for the on-disk reference log-prob cache (mrpo.references.cache, .cache_entry)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import save as st_save

from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import CACHE_FORMAT_VERSION, RefCacheKey, _checksum, encode_entry
from mrpo.references.logps import RefLogps

KEY = RefCacheKey(
    model="weights-sha",
    tokenizer="tok-sha",
    chat_template="{{ messages }}",
    system_prompt=None,
    data="data-sha",
    max_length=64,
    max_prompt_length=32,
    truncation="keep_end",
    dtype="float32",
    numerics="torch 2.13.0+cpu; transformers 5.25.0; cpu",
)


def make_value(n: int = 5, offset: float = 0.0) -> RefLogps:
    idx = torch.arange(n, dtype=torch.int64) * 3 + 7  # gaps: 7, 10, 13, ...
    return RefLogps(
        index=idx,
        chosen=-(torch.arange(n, dtype=torch.float32) + 1.5 + offset),
        rejected=-(torch.arange(n, dtype=torch.float32) * 2 + 4.0 + offset),
        chosen_tokens=torch.arange(n, dtype=torch.int64) + 1,
        rejected_tokens=torch.arange(n, dtype=torch.int64) + 2,
    )


def assert_same(a: RefLogps, b: RefLogps) -> None:
    for name in ("index", "chosen", "rejected", "chosen_tokens", "rejected_tokens"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --- RefLogps ------------------------------------------------------------------------------


def test_select_by_row_index_with_gaps_and_any_order():
    v = make_value(5)  # index 7, 10, 13, 16, 19
    s = v.select(torch.tensor([16, 7, 19]))
    assert s.index.tolist() == [16, 7, 19]
    assert s.chosen.tolist() == [-4.5, -1.5, -5.5]
    assert s.rejected_tokens.tolist() == [5, 2, 6]
    # An unsorted stored index works the same.
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = RefLogps(**{k: t[perm] for k, t in v.tensors().items()})
    assert_same(shuffled.select([16, 7, 19]), s)
    assert shuffled.positions([16, 16, 10]).tolist() == [0, 0, 3]
    with pytest.raises(ValueError, match="duplicate"):
        v.select([7, 7])


def test_select_missing_row_names_it():
    with pytest.raises(ValueError, match=r"index \[8\]"):
        make_value(5).select([7, 8])
    empty = RefLogps(**{k: t[:0] for k, t in make_value(2).tensors().items()})
    with pytest.raises(ValueError, match=r"index \[0\]"):
        empty.positions([0])
    assert len(empty.select([])) == 0


def test_values_sum_and_mean_per_token():
    v = make_value(3)
    c, r = v.values(average=False)
    assert c.tolist() == [-1.5, -2.5, -3.5]
    c, r = v.values(average=True)
    assert c.tolist() == pytest.approx([-1.5 / 1, -2.5 / 2, -3.5 / 3])
    assert r.tolist() == pytest.approx([-4.0 / 2, -6.0 / 3, -8.0 / 4])
    assert c.dtype == torch.float32


@pytest.mark.parametrize(
    ("field", "bad", "msg"),
    [
        ("chosen", torch.zeros(5, dtype=torch.float64), "float32"),
        ("chosen", torch.zeros(4), "4 rows"),
        ("rejected", torch.zeros(5, 1), "1-D"),
        ("index", torch.tensor([1, 2, 3, 2, 5]), "duplicate"),
    ],
)
def test_reflogps_rejects_bad_tensors(field, bad, msg):
    parts = make_value(5).tensors()
    parts[field] = bad
    with pytest.raises(ValueError, match=msg):
        RefLogps(**parts)


# --- keys ----------------------------------------------------------------------------------


def test_key_digest_is_sha256_of_canonical_json():
    parts = KEY.parts()
    assert parts["format_version"] == CACHE_FORMAT_VERSION
    canon = json.dumps(dict(reversed(parts.items())), sort_keys=True, separators=(",", ":"))
    assert KEY.digest == hashlib.sha256(canon.encode()).hexdigest()
    assert RefCacheKey(**parts).digest == KEY.digest


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RefCacheKey)])
def test_key_digest_changes_with_every_part(name):
    old = getattr(KEY, name)
    new = "x" if old is None else old + ("x" if isinstance(old, str) else 1)
    changed = dataclasses.replace(KEY, **{name: new})
    assert changed.digest != KEY.digest
    assert dataclasses.replace(KEY, **{name: old}).digest == KEY.digest


def test_key_none_differs_from_empty_string():
    assert dataclasses.replace(KEY, system_prompt="").digest != KEY.digest


# --- storage -------------------------------------------------------------------------------


def test_roundtrip_and_metadata(tmp_path):
    cache = RefCache(tmp_path / "c")
    assert cache.get(KEY) is None
    path = cache.put(KEY, make_value(5), {"reference": "self"})
    assert path == tmp_path / "c" / f"{KEY.digest}.safetensors"
    assert_same(cache.get(KEY), make_value(5))
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    info = json.loads(header["__metadata__"]["info"])
    assert info["key"] == KEY.parts() and info["rows"] == 5
    assert info["meta"] == {"reference": "self"} and info["mrpo_version"]
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_get_or_compute_computes_once(tmp_path):
    cache = RefCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return make_value(4)

    v1, hit1 = cache.get_or_compute(KEY, compute)
    v2, hit2 = RefCache(tmp_path).get_or_compute(KEY, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert_same(v1, v2)
    other = dataclasses.replace(KEY, dtype="bfloat16")
    _, hit3 = cache.get_or_compute(other, compute)
    assert (hit3, len(calls)) == (False, 2)


def _corrupt_truncate(raw: bytes) -> bytes:
    return raw[: len(raw) - 7]


def _corrupt_flip_data(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[-3] ^= 0x01  # one bit of the last tensor's payload
    return bytes(b)


def _corrupt_flip_header(raw: bytes) -> bytes:
    b = bytearray(raw)
    pos = raw.index(b"weights-sha")
    b[pos] = ord("W")  # still valid JSON, different key text
    return bytes(b)


def _corrupt_wrong_shapes(raw: bytes) -> bytes:
    # A well-formed file with a correct checksum, but the shapes disagree with each other.
    good = encode_entry(KEY, make_value(5), None)
    header = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])
    tensors = make_value(5).tensors()
    tensors["rejected"] = tensors["rejected"][:4]
    info = header["__metadata__"]["info"]
    return st_save(tensors, {"info": info, "checksum": _checksum(info, tensors)})


def _other_key_file(raw: bytes) -> bytes:
    return encode_entry(dataclasses.replace(KEY, data="other"), make_value(5), None)


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_truncate,
        _corrupt_flip_data,
        _corrupt_flip_header,
        _corrupt_wrong_shapes,
        _other_key_file,
        lambda raw: b"",
        lambda raw: raw[:5],
    ],
)
def test_damaged_file_is_detected_and_recomputed(tmp_path, caplog, corrupt):
    cache = RefCache(tmp_path)
    path = cache.put(KEY, make_value(5))
    path.write_bytes(corrupt(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="mrpo.references.cache"):
        assert cache.get(KEY) is None
    assert "damaged reference cache file" in caplog.text
    value, hit = cache.get_or_compute(KEY, lambda: make_value(5, offset=1.0))
    assert not hit
    assert_same(value, make_value(5, offset=1.0))
    assert_same(cache.get(KEY), make_value(5, offset=1.0))


def test_failed_compute_stores_nothing_and_releases_the_lock(tmp_path):
    cache = RefCache(tmp_path, lock_timeout=1)

    def boom():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_compute(KEY, boom)
    assert cache.get(KEY) is None and not list(tmp_path.glob("*.safetensors"))
    value, hit = cache.get_or_compute(KEY, make_value)
    assert not hit and len(value) == 5


def test_compute_fn_must_return_reflogps(tmp_path):
    with pytest.raises(TypeError, match="RefLogps"):
        RefCache(tmp_path).get_or_compute(KEY, lambda: (1, 2))
    assert RefCache(tmp_path).get(KEY) is None


# --- processes -----------------------------------------------------------------------------

_PRELUDE = """
import json, os, sys, time
from pathlib import Path
import torch
from mrpo.atomic import atomic_write
from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import RefCacheKey, encode_entry
from mrpo.references.logps import RefLogps
key = RefCacheKey(**json.loads(sys.argv[1]))
work = Path(sys.argv[2])
cache = RefCache(work / "cache")

def value(n, offset):
    return RefLogps(
        index=torch.arange(n, dtype=torch.int64),
        chosen=-torch.arange(n, dtype=torch.float32) - offset,
        rejected=-2 * torch.arange(n, dtype=torch.float32) - offset,
        chosen_tokens=torch.ones(n, dtype=torch.int64),
        rejected_tokens=torch.ones(n, dtype=torch.int64),
    )

def wait_for(pred, timeout=60):
    end = time.time() + timeout
    while not pred():
        if time.time() > end:
            sys.exit("timed out waiting")
        time.sleep(0.02)
"""

_RACER = """
def compute():
    with open(work / "calls.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")
    # Finish only after both processes have started asking for the entry, so the second one
    # really finds it missing and has to wait on the lock.
    wait_for(lambda: len(list(work.glob("arrived-*"))) == 2)
    time.sleep(0.5)
    return value(1000, 0.25)

(work / f"arrived-{os.getpid()}").touch()
v, hit = cache.get_or_compute(key, compute)
result = {"hit": hit, "chosen": v.chosen.tolist()}
(work / f"result-{os.getpid()}.json").write_text(json.dumps(result))
"""

_SLOW_WRITER = """
data = encode_entry(key, value(5000, 9.0), None)

def chunks():
    yield data[: len(data) // 2]
    (work / "half-written").touch()
    time.sleep(120)
    yield data[len(data) // 2 :]

with cache.lock(key):
    atomic_write(cache.path(key), chunks())
"""

_LOCK_HOLDER = """
lock = cache.lock(key)
lock.acquire()
(work / "locked").touch()
time.sleep(120)
"""


def _spawn(tmp_path: Path, body: str) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_PRELUDE) + textwrap.dedent(body))
    args = [sys.executable, str(script), json.dumps(KEY.parts()), str(tmp_path)]
    return subprocess.Popen(args)


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"helper process exited with {proc.returncode}"
        assert time.time() < end, f"timed out waiting for {path}"
        time.sleep(0.02)


def test_two_processes_racing_compute_once(tmp_path):
    procs = [_spawn(tmp_path, _RACER), _spawn(tmp_path, _RACER)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 1
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("result-*.json"))]
    assert sorted(r["hit"] for r in results) == [False, True]
    assert results[0]["chosen"] == results[1]["chosen"]
    stored = RefCache(tmp_path / "cache").get(KEY)
    assert stored is not None and stored.chosen.tolist() == results[0]["chosen"]
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_writer_killed_mid_write_leaves_nothing_trusted(tmp_path):
    cache = RefCache(tmp_path / "cache")
    proc = _spawn(tmp_path, _SLOW_WRITER)
    try:
        _wait_for_file(tmp_path / "half-written", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    temps = list(cache.root.glob(".*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    assert not cache.path(KEY).exists()
    assert cache.get(KEY) is None
    # The dead writer's lock is gone, so filling the entry neither blocks nor keeps the temp.
    value, hit = RefCache(cache.root, lock_timeout=10).get_or_compute(KEY, lambda: make_value(3))
    assert not hit and len(value) == 3
    assert not list(cache.root.glob(".*.tmp"))


def test_writer_killed_while_replacing_keeps_old_entry_and_prune_removes_temp(tmp_path):
    cache = RefCache(tmp_path / "cache")
    cache.put(KEY, make_value(4))
    proc = _spawn(tmp_path, _SLOW_WRITER)
    try:
        _wait_for_file(tmp_path / "half-written", proc)
        assert cache.prune_temp() == 0  # the live writer holds the lock: its temp is kept
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert_same(cache.get(KEY), make_value(4))
    assert cache.prune_temp() == 1
    assert not list(cache.root.glob(".*.tmp"))


def test_lock_of_killed_process_is_released(tmp_path):
    proc = _spawn(tmp_path, _LOCK_HOLDER)
    try:
        _wait_for_file(tmp_path / "locked", proc)
        lock_path = str(RefCache(tmp_path / "cache").path(KEY)) + ".lock"
        with pytest.raises(TimeoutError):
            FileLock(lock_path, timeout=0.2).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with FileLock(lock_path, timeout=5):
        pass
