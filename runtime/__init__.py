"""runtime: the numpy engine that runs chainrule graphs.

    import graphspec, runtime
    graph = graphspec.load("examples/logistic_regression.json")
    plan = runtime.compile(graph)
    params = runtime.init_params(graph, seed=0)
    run = plan.forward({"x1": x1, "x2": x2, "y": y}, params)
    run.loss, run.backward()          # the loss, and d(loss)/d(every parameter)
"""

from .errors import ChainruleRuntimeError, ExecutionError, InputError, MissingKernelError, NonFiniteError
from .init import init_params
from .kernels import KERNELS, Kernel, unbroadcast
from .plan import Plan, Run, compile

__all__ = [
    "ChainruleRuntimeError", "ExecutionError", "InputError", "KERNELS", "Kernel", "MissingKernelError",
    "NonFiniteError", "Plan", "Run", "compile", "init_params", "unbroadcast",
]
