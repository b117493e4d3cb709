"""Label strings of DeepfakeBench / DF40 JSON indexes → integer labels (0 real, 1 fake).

Every video entry of a DeepfakeBench-format JSON carries a ``label`` *string*; DeepfakeBench maps it
through ``label_dict`` in its YAML configs. :data:`DEFAULT_LABEL_MAP` holds the standard strings of
DeepfakeBench and DF40; :class:`LabelMapper` adds user entries on top and applies a documented
suffix fallback:

* exact match in the map (user entries override defaults), then a case-insensitive match;
* otherwise a string ending in ``_real`` / ``-real`` (any case) → 0, ``_fake`` / ``-fake`` → 1;
* otherwise :class:`UnknownLabelError` naming the JSON file and the string.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "DEFAULT_LABEL_MAP",
    "DF40_METHODS",
    "UnknownLabelError",
    "LabelMapper",
    "suffix_label",
]

# DeepfakeBench ``label_dict`` strings (train_config.yaml / test_config.yaml).
_DEEPFAKEBENCH: dict[str, int] = {
    "FF-real": 0, "FF-DF": 1, "FF-F2F": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1,
    "FF-SH": 1, "DFD_real": 0, "DFD_fake": 1,
    "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Real": 0, "DFDC_Fake": 1,
    "DF_real": 0, "DF_fake": 1, "UADFV_Real": 0, "UADFV_Fake": 1,
    "roop_Real": 0, "roop_Fake": 1,
}

#: DF40 method / set names (JSON stems and ``<name>_Real`` / ``<name>_Fake`` label prefixes).
DF40_METHODS: dict[str, tuple[str, ...]] = {
    "fs": ("fsgan", "faceswap", "simswap", "inswap", "blendface", "uniface", "mobileswap", "e4s",
           "facedancer", "deepfacelab"),
    "fr": ("fomm", "facevid2vid", "wav2lip", "MRAA", "one_shot_free", "pirender", "tpsm", "lia",
           "danet", "sadtalker", "mcnet", "hyperreenact", "heygen"),
    "efs": ("VQGAN", "StyleGAN2", "StyleGAN3", "StyleGANXL", "sd2.1", "ddim", "rddm", "pixart",
            "PixArt", "DiT", "SiT", "MidJourney", "whichisreal", "whichfaceisreal"),
    "fe": ("CollabDiff", "e4e", "stargan", "starganv2", "styleclip"),
    "aggregate": ("FSAll", "FRAll", "EFSAll", "FEAll", "DF40_all", "DF40"),
}

_DF40: dict[str, int] = {
    f"{name}{suffix}": value
    for names in DF40_METHODS.values()
    for name in names
    for suffix, value in (("_Real", 0), ("_Fake", 1))
}

#: Standard label strings of DeepfakeBench and DF40 → 0 (real) / 1 (fake).
DEFAULT_LABEL_MAP: dict[str, int] = {**_DEEPFAKEBENCH, **_DF40}

_REAL_SUFFIXES = ("_real", "-real")
_FAKE_SUFFIXES = ("_fake", "-fake")


class UnknownLabelError(ValueError):
    """A label string that neither the map nor the suffix fallback knows."""


def suffix_label(label: str) -> int | None:
    """The documented fallback: ``*_real``/``*-real`` → 0, ``*_fake``/``*-fake`` → 1 (any case);
    ``None`` when neither suffix matches."""
    low = label.lower()
    if low.endswith(_REAL_SUFFIXES):
        return 0
    if low.endswith(_FAKE_SUFFIXES):
        return 1
    return None


def _check_value(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise ValueError(f"label_map[{key!r}] = {value!r}: label values must be 0 (real) or 1 (fake)")
    return int(value)


class LabelMapper:
    """Maps label strings to 0/1: ``extra`` entries override :data:`DEFAULT_LABEL_MAP`.

    ``mapper(label, source="FSAll_ff.json")`` returns the integer or raises
    :class:`UnknownLabelError` naming ``source`` and the string.
    """

    def __init__(self, extra: Mapping[str, int] | None = None, *, use_defaults: bool = True,
                 use_suffix_fallback: bool = True) -> None:
        table: dict[str, int] = dict(DEFAULT_LABEL_MAP) if use_defaults else {}
        for key, value in (extra or {}).items():
            table[str(key)] = _check_value(str(key), value)
        self.table = table
        self.use_suffix_fallback = use_suffix_fallback
        self._lower = {k.lower(): v for k, v in table.items()}
        # user entries win over defaults also for the case-insensitive lookup
        for key, value in (extra or {}).items():
            self._lower[str(key).lower()] = int(value)
        self._cache: dict[str, int] = {}

    def lookup(self, label: str) -> int | None:
        """0/1 for a known label string, ``None`` when unknown (no error)."""
        if label in self._cache:
            return self._cache[label]
        value = self.table.get(label)
        if value is None:
            value = self._lower.get(label.lower())
        if value is None and self.use_suffix_fallback:
            value = suffix_label(label)
        if value is not None:
            self._cache[label] = value
        return value

    def __call__(self, label: object, source: str = "<unknown JSON>") -> int:
        if not isinstance(label, str):
            raise UnknownLabelError(f"{source}: label must be a string, got {label!r}")
        value = self.lookup(label)
        if value is None:
            raise UnknownLabelError(
                f"{source}: unknown label string {label!r}. Add it to the data config's "
                f"label_map (e.g. label_map: {{{label}: 1}}) or rename it with a _Real/_Fake suffix."
            )
        return value
