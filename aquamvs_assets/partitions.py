"""Partitions: survey frames (dynamic), directed camera pairs (static per rig), and their product."""

from __future__ import annotations

import dagster as dg

from aquamvs_core.stages.pairs import CameraPair

FRAMES_PARTITION_NAME = "frames"

#: Survey frames, keyed ``f000123`` (see :func:`aquamvs_core.survey.keys.frame_key`). Frames arrive over
#: time; the ``new_frames_sensor`` and the CLI add them.
frame_partitions = dg.DynamicPartitionsDefinition(name=FRAMES_PARTITION_NAME)


def camera_pair_partitions(pairs: list[CameraPair]) -> dg.StaticPartitionsDefinition:
    """Directed camera pairs of the rig, keyed ``"<ref>-<src>"``."""
    return dg.StaticPartitionsDefinition([p.key for p in pairs])


def frame_pair_partitions(pairs: dg.StaticPartitionsDefinition) -> dg.MultiPartitionsDefinition:
    """Frame × pair, for per-pair depth assets. Dagster sorts dimensions by name, so keys read
    ``"<frame>|<pair>"`` (e.g. ``"f000001|cam0-cam1"``)."""
    return dg.MultiPartitionsDefinition({"frame": frame_partitions, "pair": pairs})
