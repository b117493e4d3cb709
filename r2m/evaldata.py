"""The right data for evaluation, checked before any merge is computed.

- :func:`resolve_data_config`: by default a merge is evaluated on the data its specialists were
  trained on (their recorded ``data_config``; files written before that key: ``config.data``),
  with the user's overrides on top (``+data.<key>=...``: a ``data`` mapping without ``_target_``).
  An explicit data config (``data=<group>``: a mapping with ``_target_``) replaces it. Specialists
  trained on different data configs are refused unless ``allow_mixed=True``; specialists that
  record no data config need an explicit one (never a silent default such as the built-in
  benchmark).
- :func:`preflight`: the data module is prepared and set up for every stage that will run
  (JSONs readable, frames present) before the first merge.
- :func:`check_carve`: the validation set merges are chosen on must be the carve the specialists
  were trained with (same scheme / seed / fraction / identity rule, and each specialist's own
  validation set recomputed bit-identically via ``carve_record()``), and none of its identities
  may be a training identity of any specialist (``split_identities()``). Refused otherwise,
  naming the file and the key that differ (e.g. a different ``data.val_fraction``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from r2m.utils import to_plain

log = logging.getLogger(__name__)

__all__ = ["recorded_data_config", "resolve_data_config", "instantiate_data", "preflight", "check_carve",
           "RUNTIME_KEYS", "CARVE_KEYS"]

#: data-config keys that change how data is loaded, not which data (ignored when comparing)
RUNTIME_KEYS = frozenset({"family", "batch_size", "eval_batch_size", "num_workers", "pin_memory",
                          "persistent_workers", "exist_check_workers", "augment", "prefetch_factor"})
#: data-config keys that define the validation carve
CARVE_KEYS = ("val_fraction", "seed", "split_seed", "identity_rule", "identity_rules", "identity_pattern")
#: carve-record keys that must be equal between the recorded and the recomputed carve
_CARVE_RECORD_KEYS = ("scheme", "seed", "val_fraction", "identity_rule")


def recorded_data_config(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resolved data config a file was trained with (``data_config``, else ``config.data``)."""
    cfg = meta.get("data_config")
    if not isinstance(cfg, Mapping):
        config = meta.get("config")
        cfg = config.get("data") if isinstance(config, Mapping) else None
    return dict(cfg) if isinstance(cfg, Mapping) else None


def _comparable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"data.{k}: {json.dumps(a.get(k), default=str)[:80]} vs {json.dumps(b.get(k), default=str)[:80]}"
            for k in keys if a.get(k) != b.get(k)]


def resolve_data_config(files: Sequence[tuple[str, Mapping[str, Any]]], user: Mapping[str, Any] | None, *,
                        family: str | None = "joint", allow_mixed: bool = False) -> tuple[dict[str, Any], str]:
    """The evaluation data config and where it came from (``"specialists"`` or ``"user"``).

    ``files``: ``(path, metadata)`` of every model that will be evaluated (specialists, joint).
    ``user``: ``None``/empty → the specialists' data; a mapping with ``_target_`` → that config;
    without ``_target_`` → overrides on top of the specialists' data. ``family``: the data
    module's family for evaluation (``joint`` = validation videos of every family)."""
    user = dict(to_plain(user) or {})
    recorded = {str(p): recorded_data_config(m) for p, m in files}
    explicit = "_target_" in user
    if not explicit:
        missing = [p for p, c in recorded.items() if c is None]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: record no data config (written by an older r2m, or not by train.py): "
                "choose the evaluation data explicitly, e.g. data=df40 or data=fixture"
            )
        if not allow_mixed:
            items = list(recorded.items())
            ref_path, ref = items[0]
            for path, cfg in items[1:]:
                diff = _diff(_comparable(ref), _comparable(cfg))
                if diff:
                    raise ValueError(
                        f"specialists were trained on different data configs: {path} vs {ref_path}: "
                        + "; ".join(diff[:6])
                        + ". Evaluate on one explicitly (data=<config>) and set eval.allow_mixed_data=true"
                    )
        cfg = dict(next(iter(recorded.values())))
        source = "specialists"
        cfg.update(user)
    else:
        cfg = user
        source = "user"
        targets = {c.get("_target_") for c in recorded.values() if c}
        if targets and cfg.get("_target_") not in targets:
            log.warning("evaluation data %s differs from the specialists' training data %s (chosen explicitly)",
                        cfg.get("_target_"), sorted(map(str, targets)))
    if family is not None and "family" in cfg:
        cfg["family"] = family
    # carve parameters of the evaluation data must be those of the training data
    for path, rec in recorded.items():
        if not rec:
            continue
        diff = [f"data.{k} = {cfg.get(k)!r}, trained with {rec.get(k)!r}"
                for k in CARVE_KEYS if k in rec and k in cfg and cfg.get(k) != rec.get(k)]
        if diff:
            raise ValueError(
                f"the validation carve of the evaluation data differs from the one {path} was trained with: "
                + "; ".join(diff) + " (its validation set would overlap its training videos)"
            )
    return cfg, source


def instantiate_data(cfg: Mapping[str, Any], **overrides: Any) -> Any:
    """A data module from a config mapping (``_target_`` + arguments)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.create({**dict(cfg), **overrides})
    return instantiate(node, _convert_="all")


def preflight(datamodule: Any, *, validate: bool, test: bool) -> None:
    """Prepare and set up ``datamodule`` for the stages that will run, so that missing data,
    unreadable JSONs or missing frames fail before any merge."""
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if validate:
        datamodule.setup("fit")
    if test:
        datamodule.setup("test")


def _family_of(meta: Mapping[str, Any]) -> str | None:
    rec = recorded_data_config(meta) or {}
    if rec.get("family"):
        return str(rec["family"])
    fams = meta.get("families") or []
    return str(fams[0]) if len(fams) == 1 else ("joint" if fams else meta.get("task"))


def check_carve(datamodule: Any, data_cfg: Mapping[str, Any], files: Sequence[tuple[str, Mapping[str, Any]]],
                ) -> dict[str, Any]:
    """Check the validation carve of ``datamodule`` (already set up for ``fit``) against every
    file's recorded carve; returns a JSON-able report. Raises ``ValueError`` naming the file."""
    if not hasattr(datamodule, "carve_record") or not hasattr(datamodule, "split_identities"):
        log.warning("carve check skipped: %s has no carve_record()/split_identities()", type(datamodule).__name__)
        return {"status": "unchecked", "why": f"{type(datamodule).__name__} records no carve"}
    no_carve = [p for p, m in files if not isinstance(m.get("carve"), Mapping)]
    if no_carve:
        raise ValueError(
            f"{', '.join(no_carve)}: record no validation carve (trained by an older r2m?): the validation "
            "set merges are chosen on cannot be checked against their training videos. Retrain, or set "
            "eval.check_carve=false to merge anyway"
        )
    merged_carve = datamodule.carve_record()
    val_ids = set(datamodule.split_identities()["val"])
    report: dict[str, Any] = {"status": "checked", "carve": merged_carve, "files": {}}
    for path, meta in files:
        rec = dict(meta["carve"])
        diff = [f"{k}: recorded {rec.get(k)!r}, evaluation data {merged_carve.get(k)!r}"
                for k in _CARVE_RECORD_KEYS if rec.get(k) != merged_carve.get(k)]
        if diff:
            raise ValueError(f"{path}: the evaluation data's validation carve differs from the recorded one: "
                             + "; ".join(diff))
        family = _family_of(meta)
        own = instantiate_data(data_cfg, **({"family": family} if family and "family" in data_cfg else {}))
        own.setup("fit")
        recomputed = own.carve_record()
        diff = [f"{k}: recorded {rec.get(k)!r}, recomputed {recomputed.get(k)!r}"
                for k in (*_CARVE_RECORD_KEYS, "val_videos_sha256", "n_val_videos") if rec.get(k) != recomputed.get(k)]
        if diff:
            raise ValueError(
                f"{path}: its validation carve recomputed from the evaluation data (family {family!r}) differs "
                "from the one recorded at training: " + "; ".join(diff)
                + " (different data, data.val_fraction or seed?)"
            )
        overlap = sorted(val_ids & set(own.split_identities()["train"]))
        if overlap:
            raise ValueError(
                f"{path}: {len(overlap)} identities of the evaluation validation set are training identities of "
                f"this specialist (e.g. {overlap[:5]}): choosing merges on it would leak"
            )
        report["files"][path] = {"family": family, "val_videos_sha256": recomputed.get("val_videos_sha256")}
    return report
