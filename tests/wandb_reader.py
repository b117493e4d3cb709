"""Read W&B offline run files (``run-<id>.wandb``) back with wandb's own protobuf records.

The file is wandb's transaction log: a 7-byte header (``:W&B``, magic, version) then records in
LevelDB-log framing (32 KiB blocks; each chunk: crc32, length, type FULL/FIRST/MIDDLE/LAST),
every record a ``wandb.proto.wandb_internal_pb2.Record``. (wandb 0.31 moved its Python
``DataStore`` reader into wandb-core, so the framing is read here.)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7


def _chunks(data: bytes) -> list[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, out, buf = _HEADER, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - (pos % _BLOCK)
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class RunRecord:
    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row if not k.startswith("_")}


def records(path: str | Path) -> list:
    """Every ``wandb.proto.wandb_internal_pb2.Record`` of one offline ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    return [pb.Record.FromString(chunk) for chunk in _chunks(Path(path).read_bytes())]


def read_run(path: str | Path) -> RunRecord:
    rec = RunRecord(Path(path))
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            rec.run_id, rec.name, rec.group, rec.job_type = r.run.run_id, r.run.display_name, r.run.run_group, r.run.job_type
            rec.config.update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            rec.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            rec.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            rec.summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "exit":
            rec.exit_code = r.exit.exit_code
    return rec


def read_runs(root: str | Path) -> list[RunRecord]:
    """Every offline run below ``root``, sorted by start time (folder name)."""
    files = sorted(Path(root).rglob("run-*.wandb"), key=lambda p: p.parent.name)
    return [read_run(p) for p in files]
