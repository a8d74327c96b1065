"""Detectors, text encoders, official-checkpoint loading and inference."""
from cl_detect.models.registry import create_detector, list_detectors, register_detector
from cl_detect.models import yolo_world as _variants  # noqa: F401  (registers the sizes)
from cl_detect.models.yolo_world import DetectorConfig, DetectorOutput, YOLOWorldDetector
from cl_detect.models.official import (
    load_official_checkpoint, official_state_dict, save_official_checkpoint)
from cl_detect.models.predict import Detections, predict

__all__ = ["create_detector", "list_detectors", "register_detector", "DetectorConfig", "DetectorOutput",
           "YOLOWorldDetector", "load_official_checkpoint", "official_state_dict", "save_official_checkpoint",
           "Detections", "predict"]
