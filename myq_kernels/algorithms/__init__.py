"""Accuracy algorithms: calibration statistics, SmoothQuant, Outlier Suppression+ shift, GPTQ,
layer-wise error analysis (LLM.int8() is a scheme: `quantize_model(model, "llm_int8")`)."""
from .calibration import ActStats, calibration_batches, collect_activation_stats, find_blocks
from .gptq import HessianAccumulator, gptq_quantize_model, gptq_quantize_weight, quantized_linear_from_gptq
from .layer_error import format_table, layer_errors, plot_layer_errors, schemes_from_errors
from .outlier_shift import apply_shift, shift_model
from .smoothquant import InputTransformLinear, NormWithBias, apply_smoothing, smooth_model, smoothquant

__all__ = [
    "ActStats", "calibration_batches", "collect_activation_stats", "find_blocks",
    "HessianAccumulator", "gptq_quantize_model", "gptq_quantize_weight", "quantized_linear_from_gptq",
    "format_table", "layer_errors", "plot_layer_errors", "schemes_from_errors",
    "apply_shift", "shift_model",
    "InputTransformLinear", "NormWithBias", "apply_smoothing", "smooth_model", "smoothquant",
]
