"""`zeroshot`: the base model without training (the retention reference)."""
from cl_detect.methods.registry import register_method
from cl_detect.methods.zeroshot.config import ZeroShotConfig
from cl_detect.methods.zeroshot.method import ZeroShotMethod

register_method(name="zeroshot", config_cls=ZeroShotConfig, method_cls=ZeroShotMethod)

__all__ = ["ZeroShotConfig", "ZeroShotMethod"]
