"""Hugging Face transformers integration: `quant_method = "myq"`.

- `MyqConfig(scheme=..., group_size=..., symmetric=..., exclude=...)`, registered with
  `register_quantization_config("myq")`, and `MyqHfQuantizer` with `register_quantizer("myq")`.
- Saving: a model quantized with `myq_kernels.quantize_model` (or loaded through this
  quantizer) carries `config.quantization_config` (a MyqConfig whose `modules` lists every
  quantized layer with its scheme and group size) and `model.hf_quantizer`, so
  `model.save_pretrained(dir)` writes the int8 / packed int4 buffers to safetensors.
- Loading a saved checkpoint: `AutoModelForCausalLM.from_pretrained(dir)` (after
  `import myq_kernels`) builds QuantizedLinear skeletons from `modules` before the weights
  load, and the checkpoint fills their buffers: outputs match the saved model bit for bit.
- Calibration transforms that change the architecture (outlier shift: a bias on LlamaRMSNorm
  and on linears that had none; explicit SmoothQuant / shift input transforms) are recorded in
  `transforms` (see `myq_kernels.model.transform_layout`) and rebuilt on the stock model first.
- Quantize while loading: `from_pretrained(fp32_dir, quantization_config=MyqConfig(...))`
  loads the float weights, then quantizes with `quantize_model`.

Registration happens on `import myq_kernels` when transformers is (or later gets)
imported; see `myq_kernels/__init__.py`. Needs transformers >= MIN_TRANSFORMERS (the 5.x
HfQuantizer hooks).
"""
import importlib.metadata

MIN_TRANSFORMERS = (5, 18)
TESTED_TRANSFORMERS = "5.24"


def _version_tuple(text):
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def transformers_version():
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def transformers_supported() -> bool:
    version = transformers_version()
    return version is not None and _version_tuple(version) >= MIN_TRANSFORMERS


def require_transformers():
    version = transformers_version()
    need = ".".join(map(str, MIN_TRANSFORMERS))
    if version is None:
        raise ImportError(f"myq_kernels' Hugging Face integration needs transformers>={need}: "
                          f"pip install 'transformers>={need}'")
    if _version_tuple(version) < MIN_TRANSFORMERS:
        raise ImportError(
            f"myq_kernels' Hugging Face integration needs transformers>={need} (the 5.x HfQuantizer "
            f"API; tested with {TESTED_TRANSFORMERS}), but transformers {version} is installed: "
            f"pip install -U 'transformers>={need}'")


require_transformers()

import torch  # noqa: E402
# Import from the submodules, not `transformers.quantizers`: registration may run while
# that package is still being imported (see myq_kernels/__init__.py).
from transformers.quantizers.auto import (  # noqa: E402
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer  # noqa: E402
from transformers.utils.quantization_config import QuantizationConfigMixin  # noqa: E402

from .model import plan_quantization, quantize_model, quantized_layout, transform_layout  # noqa: E402
from .nn import DEFAULT_GROUP_SIZE, QuantizedLinear, check_scheme, check_threshold, linear_dims  # noqa: E402

QUANT_METHOD = "myq"


class MyqConfig(QuantizationConfigMixin):
    """Quantization config for `from_pretrained(..., quantization_config=MyqConfig(...))`.

    scheme      "w8a16" | "w8a8" | "w4a16" (myq_kernels.nn.SCHEMES)
    group_size  int4 group length (default 128; layers it does not divide take the largest
                even divisor below it, e.g. 96 for in_features=576)
    symmetric   int4 without zero points (default False: asymmetric)
    exclude     module names / fnmatch patterns left in float (default ["lm_head"])
    threshold   llm_int8: the outlier magnitude (default None: 6.0)
    modules     filled in when a model is quantized (model.quantized_layout): {layer name:
                {scheme, bias, group_size / symmetric (w4a16), threshold (llm_int8)}}; a saved
                checkpoint is rebuilt from it exactly
    transforms  filled in when a model was changed by calibration transforms (outlier shift,
                explicit smoothing): {module name: spec}, see myq_kernels.model.transform_layout
    """

    def __init__(self, scheme: str = "w8a16", group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = None,
                 exclude=("lm_head",), modules: dict = None, threshold: float = None, transforms: dict = None,
                 **kwargs):
        self.quant_method = QUANT_METHOD
        if scheme != "mixed":
            scheme = check_scheme(scheme).name
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size <= 0 or group_size % 2):
            raise ValueError(f"group_size must be a positive even int, got {group_size!r}")
        if isinstance(exclude, str):
            exclude = [exclude]
        self.scheme = scheme
        self.group_size = group_size
        self.symmetric = symmetric
        self.exclude = list(exclude or [])
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.modules = dict(modules) if modules else None
        if self.modules:
            for name, options in self.modules.items():
                if not isinstance(options, dict):
                    raise ValueError(f"modules[{name!r}] must be a dict of layer options, got {options!r}")
                check_scheme(options.get("scheme"))
        if transforms is not None and not isinstance(transforms, dict):
            raise ValueError(f"transforms must be a dict {{module name: spec}}, got {type(transforms).__name__}")
        for name, spec in (transforms or {}).items():
            if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
                raise ValueError(f"transforms[{name!r}] must be a dict with a 'type', got {spec!r}")
        self.transforms = dict(transforms) if transforms else None
        kwargs.pop("quant_method", None)
        self.myq_version = kwargs.pop("myq_version", None) or _myq_version()

    def layer_plan(self, model) -> dict:
        """{layer name: options} this config quantizes in `model` (the saved layout if present)."""
        if self.modules:
            return self.modules
        if self.transforms:
            return {}  # a transformed model with no quantized layer
        if self.scheme == "mixed":
            raise ValueError("a MyqConfig with scheme='mixed' needs its `modules` layout")
        plan, _ = plan_quantization(model, scheme=self.scheme, exclude=self.exclude,
                                    group_size=self.group_size, symmetric=self.symmetric,
                                    threshold=self.threshold)
        return plan


def _myq_version():
    from . import __version__
    return __version__


class MyqHfQuantizer(HfQuantizer):
    """Replaces nn.Linear / Conv1D layers by myq_kernels.nn.QuantizedLinear."""

    requires_calibration = False
    quantization_config: MyqConfig

    def __init__(self, quantization_config, **kwargs):
        if isinstance(quantization_config, dict):
            quantization_config = MyqConfig.from_dict(quantization_config)
        super().__init__(quantization_config, **kwargs)

    def validate_environment(self, *args, **kwargs):
        require_transformers()
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("myq quantized models cannot be offloaded to disk (device_map has 'disk')")

    def _process_model_before_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            return model  # quantize-while-loading: load float weights, quantize afterwards
        if self.quantization_config.transforms:
            # new biases, wrapped norms / linears: before the skeletons (names may run through them)
            from .algorithms.smoothquant import rebuild_transforms
            rebuild_transforms(model, self.quantization_config.transforms)
        plan = self.quantization_config.layer_plan(model)
        for name, options in plan.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"the checkpoint's quantization_config names layer {name!r}, "
                                 f"which this model does not have") from None
            in_features, out_features, weight = linear_dims(module)
            bias = options.get("bias")  # recorded since layers may gain one (outlier shift)
            if bias is None:  # checkpoints written before: the stock layer's
                bias = getattr(module, "bias", None) is not None
            q = QuantizedLinear(in_features, out_features, bias=bool(bias), scheme=options["scheme"],
                                group_size=options.get("group_size"), symmetric=options.get("symmetric"),
                                threshold=options.get("threshold"), device=weight.device, dtype=weight.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            config = self.quantization_config
            quantize_model(model, scheme=config.scheme, exclude=config.exclude, group_size=config.group_size,
                           symmetric=config.symmetric, threshold=config.threshold)
            config.modules = quantized_layout(model)
            model.config.quantization_config = config
            model.hf_quantizer = self
            self.pre_quantized = True  # from now on the model holds quantized weights
        return model

    def is_serializable(self, *args, **kwargs):
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True

    def _dequantize(self, model, dtype=None):
        for name, module in list(model.named_modules()):
            if isinstance(module, QuantizedLinear):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child,
                        module.dequantize(dtype=dtype))
        return model


def register() -> bool:
    """Registers MyqConfig / MyqHfQuantizer under quant_method 'myq' (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not MyqConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        register_quantization_config(QUANT_METHOD)(MyqConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not MyqHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(MyqHfQuantizer)
    return True


register()


def attach_quantization_config(model, scheme="w8a16", exclude=("lm_head",), group_size=DEFAULT_GROUP_SIZE,
                               symmetric=None, threshold=None):
    """Marks a transformers model quantized by `quantize_model` so `save_pretrained` can save it.

    Sets `model.config.quantization_config` (a MyqConfig with the per-layer layout and the
    structural transforms to rebuild) and `model.hf_quantizer`. A model that was already marked quantized by another method (a
    GGUF load) must be cleared first (`clear_quantization(model)`).
    """
    previous = getattr(model, "hf_quantizer", None)
    if previous is not None and not isinstance(previous, MyqHfQuantizer):
        method = getattr(previous.quantization_config, "quant_method", "?")
        if str(getattr(method, "value", method)) != "gguf":
            raise ValueError(f"this model is already marked quantized by {getattr(method, 'value', method)!r}")
        clear_quantization(model)  # a GGUF load leaves float weights and stale marks
    config = MyqConfig(scheme=scheme, group_size=group_size, symmetric=symmetric, exclude=exclude,
                       modules=quantized_layout(model), threshold=threshold, transforms=transform_layout(model))
    if not config.modules and not config.transforms:
        return model
    model.config.quantization_config = config
    model.hf_quantizer = MyqHfQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    return model


def clear_quantization(model):
    """Removes `hf_quantizer` / `config.quantization_config` (e.g. left by a GGUF load)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    return model
