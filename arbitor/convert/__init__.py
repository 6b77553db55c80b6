"""Bring your own model: ``ternarize`` a PyTorch / transformers model in place from its float weights, train
it with integer state, ``export`` it as a float model anyone loads (or as arbitor's packed state)."""
from .export import FORMATS, export, load_packed
from .formats import ExportReport, logit_drift
from .ternarize import ConversionReport, LayerReport, group_size_for, ternarize

__all__ = ["ternarize", "export", "load_packed", "ConversionReport", "LayerReport", "group_size_for", "FORMATS",
           "ExportReport", "logit_drift"]
