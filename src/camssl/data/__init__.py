"""The data layer: image sources, decode-once caching, test carving and labeled/unlabeled splits.

>>> bundle = load_data(DataConfig(source="mini"))
>>> split = make_split(bundle.train.labels, len(bundle.train.classes), SplitConfig(n_labeled=250),
...                    bundle.fingerprint, class_names=bundle.train.classes)
"""

from camssl.data.download import OFFICIAL_MD5, OFFICIAL_URL, download_cifar10
from camssl.data.images import ImageSet
from camssl.data.sources import DataBundle, DataConfig, load_data
from camssl.data.splits import Split, SplitConfig, make_split

__all__ = [
    "OFFICIAL_MD5",
    "OFFICIAL_URL",
    "DataBundle",
    "DataConfig",
    "ImageSet",
    "Split",
    "SplitConfig",
    "download_cifar10",
    "load_data",
    "make_split",
]
