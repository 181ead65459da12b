"""Triton extension messages: a served model's config as Triton's ModelConfig (the ModelConfig
RPC), and its statistics as ModelStatistics.

perf_analyzer and tritonclient's `get_model_config` read this to learn max_batch_size,
tensor shapes and the batching policy. Only the fields cnnserve has are filled.
"""

from __future__ import annotations

from service.configuration.declared import TritonDeclared, VersionPolicy
from service.serving.layout import LABELS_FILE
from service.serving.model import ServedModel
from service.telemetry.metrics import Metrics, ModelStats
from service.tensors.records import ParamValue
from service.v2 import grpc_service_pb2 as pb
from service.v2 import model_config_pb2 as mc


def _type_name(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _triton_type(datatype: str) -> int:
    """Triton's DataType for a v2 datatype name: the same names with TYPE_, but BYTES is
    TYPE_STRING (derived, so the datatype table lives once, in service/tensors/datatypes.py)."""
    return mc.DataType.Value(_type_name(datatype))


_FORMATS = {"FORMAT_NHWC": mc.ModelInput.FORMAT_NHWC, "FORMAT_NCHW": mc.ModelInput.FORMAT_NCHW}


def model_config_message(model: ServedModel) -> mc.ModelConfig:
    config = model.config
    message = mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend="onnxruntime",
        max_batch_size=config.max_batch_size,
    )
    for spec in config.inputs:
        message.input.add(name=spec.name, data_type=_triton_type(spec.datatype), dims=spec.dims)
    for spec in config.outputs:
        message.output.add(
            name=spec.name,
            data_type=_triton_type(spec.datatype),
            dims=spec.dims,
            label_filename=LABELS_FILE if model.labels else "",
        )
    gpu = model.runner.device_label == "cuda"
    message.instance_group.add(
        name=f"{config.name}_0",
        count=model.instance_count,
        kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
    )
    if config.dynamic_batching_on:
        batching = config.dynamic_batching
        message.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
        message.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        policy = message.dynamic_batching.default_queue_policy
        policy.max_queue_size = batching.max_queue_size
        policy.default_timeout_microseconds = batching.default_timeout_us
        policy.allow_timeout_override = True
    message.parameters["execution_provider"].string_value = model.runner.provider
    _version_policy(message, config.triton.version_policy if config.triton else VersionPolicy())
    if config.triton is not None:
        _declared(message, config.triton)
    return message


def _version_policy(message: mc.ModelConfig, policy: VersionPolicy) -> None:
    if policy.kind == "all":
        message.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        message.version_policy.specific.versions.extend(policy.versions)
    else:
        message.version_policy.latest.num_versions = policy.num_versions


def _declared(message: mc.ModelConfig, triton: TritonDeclared) -> None:
    """What a config.pbtxt declared beyond cnnserve's own keys, shown back as written."""
    message.default_model_filename = triton.model_file or ""
    for model_input in message.input:
        model_input.reshape.shape.extend(triton.reshapes.get(model_input.name, ()))
        if model_input.name in triton.formats:
            model_input.format = _FORMATS[triton.formats[model_input.name]]
    for output in message.output:
        output.reshape.shape.extend(triton.reshapes.get(output.name, ()))
        output.label_filename = triton.label_files.get(output.name, "")
    if triton.accelerator is not None:
        accelerators = message.optimization.execution_accelerators
        accelerators.gpu_execution_accelerator.add(
            name=triton.accelerator, parameters=triton.accelerator_options
        )
    threads = (("intra_op_thread_count", triton.intra_op_threads),
               ("inter_op_thread_count", triton.inter_op_threads))  # fmt: skip
    for key, value in threads:
        if value is not None:
            message.parameters[key].string_value = str(value)
    for sample in triton.warmup:
        warmup = message.model_warmup.add(
            name=sample.name, batch_size=sample.batch_size, count=sample.count
        )
        for name, given in sample.inputs.items():
            data = {given.data: True}  # zero_data or random_data
            warmup.inputs[name].CopyFrom(
                mc.ModelWarmup.Input(data_type=_type_name(given.datatype), dims=given.dims, **data)
            )


SERVER_NAME = "cnnserve"
# The protocol extensions both front ends serve (HTTP adds binary_tensor_data).
EXTENSIONS: tuple[str, ...] = (
    "classification",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
)


def statistics_response(
    metrics: Metrics | None, name: str = "", version: str = ""
) -> pb.ModelStatisticsResponse:
    """Triton's statistics of every served version, or of `name` (and `version`)."""
    response = pb.ModelStatisticsResponse()
    if metrics is None:
        return response
    for (model, ver), stats in sorted(metrics.all_stats().items()):
        if (name and model != name) or (version and ver != version):
            continue
        statistics_message(stats, response.model_stats.add(name=model, version=ver))
    return response


def statistics_message(stats: ModelStats, message: pb.ModelStatistics) -> None:
    """Fill Triton's ModelStatistics from the same observations as the Prometheus metrics."""
    message.last_inference = stats.last_inference_ms
    message.inference_count = stats.inference_count
    message.execution_count = stats.execution_count
    totals = message.inference_stats
    for field_name in ("success", "fail", "queue", "compute_infer"):
        duration = getattr(stats, field_name)
        target = getattr(totals, field_name)
        target.count, target.ns = duration.count, duration.ns
    # Input and output copies are timed inside compute_infer (one onnxruntime run): their
    # own entries count the same requests with no time, as perf_analyzer requires the three
    # counts to agree.
    totals.compute_input.count = totals.compute_output.count = stats.compute_infer.count
    for size, batch in sorted(stats.batches.items()):
        entry = message.batch_stats.add(batch_size=size)
        entry.compute_infer.count = batch.compute_infer.count
        entry.compute_infer.ns = batch.compute_infer.ns
        entry.compute_input.count = entry.compute_output.count = batch.compute_infer.count


def metadata_parameters(model: ServedModel) -> dict[str, ParamValue]:
    """ModelMetadata's parameters: how the version is being served."""
    parameters: dict[str, ParamValue] = {
        # The provider read back from the session, so a CPU fallback is visible to clients.
        "execution_provider": model.runner.provider,
        "device": model.runner.device_label,
        "max_batch_size": model.config.max_batch_size,
        "instances": model.instance_count,
        "intra_op_threads": model.runner.intra_op_threads,
        # instances: auto: what the timing at load chose and from what (or why it did not
        # time); else the config.
        "instances_chosen_by": model.instances_chosen_by,
    }
    if model.config.solo_instance:  # the session a lone batch runs on, with every core
        parameters["solo_instance_threads"] = model.runners[-1].intra_op_threads
    tuning = model.tuning
    if tuning is not None:  # both ends of the load, as timed in-process at load
        parameters["autotune_rows_per_s"] = round(tuning.rows_per_s, 1)
        low_load = tuning.low_load_batch1_s
        if low_load is not None:
            parameters["autotune_batch1_ms"] = round(1e3 * low_load, 3)
    if model.decode is not None:  # encoded images: decoded on the cpu or the gpu, and why
        parameters["decode"] = model.decode.kind
        parameters["decode_chosen_by"] = model.decode.chosen_by
    return parameters
