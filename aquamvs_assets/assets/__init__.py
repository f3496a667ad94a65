"""Software-defined assets, one module per asset group, in data-flow order: :mod:`.ingestion`
(calibration, frames, pair geometry), :mod:`.sparse`, :mod:`.depth`, :mod:`.surface`,
:mod:`.benchmarks`, :mod:`.change` (heightfield, bed change, change summary). Each asset calls one
step of :mod:`aquamvs_core.steps` and holds no science.

(These modules do not use ``from __future__ import annotations``: Dagster reads the ``context``
annotation at definition time.)
"""
