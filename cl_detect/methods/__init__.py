"""Forgetting-mitigation methods; importing this package registers them all."""
from cl_detect.methods.base import ContinualModel, Method, TaskContext, check_composition, composed
from cl_detect.methods.registry import create_method, list_methods, method_classes, register_method
from cl_detect.methods import finetune  # noqa: F401
from cl_detect.methods import lora, prompt, reparam  # noqa: F401
from cl_detect.methods import distill, ewc, wise  # noqa: F401
from cl_detect.methods import mix, replay  # noqa: F401
from cl_detect.methods import specialist, zeroshot  # noqa: F401

__all__ = ["ContinualModel", "Method", "TaskContext", "check_composition", "composed", "create_method",
           "list_methods", "method_classes", "register_method"]
