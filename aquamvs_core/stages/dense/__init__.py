"""Dense learned matching (RoMa) turned into depth: the model, warp → pair depth, per-camera aggregation."""
