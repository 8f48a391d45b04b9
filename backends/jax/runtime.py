"""How JAX applies the fairness settings, and how it reports them.

XLA reads its environment variables when JAX creates its clients, not at
import; every cell is a fresh process, so setup always comes first there.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jaxlib
import optax
from jax._src import xla_bridge  # backends_are_initialized has no public name

from kdbench.backends.base import Environment, Settings

# XLA:CPU sizes its intra-op (Eigen) thread pool and its dispatch pool from
# this variable when the CPU client is created (xla::DefaultThreadPoolSize:
# PJRT_NPROC, then NPROC, then the schedulable cores). XLA_FLAGS such as
# --xla_cpu_multi_thread_eigen only switch Eigen's threading on or off, and
# jax_num_cpu_devices makes more devices, not more threads.
THREADS_ENV = "PJRT_NPROC"
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
POOL_THREAD_NAME = "tf_XLAEigen"  # the intra-op pool's threads, as /proc shows them


def apply_settings(settings: Settings) -> tuple[jax.Device, bool]:
    """Apply threads, determinism, precision and device; returns the device and
    whether the flags were set before XLA created its clients (they act only then)."""
    # Env vars only act if they are set before JAX creates its clients;
    # each cell is a fresh process, so in a benchmark they always are.
    flags_before_init = not xla_bridge.backends_are_initialized()
    if flags_before_init:
        os.environ[THREADS_ENV] = str(settings.threads)
        flags = os.environ.get("XLA_FLAGS", "").split()
        flags = [f for f in flags if not f.startswith("--xla_gpu_deterministic_ops")]
        if settings.deterministic:
            flags.append(DETERMINISTIC_FLAG)
        os.environ["XLA_FLAGS"] = " ".join(flags)
        if settings.device == "cpu":  # a CPU cell leaves any GPU alone
            jax.config.update("jax_platforms", "cpu")
    tf32 = settings.precision == "tf32"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
    if settings.device == "gpu":
        try:
            device = jax.devices("gpu")[0]
        except RuntimeError as exc:
            raise RuntimeError(f"device 'gpu' was asked for but jax sees no GPU ({exc})") from None
    elif settings.device == "cpu":
        device = jax.devices("cpu")[0]
    else:
        device = jax.devices()[0]
    jax.config.update("jax_default_device", device)
    return device, flags_before_init


def memory_stats(device: jax.Device) -> dict[str, Any] | None:
    try:
        return device.memory_stats()
    except Exception:  # noqa: BLE001 - some platforms raise instead of returning None
        return None


def pool_threads() -> int | None:
    """Threads of XLA:CPU's intra-op pool in this process, counted in /proc."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    count = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().strip() == POOL_THREAD_NAME
        except OSError:  # the thread ended while we looked
            continue
    return count or None


def _default_pool_size() -> int:
    """What xla::DefaultThreadPoolSize would pick from the environment now."""
    for name in (THREADS_ENV, "NPROC"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cuda_versions() -> tuple[str | None, int | None]:
    try:
        from jax._src.lib import cuda_versions  # private; None without the CUDA plugin
    except ImportError:
        return None, None
    if cuda_versions is None:
        return None, None
    try:
        cuda = int(cuda_versions.cuda_runtime_get_version())
        cudnn = int(cuda_versions.cudnn_get_version())
    except Exception:  # noqa: BLE001 - report what we can, never fail a cell on it
        return None, None
    return f"{cuda // 1000}.{cuda % 1000 // 10}", cudnn


def environment(
    device: jax.Device, compile_mode: str, flags_before_init: bool, bf16: bool = False
) -> Environment:
    """The flags in force, as JAX and XLA report them."""
    gpu = device.platform == "gpu"
    cuda, cudnn = _cuda_versions() if gpu else (None, None)
    precision = jax.config.jax_default_matmul_precision
    tf32 = precision == "tensorfloat32"
    counted = pool_threads()
    stats = memory_stats(device)
    has_peak = bool(stats) and "peak_bytes_in_use" in stats
    flags = os.environ.get("XLA_FLAGS", "")
    return Environment(
        framework="jax",
        framework_version=jax.__version__,
        device=device.device_kind if gpu else "cpu",
        device_kind="gpu" if gpu else "cpu",
        cuda_version=cuda,
        cudnn_version=cudnn,
        compile_mode=compile_mode,
        intra_op_threads=counted if counted is not None else _default_pool_size(),
        inter_op_threads=None,
        tf32_matmul=tf32,
        tf32_conv=tf32,  # flax convs follow the same default precision
        deterministic=flags_before_init and DETERMINISTIC_FLAG in flags.split(),
        memory_counter=(
            "memory_stats()['peak_bytes_in_use'] (process high-water mark; JAX cannot reset it)"
        )
        if has_peak
        else None,
        compute_dtype="bfloat16" if bf16 else "float32",
        extra={
            "memory_format": "channels_last",  # NHWC, flax's convolutions' layout
            "jaxlib_version": jaxlib.__version__,
            "flax_version": flax.__version__,
            "optax_version": optax.__version__,
            "flax_api": "linen",
            "threads_knob": f"{THREADS_ENV}={os.environ.get(THREADS_ENV)}",
            "threads_note": (
                "XLA:CPU has one intra-op pool, sized by PJRT_NPROC when the client is "
                "created; independent ops share it, there is no separate inter-op pool"
                + ("" if flags_before_init else "; setup ran after the client existed")
            ),
            "matmul_precision": precision,
            "deterministic_note": None
            if gpu
            else "XLA:CPU has no nondeterministic-ops switch; the flag only acts on GPU",
            "xla_flags": flags,
            # None: every cell compiles from scratch, so warm-up times are comparable.
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
            "compilation_cache": "on" if jax.config.jax_compilation_cache_dir else "off",
        },
    )
