"""A survey: its definition (YAML), its inputs (one video or image folder per camera, read as
synchronised frames) and the keys that name frames, partitions and products.

* :mod:`.keys` — frame keys (``f000123``), ``"<frame>|<pair>"`` partition keys, product names;
* :mod:`.spec` — :class:`SurveySpec` and :func:`load_survey_spec`;
* :mod:`.sources` — the :class:`FrameSource` protocol and :func:`open_source`;
  :mod:`.video` and :mod:`.image_folder` implement it, :mod:`.video_writer` writes videos;
* :mod:`.inputs` — :func:`discover_inputs` and the opened :class:`Survey`.
"""

from aquamvs_core.survey.inputs import Survey, discover_inputs
from aquamvs_core.survey.keys import (
    Product,
    frame_index,
    frame_key,
    frame_pair_key,
    product_path,
    split_frame_pair_key,
)
from aquamvs_core.survey.sources import FrameSource, FrameSourceError, open_source
from aquamvs_core.survey.spec import FrameSelection, SurveyError, SurveySpec, is_url, load_survey_spec

__all__ = [
    "FrameSelection",
    "FrameSource",
    "FrameSourceError",
    "Product",
    "Survey",
    "SurveyError",
    "SurveySpec",
    "discover_inputs",
    "frame_index",
    "frame_key",
    "frame_pair_key",
    "is_url",
    "load_survey_spec",
    "open_source",
    "product_path",
    "split_frame_pair_key",
]
