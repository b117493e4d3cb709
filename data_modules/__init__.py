"""DF40 / DeepfakeBench data, transforms, Lightning data modules and the built-in benchmark.

Modules (import what you need; this package imports nothing heavy on its own):

* ``labels``     label strings → 0/1 (DeepfakeBench + DF40 defaults, ``_Real``/``_Fake`` fallback)
* ``index``      JSON index reader, path prefix remap, natural sort, existence check, dedupe, report
* ``sampling``   frames per video (uniform / first)
* ``identities`` identities of videos (FF++ / Celeb-DF / user rules) and the leak-free validation carve
* ``image_io``   OpenCV image reading → RGB uint8, clear errors naming the file
* ``transforms`` albumentations 2.x DeepfakeBench training recipe and evaluation transform
* ``dataset``    frame table, torch Dataset and collate
* ``df40``       ``DF40DataModule`` (specialists, joint model, P1/P2/P3 test splits)
* ``doctor``     ``python -m data_modules.doctor``: per-method counts, missing frames, image checks, the carve
* ``fixtures``   a small synthetic DF40-format dataset (``python -m data_modules.fixtures OUT``)
* ``benchmark``  the built-in benchmark data module
"""
