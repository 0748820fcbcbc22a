"""AWQ, the algorithm (calibration, scale and clip search, folding, RTN baseline, layer-by-layer streaming).

Works on float modules through fake quantization and never touches packed storage. Module names and
scaling groups come from the family table (runtime/families.py). Status: not written yet (issue 3); no
command uses this package today.
"""
