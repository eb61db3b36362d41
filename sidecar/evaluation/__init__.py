"""Offline measurement: labelled data sets, routing metrics, threshold calibration."""
