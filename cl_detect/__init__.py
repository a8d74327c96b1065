"""cl_detect: continual fine-tuning of open-vocabulary detectors (YOLO-World v2 in plain PyTorch)."""
from cl_detect.models import (
    Detections, DetectorConfig, YOLOWorldDetector, create_detector, list_detectors, load_official_checkpoint,
    predict, save_official_checkpoint)

__version__ = "0.1.0"
__all__ = ["Detections", "DetectorConfig", "YOLOWorldDetector", "create_detector", "list_detectors",
           "load_official_checkpoint", "predict", "save_official_checkpoint", "__version__"]
