"""`specialist`: a closed-set per-class head per task (the fine-tuned closed-set reference)."""
from cl_detect.methods.registry import register_method
from cl_detect.methods.specialist.config import SpecialistConfig
from cl_detect.methods.specialist.method import ClosedSetScore, SpecialistMethod

register_method(name="specialist", config_cls=SpecialistConfig, method_cls=SpecialistMethod)

__all__ = ["ClosedSetScore", "SpecialistConfig", "SpecialistMethod"]
