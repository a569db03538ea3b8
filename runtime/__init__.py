"""runtime: the numpy engine that runs chainrule graphs.

    import graphspec, runtime
    graph = graphspec.load("examples/logistic_regression.json")
    plan = runtime.compile(graph)
    params = runtime.init_params(graph, seed=0)
    run = plan.forward({"x1": x1, "x2": x2, "y": y}, params)
    run.loss, run.backward()          # the loss, and d(loss)/d(every parameter)

    result = runtime.Trainer(plan, runtime.SGD(lr=0.5), batch_size=16).fit(data, params, steps=200)
"""

from .checkpoint import Checkpoint, CheckpointError
from .compiled import CompiledStep
from .data import DataFileError, load_tensors, save_tensors
from .errors import ChainruleRuntimeError, ExecutionError, InputError, MissingKernelError, NonFiniteError
from .explain import Explanation, explain
from .gradcheck import GradcheckResult, assert_gradcheck, gradcheck
from .init import init_params
from .kernels import KERNELS, Kernel, unbroadcast
from .noise import Noise
from .optim import OPTIMIZERS, SGD, Adam, Optimizer, make_optimizer, optimizer_defaults
from .plan import Plan, Run, compile
from .onnx_export import ExportError, to_onnx
from .onnx_import import from_onnx
from .spec import SpecError, TrainingSpec
from .trainer import DEFAULT_CHECKPOINT_STEPS, StepReport, Trainer, TrainResult

__all__ = [
    "Adam", "ChainruleRuntimeError", "Checkpoint", "CheckpointError", "CompiledStep", "DataFileError", "ExecutionError",
    "Explanation", "ExportError", "GradcheckResult", "InputError", "KERNELS", "Kernel", "MissingKernelError", "Noise", "NonFiniteError", "OPTIMIZERS",
    "DEFAULT_CHECKPOINT_STEPS", "Optimizer", "Plan", "Run", "SGD", "SpecError", "StepReport", "TrainingSpec", "TrainResult", "Trainer", "assert_gradcheck", "compile", "explain", "from_onnx", "gradcheck", "init_params",
    "load_tensors", "make_optimizer", "optimizer_defaults", "save_tensors", "to_onnx", "unbroadcast",
]
