"""Stage-level aggregates: rollups maintained by the stitcher, and the read API over them."""
