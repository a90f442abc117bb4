"""Deployment: device profiles (`devices/`), export presets and on-target templates (`export/`), bundles that run
without torch, and roofline latency estimates for devices not at hand."""
