"""The PyTorch backend: eager by default, torch.compile on request."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kdbench.architectures import Architecture
from kdbench.backends.base import (
    Augment,
    Backend,
    BareLoop,
    Environment,
    LossConfig,
    Settings,
    Weights,
)
from kdbench.backends.pytorch import runtime
from kdbench.backends.pytorch.augment import (
    DeviceAugment,
    augmented_nhwc,
    crops_tensor,
    device_augment,
)
from kdbench.backends.pytorch.losses import distill_loss, ensemble_logits
from kdbench.backends.pytorch.model import (
    Tapped,
    as_nchw,
    build_module,
    load_weights,
    neutral_parameters,
    read_grads,
    read_weights,
    running_stats_kept,
)
from kdbench.backends.pytorch.optim import make_optimizer, set_lr
from kdbench.backends.pytorch.step import connector_parameters, feature_loss


@dataclass
class TorchModel:
    module: nn.Module
    run: Any  # the module, or torch.compile(module)
    names: list[str]  # every weight: the parameters, then batch norm's running statistics
    params: list[str]  # the trainable parameters (what has gradients)
    input_shape: tuple[int, int, int]  # (H, W, C)


@dataclass
class TorchData:
    x: torch.Tensor  # NHWC, as the neutral data is: a batch gathered from it is channels-last
    y: torch.Tensor


@dataclass
class TorchState:
    model: TorchModel
    optimizer: Any  # a torch.optim.Optimizer; None in loss_and_grads's state
    loss: LossConfig
    # One model; a list of them (ensemble); or the offline teacher's logits
    # over the training split, (samples, classes) on the device.
    teacher: TorchModel | list[TorchModel] | torch.Tensor | None
    connectors: dict[str, nn.Parameter] = field(default_factory=dict)
    # Feature methods: the student and teacher returning (logits, tapped features).
    student_tapped: Any = None
    teacher_tapped: Any = None
    # Crops and flips of every step's batch (init_train's Augment); None: none.
    augment: DeviceAugment | None = None


class PyTorchBackend(Backend):
    name = "pytorch"

    def __init__(self) -> None:
        super().__init__()
        self._device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def apply_settings(self, settings: Settings) -> None:
        self._device = runtime.apply_settings(settings)

    @property
    def compile_mode(self) -> str:
        return "torch.compile" if self.settings.compile == "compiled" else "eager"

    def environment(self) -> Environment:
        return runtime.environment(self.device, self.compile_mode, self.settings.bf16)

    def _compute(self) -> contextlib.AbstractContextManager[Any]:
        """bf16: torch.autocast, PyTorch's mixed precision (linear and conv layers
        in bfloat16 on float32 weights); the loss is taken on float32 logits."""
        if self.settings.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def bare_loop(self) -> BareLoop:
        from kdbench.backends.pytorch import bare

        return bare

    def put_dataset(self, x: np.ndarray, y: np.ndarray) -> TorchData:
        return TorchData(
            x=torch.from_numpy(np.ascontiguousarray(x)).to(self.device),
            y=torch.from_numpy(y.astype(np.int64)).to(self.device),
        )

    def build(self, arch: Architecture, weights: Weights, seed: int = 0) -> TorchModel:
        torch.manual_seed(seed)
        module = build_module(arch)
        load_weights(module, weights)
        module.to(self.device, memory_format=torch.channels_last)
        run = torch.compile(module) if self.settings.compile == "compiled" else module
        return TorchModel(
            module=module,
            run=run,
            names=list(arch.weight_shapes()),
            params=list(arch.param_shapes()),
            input_shape=arch.input_shape,
        )

    def get_weights(self, model: TorchModel) -> Weights:
        return read_weights(model.module, model.names)

    def _batch(self, x: np.ndarray) -> torch.Tensor:
        return as_nchw(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))

    def forward(self, model: TorchModel, x: np.ndarray) -> np.ndarray:
        model.module.eval()
        with torch.no_grad(), self._compute():
            return model.run(self._batch(x.astype(np.float32))).float().cpu().numpy()

    def loss_and_grads(
        self,
        model: TorchModel,
        x: np.ndarray,
        y: np.ndarray,
        loss: LossConfig,
        teacher: Any = None,
        connectors: Weights | None = None,
        kd_scale: float = 1.0,
    ) -> tuple[float, Weights]:
        state = self._state(model, loss, teacher, connectors)
        xb = self._batch(x.astype(np.float32))
        yb = torch.from_numpy(y.astype(np.int64)).to(self.device)
        model.module.zero_grad(set_to_none=True)
        # A training-mode forward (batch statistics), the running ones kept as they were.
        with running_stats_kept(model.module):
            value = self._loss(state, xb, yb, kd_scale, None)
            value.backward()
        grads = read_grads(model.module, model.params)
        grads.update({k: p.grad.detach().cpu().numpy() for k, p in state.connectors.items()})
        return float(value.detach()), grads

    def _loss(
        self,
        state: TorchState,
        xb: torch.Tensor,
        yb: torch.Tensor,
        kd_scale: float,
        idx: torch.Tensor | None,
    ) -> torch.Tensor:
        """The step's loss: logits (and tapped features for feature methods) of
        the student, the frozen teacher's under no_grad, the method's terms."""
        module = state.model.module
        if not module.training:
            module.train()
        if state.student_tapped is None:
            teacher_logits = self._teacher_logits(state.teacher, xb, idx, state.loss)
            with self._compute():
                logits = state.model.run(xb)
            return distill_loss(state.loss, logits.float(), yb, teacher_logits, kd_scale=kd_scale)
        return feature_loss(
            state.loss,
            state.student_tapped,
            state.teacher_tapped,
            state.connectors,
            (xb, yb),
            kd_scale,
            self._compute,
        )

    def _teacher_logits(
        self,
        teacher: TorchModel | list[TorchModel] | torch.Tensor | None,
        xb: torch.Tensor,
        idx: torch.Tensor | None = None,
        loss: LossConfig | None = None,
    ) -> torch.Tensor | None:
        if teacher is None:
            return None
        if isinstance(teacher, torch.Tensor):
            if idx is None:
                raise ValueError(
                    "an offline teacher's logits are gathered by a train step's indices"
                )
            return teacher.index_select(0, idx)
        with torch.no_grad(), self._compute():
            if isinstance(teacher, list):
                assert loss is not None
                members = [m.run(xb).float() for m in teacher]
                return ensemble_logits(members, loss.ensemble_weights, loss.temperature)
            return teacher.run(xb).float()

    def teacher_table(self, model: TorchModel, data: TorchData, batch_size: int) -> torch.Tensor:
        model.module.eval()
        n = data.x.shape[0]
        with torch.no_grad(), self._compute():
            parts = [
                model.run(as_nchw(data.x[start : start + batch_size])).float()
                for start in range(0, n, batch_size)
            ]
        return torch.cat(parts)

    def init_train(
        self,
        model: TorchModel,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: Any = None,
        connectors: Weights | None = None,
        augment: Augment | None = None,
    ) -> TorchState:
        state = self._state(model, loss, teacher, connectors)
        named = [*neutral_parameters(model.module, model.params), *state.connectors.items()]
        state.optimizer = make_optimizer(named, optimizer)
        if augment is not None:
            state.augment = device_augment(augment, model.input_shape, self.device)
        return state

    def augmented_batch(
        self, data: TorchData, indices: np.ndarray, augment: Augment, crops: np.ndarray
    ) -> np.ndarray:
        idx = torch.from_numpy(indices).to(self.device)
        aug = device_augment(augment, tuple(data.x.shape[1:]), self.device)
        return augmented_nhwc(data.x, idx, crops_tensor(crops, self.device), aug).cpu().numpy()

    def _state(
        self, model: TorchModel, loss: LossConfig, teacher: Any, connectors: Weights | None
    ) -> TorchState:
        """Everything a step needs but the optimizer (loss_and_grads has none)."""
        for member in teacher if isinstance(teacher, list) else [teacher]:
            if isinstance(member, TorchModel):
                member.module.eval()
                member.module.requires_grad_(False)
        model.module.train()
        params = connector_parameters(connectors, self.device)
        state = TorchState(
            model=model, optimizer=None, loss=loss, teacher=teacher, connectors=params
        )
        if loss.pairs:
            if not isinstance(teacher, TorchModel):
                raise ValueError(f"method {loss.method!r} needs one teacher model")
            state.student_tapped = self._tapped(model, loss.student_taps)
            state.teacher_tapped = self._tapped(teacher, loss.teacher_taps)
        return state

    def _tapped(self, model: TorchModel, taps: tuple[int, ...]) -> Any:
        tapped = Tapped(model.module, taps)
        return torch.compile(tapped) if self.settings.compile == "compiled" else tapped

    def train_step(
        self,
        state: TorchState,
        data: TorchData,
        indices: np.ndarray,
        lr: float,
        kd_scale: float = 1.0,
        crops: np.ndarray | None = None,
    ) -> tuple[TorchState, torch.Tensor]:
        idx = torch.from_numpy(indices).to(self.device, non_blocking=True)
        if state.augment is None:
            if crops is not None:
                raise ValueError("crops given to a state made without an Augment")
            xb = as_nchw(data.x.index_select(0, idx))
        else:
            if crops is None:
                raise ValueError("a state made with an Augment needs every step's crops")
            crop = crops_tensor(crops, self.device)
            xb = as_nchw(augmented_nhwc(data.x, idx, crop, state.augment))
        yb = data.y.index_select(0, idx)
        loss = self._loss(state, xb, yb, kd_scale, idx)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(state.optimizer, lr)
        state.optimizer.step()
        return state, loss.detach()

    def trained_model(self, state: TorchState) -> TorchModel:
        return state.model

    def trained_connectors(self, state: TorchState) -> Weights:
        return {k: p.detach().cpu().numpy().astype(np.float32) for k, p in state.connectors.items()}

    def predict(self, model: TorchModel, data: TorchData, indices: np.ndarray) -> torch.Tensor:
        if model.module.training:
            model.module.eval()
        idx = torch.from_numpy(indices).to(self.device, non_blocking=True)
        with torch.no_grad(), self._compute():
            return model.run(as_nchw(data.x.index_select(0, idx))).float()

    def to_numpy(self, handle: Any) -> np.ndarray:
        if isinstance(handle, list | tuple):
            return torch.stack(list(handle)).cpu().numpy()
        return handle.detach().cpu().numpy()

    def sync(self, *handles: Any) -> None:
        # Eager CPU ops have finished when they return; CUDA queues them.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def matmul_probe(self, n: int, dtype: str) -> Any:
        kind = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen).to(self.device, kind)
        b = torch.randn(n, n, generator=gen).to(self.device, kind)
        return lambda: a @ b

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return None
