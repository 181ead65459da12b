"""The model config schema (server settings are service/configuration/settings.py).

A model's `config.yaml` is optional and may be partial: what it leaves out is filled in
from the ONNX file (see `signature.py`). Every key is validated here, at load time, with a
message that names the model and the key; unknown keys are refused so that a typo does not
silently change behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from service.configuration.declared import TritonDeclared
from service.tensors.datatypes import DATATYPES
from service.tensors.errors import ConfigError

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for the same runtime
AUTO: Final = "auto"
DEFAULT_MAX_BATCH_SIZE = 32  # for a config-less model whose batch dimension is variable


@dataclass(frozen=True)
class DeviceRequest:
    """The `device` key: auto | cpu | cuda | cuda:N (the one place that reads its syntax)."""

    kind: str  # "auto" | "cpu" | "cuda"
    index: int = 0

    @staticmethod
    def parse(device: str) -> DeviceRequest:
        if device in ("auto", "cpu", "cuda"):
            return DeviceRequest(device)
        kind, _, index = device.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ValueError(f"device '{device}' must be auto, cpu, cuda or cuda:N")
        return DeviceRequest("cuda", int(index))


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension when the model batches;
    -1 marks a dimension of any size."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class DynamicBatching:
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # in rows (images), not requests
    default_timeout_us: int = 0  # 0: no server-side timeout


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model is not batchable and is served as it is
    platform: str = PLATFORM
    device: str = "auto"
    instances: int = 1
    dynamic_batching: DynamicBatching = field(default_factory=DynamicBatching)
    provider_options: Mapping[str, str] = field(default_factory=dict)
    # Inputs that also accept BYTES: one encoded image per batch row (preprocessing).
    encoded_inputs: tuple[str, ...] = ()
    # instances: auto kept one more session, with every core, for a lone batch: the last
    # runner (service/runtime/autotune.py "solo instance"); `instances` does not count it.
    solo_instance: bool = False
    # Read from a Triton config.pbtxt: what it declares beyond the keys above.
    triton: TritonDeclared | None = None

    @property
    def dynamic_batching_on(self) -> bool:
        """Whether requests may share a batch: a config.pbtxt without dynamic_batching
        runs each request alone, as Triton does."""
        return self.batched and (self.triton is None or self.triton.dynamic_batching)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    def full_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        """The shape clients see in metadata: batch dimension (-1) first when batched."""
        return (-1, *spec.dims) if self.batched else spec.dims


@dataclass(frozen=True)
class ModelOverrides:
    """What a config.yaml declares; None means 'infer from the ONNX file'."""

    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    device: str | None = None
    # None (not stated) or "auto": timed at load (service/runtime/autotune.py); a number is kept.
    instances: int | Literal["auto"] | None = None
    dynamic_batching: DynamicBatching | None = None
    provider_options: Mapping[str, str] | None = None
    # IO binding: None = on for CUDA (one host-to-device copy per batch), off on the CPU.
    io_binding: bool | None = None
    # Where encoded images are decoded: auto | cpu | gpu (service/images/device_decode.py).
    decode: str | None = None
    # Validated by service.images.preprocess.parse_preprocessing (which needs the model's inputs
    # to bind, and imports this module); kept raw here.
    preprocessing: Mapping[str, Any] | None = None
    triton: TritonDeclared | None = None  # a config.pbtxt's further declarations

    def apply(self, inferred: ModelConfig) -> ModelConfig:
        """Declared values win; declared tensors must exist in the model with its datatype
        and dims."""
        if self.max_batch_size is not None and self.max_batch_size > 0 and not inferred.batched:
            raise ConfigError(
                f"model '{inferred.name}': max_batch_size {self.max_batch_size} declared, "
                "but the ONNX file's first dimension is fixed, so it cannot batch"
            )
        config = inferred
        if self.max_batch_size == 0 and inferred.batched:
            # Serve the batch dimension as an ordinary variable dimension.
            config = replace(
                config,
                inputs=tuple(replace(s, dims=(-1, *s.dims)) for s in config.inputs),
                outputs=tuple(replace(s, dims=(-1, *s.dims)) for s in config.outputs),
            )
        if self.inputs is not None:
            _check_declared(inferred.name, "inputs", self.inputs, config.inputs)
            config = replace(config, inputs=self.inputs)
        if self.outputs is not None:
            _check_declared(inferred.name, "outputs", self.outputs, config.outputs)
            config = replace(config, outputs=self.outputs)
        if self.max_batch_size is not None:
            config = replace(config, max_batch_size=self.max_batch_size)
        for key in ("device", "instances", "dynamic_batching", "provider_options", "triton"):
            value = getattr(self, key)
            if value is not None and value != AUTO:
                config = replace(config, **{key: value})
        return config


def _check_declared(
    model: str, key: str, declared: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]
) -> None:
    by_name = {spec.name: spec for spec in actual}
    for spec in declared:
        found = by_name.get(spec.name)
        if found is None:
            raise ConfigError(
                f"model '{model}': {key} declares '{spec.name}', which the ONNX file does not "
                f"have (it has {sorted(by_name)})"
            )
        if found.datatype != spec.datatype:
            raise ConfigError(
                f"model '{model}': {key} '{spec.name}' is declared {spec.datatype}, the ONNX "
                f"file has {found.datatype}"
            )
        if not dims_agree(spec.dims, found.dims):
            raise ConfigError(
                f"model '{model}': {key} '{spec.name}' is declared with dims {list(spec.dims)}, "
                f"the ONNX file has {list(found.dims)} (-1: any size)"
            )


def dims_agree(declared: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    """Same rank, and each declared size is the model's, or the model's is free (-1)."""
    return len(declared) == len(actual) and all(
        a == -1 or d == a for d, a in zip(declared, actual, strict=True)
    )


def _expect(model: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise ConfigError(f"model '{model}': key '{key}' must be {expected}, got {value!r}")
    return value


def _non_negative_int(model: str, key: str, value: Any, minimum: int = 0) -> int:
    number: int = _expect(model, key, value, int)
    if number < minimum:
        raise ConfigError(f"model '{model}': key '{key}' must be >= {minimum}, got {number}")
    return number


def _tensor_specs(model: str, key: str, value: Any) -> tuple[TensorSpec, ...]:
    items = _expect(model, key, value, list)
    specs = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        entry = _expect(model, where, item, dict)
        unknown = set(entry) - {"name", "datatype", "dims"}
        if unknown:
            raise ConfigError(f"model '{model}': unknown keys {sorted(unknown)} in {where}")
        name = _expect(model, f"{where}.name", entry.get("name"), str)
        datatype = _expect(model, f"{where}.datatype", entry.get("datatype"), str)
        if datatype not in DATATYPES:
            raise ConfigError(
                f"model '{model}': {where}.datatype '{datatype}' is not a v2 datatype "
                f"({', '.join(DATATYPES)})"
            )
        dims = _expect(model, f"{where}.dims", entry.get("dims"), list)
        for dim in dims:
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < -1 or dim == 0:
                raise ConfigError(
                    f"model '{model}': {where}.dims must be positive integers or -1, got {dims}"
                )
        specs.append(TensorSpec(name=name, datatype=datatype, dims=tuple(dims)))
    return tuple(specs)


def _dynamic_batching(model: str, value: Any) -> DynamicBatching:
    entry = _expect(model, "dynamic_batching", value, dict)
    allowed = {f for f in DynamicBatching.__dataclass_fields__}
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(
            f"model '{model}': unknown keys {sorted(unknown)} in dynamic_batching "
            f"(allowed: {sorted(allowed)})"
        )
    defaults = DynamicBatching()
    preferred = entry.get("preferred_batch_sizes", [])
    _expect(model, "dynamic_batching.preferred_batch_sizes", preferred, list)
    return DynamicBatching(
        max_queue_delay_us=_non_negative_int(
            model, "dynamic_batching.max_queue_delay_us", entry.get("max_queue_delay_us", 0)
        ),
        preferred_batch_sizes=tuple(
            _non_negative_int(model, "dynamic_batching.preferred_batch_sizes", p, 1)
            for p in preferred
        ),
        max_queue_size=_non_negative_int(
            model,
            "dynamic_batching.max_queue_size",
            entry.get("max_queue_size", defaults.max_queue_size),
            1,
        ),
        default_timeout_us=_non_negative_int(
            model, "dynamic_batching.default_timeout_us", entry.get("default_timeout_us", 0)
        ),
    )


_MODEL_KEYS = {
    "name",
    "platform",
    "max_batch_size",
    "inputs",
    "outputs",
    "device",
    "instances",
    "dynamic_batching",
    "provider_options",
    "io_binding",
    "preprocessing",
    "decode",
}
DECODE_CHOICES = ("auto", "cpu", "gpu")


def parse_model_overrides(model: str, document: Mapping[str, Any]) -> ModelOverrides:
    """Validate a parsed config.yaml for `model` (the folder name)."""
    unknown = set(document) - _MODEL_KEYS
    if unknown:
        raise ConfigError(
            f"model '{model}': unknown keys {sorted(unknown)} in config.yaml "
            f"(allowed: {sorted(_MODEL_KEYS)})"
        )
    if "name" in document and document["name"] != model:
        raise ConfigError(
            f"model '{model}': config.yaml names the model '{document['name']}', but its "
            "folder is named "
            f"'{model}'; the folder name is the model name"
        )
    if "platform" in document and document["platform"] != PLATFORM:
        raise ConfigError(
            f"model '{model}': platform '{document['platform']}' is not supported "
            f"(only '{PLATFORM}')"
        )
    device = document.get("device")
    if device is not None:
        try:
            DeviceRequest.parse(str(device))
        except ValueError as exc:
            raise ConfigError(f"model '{model}': {exc}") from None
    provider_options = document.get("provider_options")
    if provider_options is not None:
        _expect(model, "provider_options", provider_options, dict)
        provider_options = {str(k): str(v) for k, v in provider_options.items()}
    return ModelOverrides(
        max_batch_size=(
            _non_negative_int(model, "max_batch_size", document["max_batch_size"])
            if "max_batch_size" in document
            else None
        ),
        inputs=_tensor_specs(model, "inputs", document["inputs"]) if "inputs" in document else None,
        outputs=(
            _tensor_specs(model, "outputs", document["outputs"]) if "outputs" in document else None
        ),
        device=str(device) if device is not None else None,
        instances=_instances(model, document.get("instances")),
        dynamic_batching=(
            _dynamic_batching(model, document["dynamic_batching"])
            if "dynamic_batching" in document
            else None
        ),
        provider_options=provider_options,
        io_binding=_io_binding(model, document.get("io_binding")),
        preprocessing=document.get("preprocessing"),
        decode=_decode(model, document),
    )


def _instances(model: str, value: object) -> int | Literal["auto"] | None:
    if value is None:
        return None
    if value == AUTO:
        return AUTO
    if isinstance(value, str):
        raise ConfigError(
            f"model '{model}': key 'instances' must be an int >= 1 or 'auto', got {value!r}"
        )
    return _non_negative_int(model, "instances", value, 1)


def _decode(model: str, document: Mapping[str, Any]) -> str | None:
    value = document.get("decode")
    if value is None:
        return None
    if value not in DECODE_CHOICES:
        raise ConfigError(
            f"model '{model}': decode must be one of {list(DECODE_CHOICES)}, got {value!r}"
        )
    if document.get("preprocessing") is None:
        raise ConfigError(
            f"model '{model}': decode '{value}' applies to encoded images, which only a model "
            "with a preprocessing key accepts"
        )
    return str(value)


def _io_binding(model: str, value: object) -> bool | None:
    if value is None or value == "auto":
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"model '{model}': io_binding must be true, false or auto, got {value!r}")
    return value


def load_model_overrides(model: str, path: Path) -> ModelOverrides:
    if not path.exists():
        return ModelOverrides()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"model '{model}': {path.name} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"model '{model}': {path.name} must hold a mapping of keys")
    return parse_model_overrides(model, document)
