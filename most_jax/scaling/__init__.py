"""Scaling-law studies: compute accounting, ladders, sweeps and power-law fits."""
