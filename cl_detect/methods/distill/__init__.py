"""`distill`: distillation from a frozen pre-fine-tuning (or previous-task) teacher."""
from cl_detect.methods.distill.config import DistillConfig
from cl_detect.methods.distill.method import DistillMethod
from cl_detect.methods.registry import register_method

register_method(name="distill", config_cls=DistillConfig, method_cls=DistillMethod)

__all__ = ["DistillConfig", "DistillMethod"]
