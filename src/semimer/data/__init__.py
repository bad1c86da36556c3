"""Data layer: feature stores (per-clip ``.npy`` folders and packed memory-mapped stores),
the MER2024 on-disk layout (labels, candidates, transcripts) and in-memory batches."""

from semimer.data.pack import pack_folder
from semimer.data.store import FeatureStore, NpyFolderStore, PackedStore, open_store

__all__ = ["FeatureStore", "NpyFolderStore", "PackedStore", "open_store", "pack_folder"]
