"""`replay`: a buffer of earlier tasks' (and optionally pretraining) images mixed into training."""
from cl_detect.methods.registry import register_method
from cl_detect.methods.replay.buffer import BufferEntry, ReplayBuffer
from cl_detect.methods.replay.config import ReplayConfig
from cl_detect.methods.replay.method import ReplayMethod

register_method(name="replay", config_cls=ReplayConfig, method_cls=ReplayMethod)

__all__ = ["BufferEntry", "ReplayBuffer", "ReplayConfig", "ReplayMethod"]
