"""Solvers: tensors in, frozen results out; they never see an ``nn.Module``.

Sub-packages (import them explicitly; nothing is imported here to keep ``import compactnn`` light):

* :mod:`compactnn.solvers.layerwise` -- convex layer-wise solvers (DDLR, Net-Trim).
* :mod:`compactnn.solvers.training` -- training-based ADMM / AULM engine.
"""
