"""`reparam`: re-parameterised fine-tuning (class embeddings folded into the head and neck)."""
from cl_detect.methods.registry import register_method
from cl_detect.methods.reparam.config import ReparamConfig
from cl_detect.methods.reparam.method import ReparamMethod

register_method(name="reparam", config_cls=ReparamConfig, method_cls=ReparamMethod)

__all__ = ["ReparamConfig", "ReparamMethod"]
