"""The survey's Zarr store: layout, the one commit protocol, and :class:`SurveyStore`.

* :mod:`.layout` — what lives where, the layout version, opening a local or fsspec root;
* :mod:`.commit` — the commit protocol every group is written under, and the JSON check of attrs;
* :mod:`.survey_store` — :class:`SurveyStore`, the reader and writer the pipeline steps use.
"""

from aquamvs_core.store.layout import (
    FrameNotFoundError,
    IncompleteFrameError,
    StoreError,
    StoreKeyError,
    open_zarr_store,
)
from aquamvs_core.store.survey_store import SurveyStore

__all__ = [
    "FrameNotFoundError",
    "IncompleteFrameError",
    "StoreError",
    "StoreKeyError",
    "SurveyStore",
    "open_zarr_store",
]
