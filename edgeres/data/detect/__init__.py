"""Detection data: YOLO and COCO layouts and the built-in shapes-det, letterboxed, with box-aware augmentation."""
from __future__ import annotations

from edgeres.data.detect.augment import DetectAugment
from edgeres.data.detect.bundle import (DetectionBundle, DetectionDataset, collate, is_detection_source,
                                        load_detection_data)
from edgeres.letterbox import letterbox, letterbox_boxes, unletterbox_boxes

__all__ = ["DetectAugment", "DetectionBundle", "DetectionDataset", "collate", "is_detection_source", "letterbox",
           "letterbox_boxes", "load_detection_data", "unletterbox_boxes"]
