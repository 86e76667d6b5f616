"""Data: folder datasets of images + masks, joint augmentation, loaders, label budgets."""
from hybengine.data.errors import DatasetError
from hybengine.data.folder_dataset import FolderDataset, validate_folder
from hybengine.data.label_budget import labeled_subset
from hybengine.data.loader import TrainLoader, build_train_loader

__all__ = ["DatasetError", "FolderDataset", "TrainLoader", "build_train_loader", "labeled_subset",
           "validate_folder"]
