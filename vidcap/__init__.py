"""vidcap: video description with temporal soft attention (Yao et al., ICCV 2015).

The Python API, the same functions the command line runs (docs/api.md):

    import vidcap

    captioner = vidcap.load_captioner("run/checkpoints/last.ckpt")          # `vidcap caption`
    print(vidcap.caption_video("clip.mp4", captioner).caption)
    vidcap.run_extract("data/msvd", "feats/msvd",                          # `vidcap extract`
                       vidcap.ExtractOptions(global_name="efficientnet_lite0"))
    result = vidcap.evaluate("run/checkpoints/last.ckpt", "data/msvd", "feats/msvd")   # `vidcap evaluate`
    vidcap.score_captions({"v1": ["a man is cooking"]}, {"v1": "a man cooks"})          # `vidcap score`

The names load lazily, so `import vidcap` (and `vidcap --help`) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "load_captioner": "vidcap.caption",
    "caption_video": "vidcap.caption",
    "explain_result": "vidcap.caption",
    "Captioner": "vidcap.caption",
    "CaptionResult": "vidcap.caption",
    "DecodingOptions": "vidcap.model.decoding",
    "ExtractOptions": "vidcap.features.extract",
    "run_extract": "vidcap.features.extract",
    "evaluate": "vidcap.evaluation",
    "write_outputs": "vidcap.evaluation",
    "score_captions": "vidcap.text.metrics",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vidcap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
