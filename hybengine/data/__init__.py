"""Data: folder datasets of images + masks, one-pass validation, joint augmentation, the torch and
DALI loaders, label budgets, adapters for public dataset layouts.

Imports `hybengine.config` (DataConfig) and nothing else of hybengine; the loop and tools import it."""
from hybengine.data.errors import DatasetError
from hybengine.data.folder_dataset import FolderDataset, validate_folder
from hybengine.data.label_budget import labeled_subset
from hybengine.data.loader import TrainLoader, build_train_loader

__all__ = ["DatasetError", "FolderDataset", "TrainLoader", "build_train_loader", "labeled_subset",
           "validate_folder"]
