"""Metering: usage records, prices and cost lines, the tamper-evident ledger, the MLflow sink."""
