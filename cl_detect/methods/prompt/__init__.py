"""`prompt`: prompt tuning of the class embeddings (official recipe)."""
from cl_detect.methods.prompt.config import PromptConfig
from cl_detect.methods.prompt.method import PromptMethod
from cl_detect.methods.registry import register_method

register_method(name="prompt", config_cls=PromptConfig, method_cls=PromptMethod)

__all__ = ["PromptConfig", "PromptMethod"]
