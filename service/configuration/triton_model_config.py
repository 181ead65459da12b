"""A Triton `config.pbtxt` read into cnnserve's model config (ModelOverrides + TritonDeclared).

Triton users bring their repositories unchanged: what an ONNX model's config.pbtxt says is
served as Triton serves it, what it leaves out comes from the ONNX file (auto-complete, as
Triton does), and a field cnnserve does not serve is refused at load with its name and line:
never silently ignored. The exceptions, fields that ask for what cnnserve does anyway, are
listed in the README's "Triton repositories" section; each is read where its message is.
Field names and enum values are those of Triton's model_config.proto
(triton-inference-server/common).
"""

from __future__ import annotations

from collections.abc import Callable

from service.configuration.declared import (
    TritonDeclared,
    VersionPolicy,
    WarmupData,
    WarmupInput,
    WarmupSample,
)
from service.configuration.model_config import (
    PLATFORM,
    DeviceRequest,
    DynamicBatching,
    ModelOverrides,
    TensorSpec,
)
from service.configuration.pbtxt import Field, PbtxtError, parse
from service.configuration.pbtxt_fields import Fields
from service.tensors.datatypes import DATATYPES
from service.tensors.errors import ConfigError

BACKEND = "onnxruntime"
CONFIG_PBTXT = "config.pbtxt"
# Fields of Triton's ModelConfig that cnnserve does not serve, by message: refused when set.
NOT_SERVED = {
    "": {"batch_input", "batch_output", "sequence_batching", "ensemble_scheduling",
         "cc_model_filenames", "metric_tags", "model_operations", "model_repository_agents",
         "model_metrics", "runtime"},
    "input": {"is_shape_tensor", "allow_ragged_batch", "optional", "is_non_linear_format_io"},
    "output": {"is_shape_tensor", "is_non_linear_format_io"},
    "instance_group": {"rate_limiter", "secondary_devices", "profile", "passive", "host_policy"},
    "dynamic_batching": {"priority_levels", "default_priority_level", "priority_queue_policy"},
    "optimization": {"graph", "priority", "cuda", "gather_kernel_buffer_threshold",
                     "eager_batching"},
    "execution_accelerators": {"cpu_execution_accelerator"},
    "value": {"input_data_file"},  # model_warmup inputs: zero_data and random_data only
}  # fmt: skip
DATA_TYPES = {f"TYPE_{name}": name for name in DATATYPES if name != "BYTES"} | {
    "TYPE_STRING": "BYTES"
}
KINDS = {"KIND_AUTO": "auto", "KIND_GPU": "cuda", "KIND_CPU": "cpu"}
FORMATS = ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW")


def read_triton_config(model: str, text: str) -> ModelOverrides:
    """ModelOverrides (with its TritonDeclared) of `text`, the config.pbtxt of `model`."""
    try:
        root = Fields(model, parse(text), "", NOT_SERVED)
    except PbtxtError as exc:
        raise ConfigError(f"model '{model}': {CONFIG_PBTXT} is not valid text format: "
                          f"{exc.message}") from None  # fmt: skip
    root.check({
        "name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
        "optimization", "dynamic_batching", "instance_group", "default_model_filename",
        "parameters", "model_warmup", "model_transaction_policy", "response_cache",
    })  # fmt: skip
    _identity(root)
    _defaults_only(root)
    inputs, reshapes, formats = _tensors(root, "input")
    outputs, out_reshapes, labels = _tensors(root, "output")
    device, instances = _instance_groups(root)
    accelerator, options = _accelerators(root)
    intra, inter = _parameters(root)
    batching = root.message_of("dynamic_batching")
    max_batch = root.one("max_batch_size")
    declared = TritonDeclared(
        reshapes={**reshapes, **out_reshapes}, formats=formats, label_files=labels,
        model_file=root.string("default_model_filename") or None,
        version_policy=_version_policy(root), warmup=_warmup(root),
        dynamic_batching=batching is not None, accelerator=accelerator,
        accelerator_options=options, intra_op_threads=intra,
        inter_op_threads=inter,
    )  # fmt: skip
    return ModelOverrides(
        max_batch_size=None if max_batch is None else _non_negative(root, max_batch),
        inputs=inputs or None,
        outputs=outputs or None,
        device=device,
        instances=instances,
        dynamic_batching=None if batching is None else _dynamic_batching(batching),
        provider_options=options if accelerator == "cuda" else None,
        triton=declared,
    )


def _identity(root: Fields) -> None:
    name = root.one("name")
    if name is not None and root.string("name") != root.model:
        raise root.fail(name.line, f"name '{root.string('name')}' does not match the model's "
                        f"folder '{root.model}' (the folder name is the model name)")  # fmt: skip
    platform, backend = root.string("platform"), root.string("backend")
    if platform and platform != PLATFORM:
        raise root.fail(root.message.all("platform")[0].line,
                        f"platform '{platform}': cnnserve serves only '{PLATFORM}'")  # fmt: skip
    if backend and backend != BACKEND:
        raise root.fail(root.message.all("backend")[0].line,
                        f"backend '{backend}': cnnserve serves only '{BACKEND}'")  # fmt: skip


def _defaults_only(root: Fields) -> None:
    """Fields accepted only at the value that is cnnserve's behaviour."""
    for field, inner in (("model_transaction_policy", "decoupled"), ("response_cache", "enable")):
        message = root.message_of(field)
        if message is None:
            continue
        message.check({inner})
        if message.boolean(inner):
            raise root.fail(message.message.line,
                            f"'{field}.{inner}: true' is not supported by cnnserve")  # fmt: skip


def _non_negative(at: Fields, field: Field) -> int:
    value = at.integer_of(field)
    if value < 0:
        raise at.fail(field.line, f"'{at.name(field.name)}' must be >= 0, got {value}")
    return value


def _dims(at: Fields, field: str) -> tuple[int, ...]:
    dims = at.integers(field)
    if any(d < -1 or d == 0 for d in dims):
        line = at.message.all(field)[0].line
        raise at.fail(line, f"'{at.name(field)}' must be positive or -1, got {list(dims)}")
    return dims


def _tensors(
    root: Fields, kind: str
) -> tuple[tuple[TensorSpec, ...], dict[str, tuple[int, ...]], dict[str, str]]:
    """input or output entries: specs, reshapes, and formats (inputs) / label files (outputs)."""
    specs, reshapes, extra = [], {}, {}
    for tensor in root.messages(kind):
        tensor.check({"name", "data_type", "dims", "reshape"}
                     | ({"format"} if kind == "input" else {"label_filename"}))  # fmt: skip
        name = tensor.string("name")
        if not name:
            raise tensor.fail(tensor.message.line, f"an {kind} entry needs a name")
        data_type = tensor.enum("data_type", DATA_TYPES)
        if data_type is None:
            raise tensor.fail(tensor.message.line, f"{kind} '{name}' needs a data_type")
        specs.append(TensorSpec(name, DATA_TYPES[data_type], _dims(tensor, "dims")))
        reshape = tensor.message_of("reshape")
        if reshape is not None:
            reshape.check({"shape"})
            reshapes[name] = reshape.integers("shape")
        if kind == "input":
            form = tensor.enum("format", FORMATS)
            if form not in (None, "FORMAT_NONE"):
                extra[name] = form
        elif tensor.string("label_filename"):
            extra[name] = tensor.string("label_filename")
    return tuple(specs), reshapes, extra


def _instance_groups(root: Fields) -> tuple[str | None, int | None]:
    """(device, instances) of every instance_group (one device in cnnserve)."""
    groups = root.messages("instance_group")
    if not groups:
        return None, None
    devices, count = set(), 0
    for group in groups:
        group.check({"name", "count", "kind", "gpus"})
        kind = group.enum("kind", KINDS) or "KIND_AUTO"
        gpus = group.integers("gpus")
        if len(gpus) > 1 or (gpus and kind == "KIND_CPU"):
            line = group.message.line
            raise group.fail(line, f"instance_group gpus {list(gpus)}: cnnserve serves a model on "
                             "one GPU (or the CPU); run one cnnserve per GPU")  # fmt: skip
        devices.add(f"cuda:{gpus[0]}" if gpus else KINDS[kind])
        count += group.integer("count", 1)
    if len(devices) > 1:
        raise root.fail(groups[1].message.line, f"instance groups on {sorted(devices)}: cnnserve "
                        "serves a model's instances on one device")  # fmt: skip
    device = devices.pop()
    DeviceRequest.parse(device)
    return device, count


def _dynamic_batching(batching: Fields) -> DynamicBatching:
    batching.check({"preferred_batch_size", "max_queue_delay_microseconds",
                    "preserve_ordering", "default_queue_policy"})  # fmt: skip
    batching.boolean("preserve_ordering")
    queue = batching.message_of("default_queue_policy")
    defaults = DynamicBatching()
    max_queue, timeout = defaults.max_queue_size, 0
    if queue is not None:
        queue.check({"timeout_action", "default_timeout_microseconds", "allow_timeout_override",
                     "max_queue_size"})  # fmt: skip
        if queue.enum("timeout_action", ("REJECT", "DELAY")) == "DELAY":
            line = queue.message.all("timeout_action")[0].line
            raise queue.fail(line, "timeout_action DELAY is not supported by cnnserve "
                             "(a request past its timeout is rejected: REJECT)")  # fmt: skip
        queue.boolean("allow_timeout_override")
        max_queue = queue.integer("max_queue_size") or max_queue  # 0: Triton's unbounded
        timeout = queue.integer("default_timeout_microseconds")
    preferred = batching.integers("preferred_batch_size")
    if any(size < 1 for size in preferred):
        line = batching.message.all("preferred_batch_size")[0].line
        raise batching.fail(line, f"preferred_batch_size must be >= 1, got {list(preferred)}")
    return DynamicBatching(
        max_queue_delay_us=batching.integer("max_queue_delay_microseconds"),
        preferred_batch_sizes=preferred,
        max_queue_size=max_queue,
        default_timeout_us=timeout,
    )


def _version_policy(root: Fields) -> VersionPolicy:
    policy = root.message_of("version_policy")
    if policy is None:
        return VersionPolicy()
    policy.check({"latest", "all", "specific"})
    if len(policy.message.fields) != 1:
        raise policy.fail(policy.message.line, "version_policy takes one of latest, all, specific")
    (choice,) = policy.message.fields
    inner = policy.nested(choice)
    if choice.name == "latest":
        inner.check({"num_versions"})
        count = inner.integer("num_versions", 1)
        return VersionPolicy("latest", num_versions=max(1, count))
    if choice.name == "all":
        inner.check(set())
        return VersionPolicy("all")
    inner.check({"versions"})
    versions = inner.integers("versions")
    if not versions or any(v < 1 for v in versions):
        raise inner.fail(choice.line, f"version_policy specific needs versions >= 1, got "
                         f"{list(versions)}")  # fmt: skip
    return VersionPolicy("specific", versions=versions)


def _accelerators(root: Fields) -> tuple[str | None, dict[str, str]]:
    optimization = root.message_of("optimization")
    if optimization is None:
        return None, {}
    optimization.check({"execution_accelerators", "input_pinned_memory", "output_pinned_memory"})
    for pinned in ("input_pinned_memory", "output_pinned_memory"):
        buffer = optimization.message_of(pinned)
        if buffer is not None:
            buffer.check({"enable"})
    accelerators = optimization.message_of("execution_accelerators")
    if accelerators is None:
        return None, {}
    accelerators.check({"gpu_execution_accelerator"})  # cpu_execution_accelerator: refused
    chosen: tuple[str | None, dict[str, str]] = (None, {})
    for accelerator in accelerators.messages("gpu_execution_accelerator"):
        accelerator.check({"name", "parameters"})
        name = accelerator.string("name")
        if name not in ("cuda", "tensorrt"):
            raise accelerator.fail(accelerator.message.line, f"gpu_execution_accelerator "
                                   f"'{name}': cnnserve knows 'cuda' and 'tensorrt'")  # fmt: skip
        if chosen[0] is not None:
            raise accelerator.fail(accelerator.message.line, "one gpu_execution_accelerator only")
        chosen = (name, _string_map(accelerator, "parameters", lambda at: at.string("value")))
    return chosen


def _string_map(at: Fields, field: str, value: Callable[[Fields], str]) -> dict[str, str]:
    entries = {}
    for entry in at.messages(field):
        entry.check({"key", "value"})
        entries[entry.string("key")] = value(entry)
    return entries


def _parameters(root: Fields) -> tuple[int | None, int | None]:
    def string_value(entry: Fields) -> str:
        holder = entry.message_of("value")
        if holder is None:
            return ""
        holder.check({"string_value"})
        return holder.string("string_value")

    parameters = _string_map(root, "parameters", string_value)
    threads: dict[str, int] = {}
    for key, text in parameters.items():
        if key not in ("intra_op_thread_count", "inter_op_thread_count"):
            line = root.message.all("parameters")[0].line
            raise root.fail(line, f"parameter '{key}' is not supported by cnnserve (it reads "
                            "intra_op_thread_count and inter_op_thread_count)")  # fmt: skip
        if not text.isdigit():
            line = root.message.all("parameters")[0].line
            raise root.fail(line, f"parameter '{key}' must be a number, got {text!r}")
        threads[key] = int(text)
    intra = threads.get("intra_op_thread_count") or None  # 0: onnxruntime's default
    return intra, threads.get("inter_op_thread_count")


def _warmup(root: Fields) -> tuple[WarmupSample, ...]:
    samples = []
    for sample in root.messages("model_warmup"):
        sample.check({"name", "batch_size", "inputs", "count"})
        inputs = {}
        for entry in sample.messages("inputs"):
            entry.check({"key", "value"})
            spec = entry.message_of("value")
            if spec is None:
                raise entry.fail(entry.message.line, "a warm-up input needs a value { ... }")
            spec.check({"data_type", "dims", "zero_data", "random_data"})
            data: WarmupData = "random_data" if spec.one("random_data") else "zero_data"
            datatype = spec.enum("data_type", DATA_TYPES) or "TYPE_INVALID"
            inputs[entry.string("key")] = WarmupInput(
                DATA_TYPES.get(datatype, ""), spec.integers("dims"), data
            )
        samples.append(WarmupSample(
            sample.string("name"), max(1, sample.integer("batch_size", 1)), inputs,
            max(1, sample.integer("count", 1)),
        ))  # fmt: skip
    return tuple(samples)
