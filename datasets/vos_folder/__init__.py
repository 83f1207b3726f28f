"""Your own videos from a folder; importing this package registers the TFDS builder `vos_folder`."""
from datasets.vos_folder.vos_folder_dataset_builder import Builder

__all__ = ["Builder"]
