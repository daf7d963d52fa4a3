"""Reads a PyTorch state dict (a `.pth` file of named tensors) into numpy arrays, without PyTorch.

Both formats of `torch.save` are read. The zip archive (PyTorch >= 1.6) holds `<name>/data.pkl`,
the pickled object whose storages are persistent ids ('storage', type, key, location, numel),
and each storage's raw bytes as `<name>/data/<key>`. The legacy stream (before 1.6, as the
pytorch-fid Inception weights were written) is a run of pickles: magic number, protocol
version, system info, the object, the list of storage keys; then each storage as an int64
element count followed by its bytes. Tensors are pickled as calls of
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`. The unpickler admits only
the globals a state dict needs, so a file cannot run code while it is read.
"""

import collections
import dataclasses
import io
import pickle
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

from aigc_jax.errors import UserError

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A tensor as its pickle describes it; `array` reads it once the storage bytes are known."""
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def array(self, data: bytes, byteorder: str) -> np.ndarray:
    flat = np.frombuffer(data, self.storage.dtype.newbyteorder('<' if byteorder == 'little' else '>'))
    last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
    if min(self.shape, default=1) > 0 and (self.offset < 0 or last >= len(flat)):
      raise UserError(f'storage {self.storage.key} holds {len(flat)} values, too few for a tensor '
                      f'of shape {self.shape} at offset {self.offset}: the file is damaged')
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.shape,
                                           [s * flat.itemsize for s in self.stride])
    return np.array(view, dtype=self.storage.dtype)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_) -> _Tensor:
  return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _Tensor, *_) -> _Tensor:
  return data


_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Builds `_Storage`/`_Tensor` placeholders; refuses every global a state dict does not use."""

  def __init__(self, file: BinaryIO, storage: Callable[[tuple], _Storage]):
    super().__init__(file)
    self._storage = storage

  def find_class(self, module: str, name: str) -> Any:
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(np.dtype(STORAGE_DTYPES[name]))
    if (module, name) not in _GLOBALS:
      raise UserError(f'the checkpoint holds {module}.{name}: only state dicts of plain tensors '
                      f'({", ".join(sorted(STORAGE_DTYPES))}) can be read without PyTorch')
    return _GLOBALS[module, name]

  def persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and pid and pid[0] in ('storage', b'storage')):
      raise UserError(f'the checkpoint refers to {pid!r}, which is not a tensor storage')
    if not isinstance(pid[1], _StorageType):
      raise UserError(f'the checkpoint has a storage of type {pid[1]!r}, not one of {sorted(STORAGE_DTYPES)}')
    return self._storage(pid[1:])


def _tensors(obj: Any) -> dict[str, _Tensor]:
  if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
    raise UserError('the checkpoint is not a state dict (a mapping of names to tensors)')
  return obj


def _read_zip(file: zipfile.ZipFile) -> dict[str, np.ndarray]:
  pickles = [n for n in file.namelist() if n.rsplit('/', 1)[-1] == 'data.pkl']
  if len(pickles) != 1:
    raise UserError(f'a PyTorch zip checkpoint holds one data.pkl, this one {len(pickles)}')
  prefix = pickles[0][:-len('data.pkl')]
  names = set(file.namelist())
  byteorder = file.read(prefix + 'byteorder').decode() if prefix + 'byteorder' in names else 'little'

  def storage(pid: tuple) -> _Storage:
    storage_type, key = pid[:2]
    return _Storage(str(key), storage_type.dtype)
  tensors = _tensors(_Unpickler(io.BytesIO(file.read(pickles[0])), storage).load())
  return {name: t.array(file.read(f'{prefix}data/{t.storage.key}'), byteorder)
          for name, t in tensors.items()}


def _read_legacy(f: BinaryIO) -> dict[str, np.ndarray]:
  storages: dict[str, _Storage] = {}

  def storage(pid: tuple) -> _Storage:
    storage_type, key, _location, _numel, view = pid
    if view is not None:
      raise UserError('the checkpoint uses storage views (PyTorch before 0.4): re-save it with a newer PyTorch')
    return storages.setdefault(str(key), _Storage(str(key), storage_type.dtype))

  def load() -> Any:
    return _Unpickler(f, storage).load()
  if load() != LEGACY_MAGIC:
    raise UserError('not a PyTorch checkpoint: neither a zip archive nor the legacy format')
  load()  # protocol version
  byteorder = 'little' if load().get('little_endian', True) else 'big'
  tensors = _tensors(load())
  data = {}
  for key in load():
    numel = int.from_bytes(f.read(8), byteorder)
    data[str(key)] = f.read(numel * storages[str(key)].dtype.itemsize)
  return {name: t.array(data[t.storage.key], byteorder) for name, t in tensors.items()}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `torch.save`d state dict at `path`, as numpy arrays keyed by their names."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as file:
        return _read_zip(file)
    with open(path, 'rb') as f:
      return _read_legacy(f)
  except UserError as e:
    raise UserError(f'{path}: {e}') from None
  except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, ValueError, TypeError) as e:
    raise UserError(f'{path} is not a readable PyTorch state dict ({type(e).__name__}: {e})') from None
