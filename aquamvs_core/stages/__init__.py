"""The stages of the reconstruction, pure functions on arrays and tensors with small dataclasses at
their edges, in data-flow order:

* :mod:`.ingest` — the pixel grid each camera's frames are stored on (canvas policy) and the
  resampling of raw frames onto it;
* :mod:`.view_selection` — which camera sees which bed point, at what triangulation angle, and the
  coverage guarantee;
* :mod:`.pairs` — stereo pair selection by that geometry and each pair's overlap through the water;
* :mod:`.sparse` — feature matching and refractive triangulation, per-camera depth ranges;
* :mod:`.depth_map` — the depth-map contract between the depth stages and their consumers;
* :mod:`.stereo` — the refractive plane sweep and the per-camera combination of pair depths;
* :mod:`.dense` — RoMa's dense warps turned into depth (the learned pathway);
* :mod:`.fusion` — multi-view consistency, merging and clean-up into one point cloud;
* :mod:`.mesh` — meshes of the fused cloud, colours from the views, file export;
* :mod:`.bed_grid`, :mod:`.heightfield` — the survey grid and each frame's bed on it;
* :mod:`.change` — the change between two heightfields, its level of detection and volumes.

No stage imports another stage's internals; what two stages share is a contract module
(:mod:`.depth_map`, :mod:`aquamvs_core.camera.sampling`).
"""
