"""`finetune`: full or partial fine-tuning (the baseline)."""
from cl_detect.methods.finetune.config import FinetuneConfig
from cl_detect.methods.finetune.method import FinetuneMethod
from cl_detect.methods.registry import register_method

register_method(name="finetune", config_cls=FinetuneConfig, method_cls=FinetuneMethod)

__all__ = ["FinetuneConfig", "FinetuneMethod"]
