"""`mix`: grounding / general detection data mixed into every task (the GQA recipe)."""
from cl_detect.methods.mix.config import MixConfig, MixSource
from cl_detect.methods.mix.method import MixMethod
from cl_detect.methods.registry import register_method

register_method(name="mix", config_cls=MixConfig, method_cls=MixMethod)

__all__ = ["MixConfig", "MixMethod", "MixSource"]
