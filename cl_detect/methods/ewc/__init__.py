"""`ewc`: Elastic Weight Consolidation with a diagonal Fisher accumulated over tasks."""
from cl_detect.methods.ewc.config import EwcConfig
from cl_detect.methods.ewc.method import EwcMethod
from cl_detect.methods.registry import register_method

register_method(name="ewc", config_cls=EwcConfig, method_cls=EwcMethod)

__all__ = ["EwcConfig", "EwcMethod"]
