"""Data: triggers, poisoning, dataset adapters and datamodules."""
