"""Frame-level features in memory: variable-length ``(T_i, D)`` clips kept back to back.

:class:`Ragged` holds ``flat`` ``(sum_i T_i, D)`` and ``offsets`` ``(N + 1,)`` (like the packed store
on disk), so a training set never pays for padding; a batch is padded only to its own longest clip
(:meth:`Ragged.pad`) and carries a ``(B, T)`` bool mask (True = valid frame).

Batches are formed by length buckets (:func:`length_bucketed_batches`): the shuffled clips are cut
into pools of ``bucket`` batches, each pool is sorted by length and cut into batches, and the batches
are shuffled — clips in one batch have similar lengths (little padding) while the order stays random
from epoch to epoch. Everything is seeded by the caller's generator.

Feature dicts (modality -> tensor or :class:`Ragged`) flow through the trainer; :func:`collate` turns
one into the model's input: ``batch[m]`` ``(B, T, D)`` plus ``batch[m + "_mask"]`` ``(B, T)``.

When a labeled set's frames do not fit comfortably in RAM (MER2024's 5,030 clips of HuBERT-large
frames at 50 Hz are ~8 GB in float32), :class:`StoredFrames` stands in for a Ragged: it holds clip
names and frame counts only and reads each batch from the feature store (a memory-mapped packed
store makes that a sorted gather). :func:`load_features` picks one or the other
(``train.frame_cache``).

**Missing modalities.** A clip may lack any modality (no face, no audio stream, no transcript). In a
feature dict it is an all-NaN row (utterance level) or a clip with zero frames (frame level); store
reads give exactly that (:meth:`~semimer.data.store.FeatureStore.get_present`). Models turn it into
a ``(B,)`` bool ``"<modality>_present"`` entry of their standardised batch (:func:`presence`), zero
the missing inputs and leave them out of fusion, voting and contrastive terms.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MASK_SUFFIX = "_mask"
PRESENT_SUFFIX = "_present"


class Ragged:
    """``N`` clips of shape ``(T_i, D)`` as ``flat`` ``(sum T_i, D)`` + ``offsets`` ``(N + 1,)``.

    ``flat`` lives on the training device; ``offsets`` always stay on the CPU (they are small), so
    selecting clips and padding a batch never wait for the device (no host synchronisation): the
    row indices are computed on the CPU and sent along with the work."""

    def __init__(self, flat: torch.Tensor, offsets: torch.Tensor):
        if flat.dim() != 2:
            raise ValueError(f"Ragged.flat must be (rows, D), got {tuple(flat.shape)}")
        offsets = torch.as_tensor(offsets).to(device="cpu", dtype=torch.long)
        if offsets.dim() != 1 or len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(flat):
            raise ValueError("Ragged.offsets must start at 0 and end at the number of rows")
        self.flat = flat
        self.offsets = offsets

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], device: torch.device | str = "cpu", dim: int | None = None) -> "Ragged":
        if not len(arrays):
            if dim is None:
                raise ValueError("an empty Ragged needs its feature dim")
            return cls(torch.zeros(0, dim, device=device), torch.zeros(1, dtype=torch.long))
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)  # 0 = modality missing for that clip
        dim = arrays[0].shape[-1] if dim is None else dim
        arrays = [a if len(a) else np.zeros((0, dim), np.float32) for a in arrays]
        flat = torch.as_tensor(np.concatenate(arrays, axis=0), dtype=torch.float32)
        offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.long)
        return cls(_to_device(flat, device), offsets)

    # -- shape --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.flat.shape[1]

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def lengths(self) -> torch.Tensor:
        """Frames per clip (CPU)."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def __repr__(self) -> str:
        return f"Ragged(n={len(self)}, dim={self.dim}, frames={len(self.flat)})"

    def to(self, device) -> "Ragged":
        return Ragged(_to_device(self.flat, device), self.offsets)

    # -- selection ----------------------------------------------------------------------------
    def _rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For clips ``idx`` (CPU): their new offsets, and per row of the selection its clip (in
        the selection) and its source row in ``flat``; all on the CPU."""
        lengths = self.lengths[idx]
        new_offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=new_offsets[1:])
        total = int(new_offsets[-1])  # a CPU tensor: no device synchronisation
        clip = torch.repeat_interleave(torch.arange(len(idx)), lengths, output_size=total)
        rows = self.offsets[idx][clip] + torch.arange(total) - new_offsets[clip]
        return new_offsets, clip, rows

    def __getitem__(self, idx) -> "Ragged":
        """Clips ``idx`` (slice, int sequence, int tensor; repeats allowed) as a new Ragged."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1).cpu()
        new_offsets, _, rows = self._rows(idx)
        return Ragged(self.flat[_to_device(rows, self.device)], new_offsets)

    def clip(self, i: int) -> torch.Tensor:
        return self.flat[int(self.offsets[i]):int(self.offsets[i + 1])]

    @staticmethod
    def cat(parts: Sequence["Ragged"]) -> "Ragged":
        flat = torch.cat([p.flat for p in parts])
        lengths = torch.cat([p.lengths for p in parts])
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return Ragged(flat, offsets)

    # -- padding ------------------------------------------------------------------------------
    def pad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (N, T_max, D), mask (N, T_max))``; padded frames are zeros, mask False. A clip with
        no frames (missing modality) is an all-False mask row; ``T_max >= 1`` whenever ``N >= 1``.
        Indices are built on the CPU: no host synchronisation on a GPU."""
        n, lengths = len(self), self.lengths
        t_max = max(int(lengths.max()), 1) if n else 0
        mask = torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)
        x = self.flat.new_zeros(n, t_max, self.dim)
        clip = torch.repeat_interleave(torch.arange(n), lengths, output_size=len(self.flat))
        pos = torch.arange(len(self.flat)) - self.offsets[:-1][clip]
        if self.device.type == "cpu":
            x[clip, pos] = self.flat
        else:
            x[_to_device(clip, self.device), _to_device(pos, self.device)] = self.flat
        return x, _to_device(mask, self.device)


def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x`` on ``device``; from pinned memory without blocking when that is a CUDA device."""
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


class StoredFrames:
    """Frame-level clips left in their feature store: names + frame counts; the same selection
    interface as :class:`Ragged`, data read on :meth:`pad` / :meth:`materialize`."""

    def __init__(self, store, names: Sequence[str], device: torch.device | str = "cpu",
                 lengths: np.ndarray | None = None):
        self.store = store
        self.names = np.asarray(list(names), dtype=object)
        self._lengths = np.asarray(store.present_lengths(list(self.names)) if lengths is None else lengths,
                                   dtype=np.int64)  # 0 for clips without this feature
        self._device = torch.device(device)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"StoredFrames(n={len(self)}, feature={self.store.feature!r}, frames={int(self._lengths.sum())})"

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def lengths(self) -> torch.Tensor:
        return torch.as_tensor(self._lengths)

    def __getitem__(self, idx) -> "StoredFrames":
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        if not isinstance(idx, slice):
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return StoredFrames(self.store, self.names[idx], self._device, self._lengths[idx])

    def materialize(self) -> Ragged:
        return Ragged.from_arrays(self.store.get_present(list(self.names)), self._device, dim=self.dim)

    def pad(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.materialize().pad()

    def iter_chunks(self, clips: int = 1024):
        """Ragged pieces of at most ``clips`` clips (streamed statistics)."""
        for s in range(0, len(self), clips):
            yield self[slice(s, s + clips)].materialize()

    @property
    def nbytes(self) -> int:
        return int(self._lengths.sum()) * self.dim * 4


def presence(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` bool: which clips have this modality — utterance level ``(B, D)``: rows without NaN;
    frame level (``mask`` ``(B, T)``): clips with at least one valid frame. No host synchronisation."""
    if mask is not None:
        return mask.any(dim=1)
    return ~torch.isnan(x).any(dim=-1)


def is_frame(x) -> bool:
    return isinstance(x, (Ragged, StoredFrames))


def n_items(feats: dict) -> int:
    return len(next(iter(feats.values())))


def _cat_frames(a, b):
    if isinstance(a, StoredFrames) and isinstance(b, StoredFrames) and a.store is b.store:
        return StoredFrames(a.store, np.concatenate([a.names, b.names]), a.device,
                            np.concatenate([a._lengths, b._lengths]))
    a = a.materialize() if isinstance(a, StoredFrames) else a
    b = b.materialize() if isinstance(b, StoredFrames) else b
    return Ragged.cat([a, b])


def concat(a: dict, b: dict) -> dict:
    """Clip-wise concatenation of two feature dicts (tensors, Ragged or StoredFrames per modality)."""
    return {m: _cat_frames(a[m], b[m]) if is_frame(a[m]) else torch.cat([a[m], b[m]]) for m in a}


def to_tensors(feats: dict, device, dims: dict[str, int] | None = None) -> dict:
    """Arrays from :meth:`MERData.features` to tensors: ``(N, D)`` arrays to tensors, lists of
    ``(T, D)`` arrays (frame level) to :class:`Ragged`."""
    out = {}
    for m, x in feats.items():
        if isinstance(x, (list, tuple)):
            out[m] = Ragged.from_arrays(x, device, dim=(dims or {}).get(m))
        else:
            out[m] = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)
    return out


FRAME_CACHE_BYTES = 4 * 2**30  # train.frame_cache=auto: frame features above this stay in the store


def load_features(data, names: Sequence[str], device, cache: str = "auto") -> dict:
    """Features of ``names`` for training: utterance level as tensors; frame level as a Ragged in
    RAM (``cache="memory"``), a :class:`StoredFrames` read per batch (``"store"``), or by size
    (``"auto"``: in RAM up to :data:`FRAME_CACHE_BYTES` per modality)."""
    if cache not in ("auto", "memory", "store"):
        raise ValueError(f"train.frame_cache must be auto, memory or store, not {cache!r}")
    names = list(names)
    lazy = {}
    for m, store in data.stores.items():
        if store.level == "frame":
            frames = StoredFrames(store, names, device)
            if cache == "store" or (cache == "auto" and frames.nbytes > FRAME_CACHE_BYTES):
                lazy[m] = frames
    in_ram = {m: s.get_present(names) for m, s in data.stores.items() if m not in lazy}
    out = to_tensors(in_ram, device, data.dims())
    return {m: lazy[m] if m in lazy else out[m] for m in data.stores}


def collate(feats: dict) -> dict[str, torch.Tensor]:
    """A model batch: tensors unchanged, each Ragged padded with its ``<m>_mask``."""
    out = {}
    for m, x in feats.items():
        if is_frame(x):
            out[m], out[m + MASK_SUFFIX] = x.pad()
        else:
            out[m] = x
    return out


def clip_lengths(feats: dict) -> np.ndarray | None:
    """Per clip, the sum of its frame counts over frame-level modalities (None if none is)."""
    frame = [x.lengths for x in feats.values() if is_frame(x)]
    if not frame:
        return None
    return torch.stack(frame).sum(0).cpu().numpy()


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                            bucket: int = 50) -> list[np.ndarray]:
    """Seeded batches of similar-length clips (see module docstring); every clip exactly once."""
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).numpy()
    pool = batch_size * bucket
    batches = []
    for s in range(0, n, pool):
        chunk = perm[s:s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def inference_batches(lengths: np.ndarray | None, n: int, batch_size: int, max_frames: int) -> list[np.ndarray]:
    """Deterministic inference batches: utterance level in order; frame level sorted by length and
    sized so that ``batch * longest clip <= max_frames`` (at least one clip per batch)."""
    if lengths is None:
        return [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    order = np.argsort(lengths, kind="stable")
    batches, s = [], 0
    while s < n:
        # sorted ascending: the last clip of a batch is its longest
        b = 1
        while s + b < n and b < batch_size and (b + 1) * lengths[order[s + b]] <= max_frames:
            b += 1
        batches.append(order[s:s + b])
        s += b
    return batches


# --------------------------------------------------------------------------- pre-training pools
def chunk_batches(batches: Sequence[np.ndarray], clip_bytes: np.ndarray, chunk_bytes: float) -> list[tuple[int, int]]:
    """Consecutive batches grouped into chunks of at most ``chunk_bytes`` of features
    (``clip_bytes[i]``: clip ``i``'s bytes): ``[(first batch, end batch), ...]``. A chunk holds at
    least one batch, so a batch larger than the budget is a chunk of its own; the batches, and so
    the training, do not depend on the chunk size."""
    out, start, size = [], 0, 0.0
    for j, b in enumerate(batches):
        nb = float(clip_bytes[b].sum()) if len(b) else 0.0
        if j > start and size + nb > chunk_bytes:
            out.append((start, j))
            start, size = j, 0.0
        size += nb
    if start < len(batches):
        out.append((start, len(batches)))
    return out


class FeaturePool:
    """The clips of a pre-training pool, by position ``0..N-1`` (``names``): their feature bytes
    and frame counts (known without reading the features), and :meth:`load` of any subset, from
    RAM when the pool was loaded with :meth:`keep_in_memory`, else from the feature stores.

    Loading the pool into RAM reads every clip once, in pieces of ``chunk_bytes``; afterwards no
    epoch touches the disk (30k ``.npy`` files per epoch on a 10k-clip pool before this)."""

    def __init__(self, data, names: Sequence[str]):
        self.data = data
        self.names = np.asarray(list(names), dtype=object)
        self.dims = data.dims()
        self.frame_lengths = {m: np.asarray(s.present_lengths(list(self.names)), np.int64)
                              for m, s in data.stores.items() if s.level == "frame"}
        self.clip_bytes = np.zeros(len(self.names), np.float64)
        for m, d in self.dims.items():
            rows = self.frame_lengths[m] if m in self.frame_lengths else 1
            self.clip_bytes += rows * d * 4.0
        self.memory: dict | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return int(self.clip_bytes.sum())

    @property
    def lengths(self) -> np.ndarray | None:
        """Per clip, its frames summed over frame-level modalities (None if none is)."""
        if not self.frame_lengths:
            return None
        return np.sum(list(self.frame_lengths.values()), axis=0)

    def read(self, idx: np.ndarray) -> dict:
        """Clips ``idx`` from the feature stores (CPU tensors / Ragged), read in file order."""
        idx = np.asarray(idx, dtype=np.int64)
        return to_tensors(self.data.features(self.names[idx].tolist()), "cpu", self.dims)

    def keep_in_memory(self, chunk_bytes: float, progress=None) -> None:
        """Read the whole pool into RAM (float32, no padding), in pieces of ``chunk_bytes``."""
        n = len(self.names)
        mem: dict = {}
        rows_at = {}
        for m, d in self.dims.items():
            if m in self.frame_lengths:
                offsets = np.concatenate([[0], np.cumsum(self.frame_lengths[m])])
                mem[m] = Ragged(torch.empty(int(offsets[-1]), d), torch.as_tensor(offsets))
                rows_at[m] = offsets
            else:
                mem[m] = torch.empty(n, d)
        per = np.arange(n)
        for s, e in chunk_batches([per[i:i + 1] for i in range(n)], self.clip_bytes, chunk_bytes) if n else []:
            part = self.read(per[s:e])
            for m, x in part.items():
                if isinstance(x, Ragged):
                    mem[m].flat[rows_at[m][s]:rows_at[m][e]] = x.flat
                else:
                    mem[m][s:e] = x
            if progress is not None:
                progress(e - s)
        self.memory = mem

    def load(self, idx: np.ndarray) -> dict:
        """Clips ``idx`` (CPU tensors / Ragged): from RAM when kept there, else read."""
        if self.memory is None:
            return self.read(idx)
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return {m: x[t] for m, x in self.memory.items()}
