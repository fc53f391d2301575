"""The dataset layer: annotations + videos -> one set of tables on disk (docs/formats.md).

One module per dataset (`msvd`, `lsmdc`, `msrvtt`, `vatex`, `youtube2text_arctic`, `synthetic/`, `captions`,
`webdataset`), found by `registry()`; beside them, by job:
    catalog.py   the dataset protocol, `registry()`, `prepare(name, out=..., **options)`, `content_metrics`
    tables.py    captions.csv / videos.csv / vocab.json: write, read back, PTB tokenisation
    splits.py    split rules (MSVD's standard split, the seeded split by video) and the per-split counts
    options.py   the `vidcap prepare NAME` options: each module's own plus the shared ones
"""

from vidcap.datasets.catalog import PROTOCOL, content_metrics, dataset_module, get_module, prepare, registry
from vidcap.datasets.options import COMMON_OPTIONS, add_prepare_arguments, positive_int, prepare_parser
from vidcap.datasets.splits import (
    MSVD_NUM_CLIPS,
    MSVD_SPLIT_SIZES,
    byte_order,
    split_sizes,
    split_table,
    standard_split,
)
from vidcap.datasets.tables import (
    CAPTION_COLUMNS,
    SPLITS,
    VIDEO_COLUMNS,
    VIDEO_EXTENSIONS,
    VIDEO_SPLITS,
    clean_caption,
    list_videos,
    order_captions,
    read_captions,
    read_videos,
    tokenize_captions,
    write_tables,
    write_vocab,
)

__all__ = [
    "CAPTION_COLUMNS", "COMMON_OPTIONS", "MSVD_NUM_CLIPS", "MSVD_SPLIT_SIZES", "PROTOCOL", "SPLITS", "VIDEO_COLUMNS",
    "VIDEO_EXTENSIONS", "VIDEO_SPLITS", "add_prepare_arguments", "byte_order", "clean_caption", "content_metrics",
    "dataset_module", "get_module", "list_videos", "order_captions", "positive_int", "prepare", "prepare_parser",
    "read_captions", "read_videos", "registry", "split_sizes", "split_table", "standard_split", "tokenize_captions",
    "write_tables", "write_vocab",
]
