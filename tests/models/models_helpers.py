"""Constants shared by the r2m.models tests."""

# width 64 ≠ embed_dim 48, so pooled (64-d) and projected (48-d) features are distinguishable
TINY_CFG = {"embed_dim": 48, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}}
TINY_TEXT_CFG = {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
