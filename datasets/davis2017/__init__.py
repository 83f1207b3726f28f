"""DAVIS 2017 from a manual dir; importing this package registers the TFDS builder `davis2017`."""
from datasets.davis2017.davis2017_dataset_builder import Builder
from datasets.davis2017.davis2017_dataset_builder import DavisConfig

__all__ = ["Builder", "DavisConfig"]
