"""`lora`: LoRA adapters (through peft) on chosen conv and linear layers."""
from cl_detect.methods.lora.config import LoraMethodConfig
from cl_detect.methods.lora.method import LoraMethod
from cl_detect.methods.registry import register_method

register_method(name="lora", config_cls=LoraMethodConfig, method_cls=LoraMethod)

__all__ = ["LoraMethodConfig", "LoraMethod"]
