"""How TensorFlow applies the fairness settings, and how it reports them."""

from __future__ import annotations

import contextlib
import os

import tensorflow as tf

from kdbench.backends.base import Environment, Settings


def apply_settings(settings: Settings) -> bool:
    """Memory growth, visible devices, threads, precision, determinism; returns
    whether cells run on a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if settings.device == "gpu" and not gpus:
        raise RuntimeError("device 'gpu' was asked for but tensorflow sees no GPU")
    for gpu in gpus:
        # TF grabs the whole GPU otherwise; growth keeps in-use peaks comparable.
        with contextlib.suppress(RuntimeError):  # GPUs already initialised here
            tf.config.experimental.set_memory_growth(gpu, True)
    if settings.device == "cpu" and gpus:
        # Hide the GPUs: ops outside a device scope would otherwise land on them.
        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], "GPU")
    gpu = settings.device != "cpu" and bool(gpus)
    # Same number for both pools, as the PyTorch backend does.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
    except RuntimeError:  # runtime already started here; keep what is in force
        pass
    tf.config.experimental.enable_tensor_float_32_execution(settings.precision == "tf32")
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    return gpu


def op_determinism_enabled() -> bool:
    """TF has no public getter; the private one has been stable since 2.9."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # pragma: no cover - older or newer TF
        return False


def environment(gpu: bool, compile_mode: str, bf16: bool = False) -> Environment:
    """The flags in force, as TensorFlow reports them."""
    build = tf.sysconfig.get_build_info() if gpu else {}
    device = "cpu"
    if gpu:
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]
        )
        device = details.get("device_name", "gpu")
    tf32 = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    return Environment(
        framework="tensorflow",
        framework_version=tf.__version__,
        device=device,
        device_kind="gpu" if gpu else "cpu",
        cuda_version=build.get("cuda_version") if gpu else None,
        cudnn_version=build.get("cudnn_version") if gpu else None,
        compile_mode=compile_mode,
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        tf32_matmul=tf32,
        tf32_conv=tf32,  # one TF flag governs both
        deterministic=op_determinism_enabled(),
        memory_counter="tf.config.experimental.get_memory_info['peak']" if gpu else None,
        compute_dtype="bfloat16" if bf16 else "float32",
        extra={
            "memory_format": "channels_last",  # NHWC, Keras's data_format
            # No persistent XLA cache unless TF_XLA_FLAGS names one.
            "compilation_cache": "on"
            if "tf_xla_persistent_cache_directory" in os.environ.get("TF_XLA_FLAGS", "")
            else "off",
        },
    )
