"""`wise`: WiSE-FT weight interpolation between the anchor and the fine-tuned detector."""
from cl_detect.methods.registry import register_method
from cl_detect.methods.wise.config import WiseConfig
from cl_detect.methods.wise.method import WiseMethod, interpolate, interpolate_states, wise_sweep

register_method(name="wise", config_cls=WiseConfig, method_cls=WiseMethod)

__all__ = ["WiseConfig", "WiseMethod", "interpolate", "interpolate_states", "wise_sweep"]
