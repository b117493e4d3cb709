"""r2m.utils: atomic writes (umask, no half-written file, stale temporaries of killed writers),
full-length file hashes."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from r2m import utils
from r2m.utils import atomic_write, atomic_write_text, file_sha256, remove_stale_temps


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_write_respects_umask(tmp_path, umask, mask):
    umask(mask)
    path = atomic_write_text(tmp_path / f"out-{mask:o}.txt", "hello")
    assert path.read_text() == "hello"
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_atomic_write_error_leaves_nothing(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def failing(p: Path) -> None:
        p.write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_of_a_killed_writer_is_removed_by_the_next_run(tmp_path):
    """A process killed (SIGKILL) in the middle of an atomic write leaves its temporary file; the
    next process writing into that folder removes it, and leaves live writers' temps alone."""
    script = textwrap.dedent(f"""
        import time, sys
        from r2m.utils import atomic_write
        def slow(p):
            p.write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(tmp_path / "big.safetensors")!r}, slow)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(utils.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".r2m-tmp")]
        assert len(temps) == 1 and f".{proc.pid}." in temps[0].name
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert temps[0].exists() and not (tmp_path / "big.safetensors").exists()
    # a live process's temp (this one) and another host's temp are kept
    host = socket.gethostname().replace(".", "_")
    live = tmp_path / f".other.bin.{host}.{os.getpid()}.abcd.r2m-tmp"
    foreign = tmp_path / f".other.bin.elsewhere.{_dead_pid()}.abcd.r2m-tmp"
    live.write_bytes(b"")
    foreign.write_bytes(b"")
    utils._cleaned_dirs.clear()  # as in a fresh process
    atomic_write_text(tmp_path / "next.txt", "done")
    assert not temps[0].exists()
    assert live.exists() and foreign.exists()
    # recursive clean-up of a tree (e.g. a merge root)
    sub = tmp_path / "merged" / "r2m"
    sub.mkdir(parents=True)
    stale = sub / f".merged.safetensors.{host}.{_dead_pid()}.ffff.r2m-tmp"
    stale.write_bytes(b"")
    assert remove_stale_temps(tmp_path) == []
    assert remove_stale_temps(tmp_path, recursive=True) == [stale] and not stale.exists()


def test_file_sha256_is_full_length(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(5 << 20)  # more than one read chunk
    path.write_bytes(data)
    digest = file_sha256(path)
    assert len(digest) == 64 and digest == hashlib.sha256(data).hexdigest()


def test_atomic_writes_do_not_import_torch(tmp_path):
    """Preprocessing pool workers can use r2m.utils' atomic writes without importing torch."""
    code = (f"import sys; from r2m.utils import atomic_write_json; atomic_write_json({str(tmp_path / 'a.json')!r}, "
            "{'x': 1}); print('torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(Path(utils.__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and (tmp_path / "a.json").read_text().strip().startswith("{")
