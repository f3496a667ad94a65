"""Partitions and names of one survey in the instance: its frames (dynamic partitions) and its asset
keys, both prefixed with the survey's name so that several rigs share one instance without
colliding.

Every asset of the pipeline is partitioned by frame alone: a frame's camera pairs are handled
inside its steps (see the README: a real rig has 48 directed pairs, and frame × pair partitions
would pass Dagster's advised ~100 000 partitions per asset at about 2 000 frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg


@dataclass(frozen=True)
class SurveyNamespace:
    """The names a survey's definitions use: asset keys ``[<survey>, <asset>]`` and the dynamic
    frame partitions ``<survey>__frames``, keyed ``f000123``
    (:func:`aquamvs_core.survey.keys.frame_key`)."""

    survey: str
    frames: dg.DynamicPartitionsDefinition = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", dg.DynamicPartitionsDefinition(name=f"{self.survey}__frames"))

    @property
    def prefix(self) -> list[str]:
        return [self.survey]

    def key(self, asset: str) -> dg.AssetKey:
        """The asset key of ``asset`` in this survey."""
        return dg.AssetKey([self.survey, asset])
